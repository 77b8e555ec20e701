"""Filter step: composable rules that keep only good rows, each drop recorded with its evidence.

The rules for small-generator failure modes live in filter_quality.py, round-trip consistency
(and keep-best-per-passage) in filter_roundtrip.py, dedup in filter_dedup.py, the streamed run of a
filter's global tail in filter_stream.py; this module holds the text-shape rules, the rule
registry and the step.

Rules run in recipe order and each sees only the rows the rules before it kept, so cheap rules
(length, regex, dedup) go first and the expensive ones (round-trip retrieval, LLM judge) score
fewer rows. Every removed row becomes a drop record: `step`, `rule` (the rule's name), `reason`
(a slug), `source_id`, and the values that triggered it (`column`, `value`, scores, thresholds).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from synth.dedup import normalize
from synth.prompts import PromptLibrary
from synth.steps.base import Row, Step, StepContext, StepResult, stable_hash
from synth.steps.filter_common import Outcome, record, text_of, words
from synth.steps.filter_dedup import apply_dedup
from synth.steps.filter_quality import (
    apply_leakage,
    apply_querylike,
    apply_repetition,
    apply_truncated,
    fewshot_answers,
)
from synth.steps.filter_roundtrip import apply_roundtrip
from synth.steps.filter_spec import (
    CopyRule,
    DedupRule,
    FilterSpec,
    JudgeRule,
    LeakageRule,
    LengthRule,
    QueryLikeRule,
    RegexRule,
    RepetitionRule,
    RoundTripRule,
    ScriptRule,
    TruncatedRule,
)
from synth.steps.filter_stream import stream_rules


class _Tokenizers:
    """Hugging Face tokenizers by model name, loaded once (only when a length rule asks for one)."""

    cache: dict[str, Any] = {}

    @classmethod
    def count(cls, name: str, texts: list[str]) -> list[int]:
        if name == "words":
            return [len(words(t)) for t in texts]
        if name not in cls.cache:
            from transformers import AutoTokenizer

            from synth.models import resolve_model

            cls.cache[name] = AutoTokenizer.from_pretrained(resolve_model(name))
        ids = cls.cache[name](texts, add_special_tokens=False)["input_ids"] if texts else []
        return [len(x) for x in ids]


def apply_length(rule: LengthRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    texts = [text_of(r, rule.column) for r in rows]
    need_tokens = rule.min_tokens is not None or rule.max_tokens is not None
    tokens = _Tokenizers.count(rule.tokenizer, texts) if need_tokens else [0] * len(texts)
    checks = (
        ("too_short", "chars", rule.min_chars, lambda n, b: n < b),
        ("too_long", "chars", rule.max_chars, lambda n, b: n > b),
        ("too_few_tokens", "tokens", rule.min_tokens, lambda n, b: n < b),
        ("too_many_tokens", "tokens", rule.max_tokens, lambda n, b: n > b),
    )
    for row, text, n_tokens in zip(rows, texts, tokens, strict=True):
        measured = {"chars": len(text.strip()), "tokens": n_tokens}
        failed = next(
            (
                (reason, unit, bound)
                for reason, unit, bound, bad in checks
                if bound is not None and bad(measured[unit], bound)
            ),
            None,
        )
        if failed is None:
            out.kept.append(row)
            continue
        reason, unit, bound = failed
        out.dropped.append(
            record(
                step, rule, reason, row, column=rule.column, value=text, measured=measured[unit], bound=bound, unit=unit
            )
        )
    return out


def apply_regex(rule: RegexRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    include = [re.compile(p) for p in rule.include]
    exclude = [re.compile(p) for p in rule.exclude]
    for row in rows:
        text = text_of(row, rule.column)
        hit = next((p.pattern for p in exclude if p.search(text)), None)
        if hit is not None:
            out.dropped.append(record(step, rule, "regex_excluded", row, column=rule.column, value=text, pattern=hit))
        elif include and not any(p.search(text) for p in include):
            out.dropped.append(
                record(step, rule, "regex_not_included", row, column=rule.column, value=text, pattern=rule.include)
            )
        else:
            out.kept.append(row)
    return out


def script_share(text: str, scripts: Sequence[str]) -> float | None:
    """Share of letters whose Unicode name starts with one of `scripts` (None: no letters at all)."""
    allowed = tuple(s.upper() for s in scripts)
    letters = [unicodedata.name(ch, "?") for ch in text if ch.isalpha()]
    if not letters:
        return None
    return sum(name.startswith(allowed) for name in letters) / len(letters)


def apply_script(rule: ScriptRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for row in rows:
        text = text_of(row, rule.column)
        share = script_share(text, rule.scripts)
        if share is None or share >= rule.min_share:
            out.kept.append(row)
        else:
            out.dropped.append(
                record(
                    step, rule, "wrong_script", row, column=rule.column, value=text, share=round(share, 4),
                    min_share=rule.min_share, scripts=rule.scripts,
                )
            )  # fmt: skip
    return out


def copy_scores(generated: str, passage: str) -> tuple[float, float]:
    """(partial ratio 0-100 of the normalised texts, share of generated words found in the passage)."""
    g, p = normalize(generated), normalize(passage)
    if not g or not p:
        return 0.0, 0.0
    g_words = g.split()
    p_words = set(p.split())
    overlap = sum(w in p_words for w in g_words) / len(g_words)
    return round(fuzz.partial_ratio(g, p), 2), round(overlap, 4)


def apply_copy(rule: CopyRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for row in rows:
        text, passage = text_of(row, rule.column), text_of(row, rule.source_column)
        if len(words(text)) < rule.min_words:
            out.kept.append(row)
            continue
        ratio, overlap = copy_scores(text, passage)
        if ratio >= rule.threshold:
            reason = "copied_from_source"
        elif rule.max_token_overlap is not None and overlap >= rule.max_token_overlap:
            reason = "copied_words_from_source"
        else:
            out.kept.append(row)
            continue
        out.dropped.append(
            record(
                step, rule, reason, row, column=rule.column, value=text, partial_ratio=ratio, token_overlap=overlap,
                threshold=rule.threshold, max_token_overlap=rule.max_token_overlap,
            )
        )  # fmt: skip
    return out


def _apply_judge(rule: JudgeRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    from synth.steps.judge import apply_judge

    out = Outcome()
    out.kept, out.dropped = apply_judge(rule, rows, ctx, step, out.usage)
    return out


RULES: dict[type, Callable[[Any, Sequence[Row], StepContext, str], Outcome]] = {
    LengthRule: apply_length,
    RegexRule: apply_regex,
    ScriptRule: apply_script,
    DedupRule: apply_dedup,
    CopyRule: apply_copy,
    RepetitionRule: apply_repetition,
    LeakageRule: apply_leakage,
    TruncatedRule: apply_truncated,
    QueryLikeRule: apply_querylike,
    RoundTripRule: apply_roundtrip,
    JudgeRule: _apply_judge,
}


# Rules that judge each row alone with no model call: in a streamed filter they run a chunk at a time
# (a judge's failures and usage need the whole-list path).
PER_ROW_RULES = (LengthRule, RegexRule, ScriptRule, CopyRule, RepetitionRule, LeakageRule, TruncatedRule, QueryLikeRule)
STREAMED_RULES = (*PER_ROW_RULES, DedupRule, RoundTripRule)


class FilterStep(Step):
    key = "filter"
    spec_type = FilterSpec

    spec: FilterSpec

    def fingerprint(self, ctx: StepContext) -> str:
        templates = {
            r.template: ctx.prompts.fingerprint(r.template)
            for r in self.spec.rules
            if isinstance(r, (JudgeRule, LeakageRule))
        }
        return stable_hash({"spec": self.spec.model_dump(mode="json"), "templates": templates})

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        """Columns every rule reads exist; judge templates render on the row."""
        from synth.steps.judge import judge_variables

        problems = []
        for rule in self.spec.rules:
            problems.extend(self.missing_columns(row, rule.columns(), f", rule {rule.label!r}"))
            if isinstance(rule, (JudgeRule, LeakageRule)):
                variables = (
                    judge_variables(rule, row) if isinstance(rule, JudgeRule) else {**row, **rule.vars, "row": row}
                )
                try:
                    messages = prompts.render(rule.template, variables, "0")
                except ValueError as e:
                    problems.append(f"step {self.name!r}, rule {rule.label!r}: {e}")
                    continue
                if isinstance(rule, LeakageRule) and not fewshot_answers(messages, rule.answer_prefix):
                    problems.append(
                        f"step {self.name!r}, rule {rule.label!r}: template {rule.template!r} shows no few-shot "
                        "answer (no assistant turn); for a plain-text template set `answer_prefix` (e.g. 'Query:')"
                    )
        return problems

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        result = StepResult(rows=list(rows))
        for rule in self.spec.rules:
            if result.rows:
                missing = self.missing_columns(result.rows[0], rule.columns(), f", rule {rule.label!r}")
                if missing:
                    raise ValueError(missing[0])
            rows_in = len(result.rows)
            outcome = RULES[type(rule)](rule, result.rows, ctx, self.name)
            result.rows = outcome.kept
            result.dropped.extend(outcome.dropped)
            result.usage.add(outcome.usage)
            result.stats[rule.label] = {"rows_in": rows_in, "rows_out": len(outcome.kept)}
        return result

    def stream(
        self, batches: Callable[[], Iterator[list[Row]]], ctx: StepContext, drops: Path, total: int = 0
    ) -> StepResult | None:
        """The filter over rows read a pass at a time (synth/steps/filter_stream.py), when every rule
        can stream (all but the LLM judge); None otherwise.

        The result's `rows` is an iterator (input order) that writes the drop records to `drops` as
        it goes and fills the result's stats per rule; rows never sit in one list.
        """
        rules = list(self.spec.rules)
        if not rules or not all(isinstance(r, STREAMED_RULES) for r in rules):
            return None
        first = next((b[0] for b in batches() if b), None)
        if first is not None:
            self._check(rules[0], first)  # one clear error before any work
        result = StepResult(rows=[])
        result.rows = stream_rules(  # type: ignore[assignment]
            rules, batches, ctx, self.name, drops, result.stats, total,
            apply=lambda rule, rows: RULES[type(rule)](rule, rows, ctx, self.name), check=self._check,
        )  # fmt: skip
        return result

    def _check(self, rule: Any, row: Row) -> None:
        missing = self.missing_columns(row, rule.columns(), f", rule {rule.label!r}")
        if missing:
            raise ValueError(missing[0])
