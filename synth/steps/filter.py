"""Filter step: composable rules that keep only good rows, each drop recorded with its evidence.

The rules for small-generator failure modes live in filter_quality.py, round-trip consistency
(and keep-best-per-passage) in filter_roundtrip.py; this module holds the text-shape rules, the
rule registry and the step.

Rules run in recipe order and each sees only the rows the rules before it kept, so cheap rules
(length, regex, dedup) go first and the expensive ones (round-trip retrieval, LLM judge) score
fewer rows. Every removed row becomes a drop record: `step`, `rule` (the rule's name), `reason`
(a slug), `source_id`, and the values that triggered it (`column`, `value`, scores, thresholds).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from synth.dedup import find_duplicates, normalize
from synth.prompts import PromptLibrary
from synth.steps.base import Row, Step, StepContext, StepResult, stable_hash
from synth.steps.filter_common import Outcome, record, text_of, words
from synth.steps.filter_quality import (
    apply_leakage,
    apply_querylike,
    apply_repetition,
    apply_truncated,
    fewshot_answers,
)
from synth.steps.filter_roundtrip import apply_roundtrip, roundtrip_rows
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


def apply_dedup(rule: DedupRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = text_of(row, "source_id") if rule.scope == "source" else ""
        groups.setdefault(key, []).append(i)
    dropped: dict[int, Row] = {}
    for members in groups.values():
        texts = [text_of(rows[i], rule.column) for i in members]
        dups, _ = find_duplicates(
            texts, rule.threshold, exhaustive_below=rule.exhaustive_below, word_guard=rule.word_guard
        )
        for d in dups:
            i, j = members[d.index], members[d.of]
            dropped[i] = record(
                step, rule, "exact_duplicate" if d.exact else "near_duplicate", rows[i], column=rule.column,
                value=texts[d.index], duplicate_of=texts[d.of], duplicate_of_source_id=text_of(rows[j], "source_id"),
                score=d.score, threshold=rule.threshold,
            )  # fmt: skip
    for i, row in enumerate(rows):
        (out.dropped if i in dropped else out.kept).append(dropped.get(i, row))
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


# Rules that judge each row alone with no model call: after a round-trip rule, a streamed filter
# runs them on its output a chunk at a time (a judge's failures and usage need the whole-list path).
PER_ROW_RULES = (LengthRule, RegexRule, ScriptRule, CopyRule, RepetitionRule, LeakageRule, TruncatedRule, QueryLikeRule)
_CHUNK = 4096  # rows per call of a per-row rule after the round trip


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
        """The filter over rows read a batch at a time, when it starts with a round-trip rule and only
        per-row rules follow (the shape of a filter's tail after its row-local head); None otherwise.

        The result's `rows` is an iterator (input order) that writes the drop records to `drops` as
        it goes and fills the result's stats per rule; rows never sit in one list.
        """
        rules = list(self.spec.rules)
        if (
            not rules
            or not isinstance(rules[0], RoundTripRule)
            or not all(isinstance(r, PER_ROW_RULES) for r in rules[1:])
        ):
            return None
        first = next((b[0] for b in batches() if b), None)
        if first is not None and (
            missing := self.missing_columns(first, rules[0].columns(), f", rule {rules[0].label!r}")
        ):
            raise ValueError(missing[0])
        result = StepResult(rows=[])
        result.rows = self._streamed(rules, batches, ctx, drops, result.stats, total)  # type: ignore[assignment]
        return result

    def _streamed(
        self, rules: list[Any], batches: Callable[[], Iterator[list[Row]]], ctx: StepContext, drops: Path,
        stats: dict[str, Any], total: int,
    ) -> Iterator[Row]:  # fmt: skip
        counts = {r.label: {"rows_in": 0, "rows_out": 0} for r in rules}
        stats.update(counts)
        drops.parent.mkdir(parents=True, exist_ok=True)
        with drops.open("w", encoding="utf-8") as f:

            def dropped(record: Row) -> None:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

            def rest(chunk: list[Row]) -> list[Row]:
                for rule in rules[1:]:
                    counts[rule.label]["rows_in"] += len(chunk)
                    outcome = RULES[type(rule)](rule, chunk, ctx, self.name)
                    for d in outcome.dropped:
                        dropped(d)
                    chunk = outcome.kept
                    counts[rule.label]["rows_out"] += len(chunk)
                return chunk

            roundtrip = rules[0]

            def counted() -> Iterator[list[Row]]:  # a pass over the input, counting its rows
                read = 0
                for batch in batches():
                    read += len(batch)
                    yield batch
                counts[roundtrip.label]["rows_in"] = read

            chunk: list[Row] = []
            for row in roundtrip_rows(roundtrip, counted, ctx, self.name, dropped, total):
                counts[roundtrip.label]["rows_out"] += 1
                chunk.append(row)
                if len(chunk) >= _CHUNK:
                    yield from rest(chunk)
                    chunk = []
            yield from rest(chunk)
