"""Filter step: composable rules that keep only good rows, each drop recorded with its evidence.

Rules run in recipe order and each sees only the rows the rules before it kept, so cheap rules
(length, regex, dedup) go first and the expensive ones (round-trip retrieval, LLM judge) score
fewer rows. Every removed row becomes a drop record: `step`, `rule` (the rule's name), `reason`
(a slug), `source_id`, and the values that triggered it (`column`, `value`, scores, thresholds).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from synth.dedup import find_duplicates, normalize
from synth.llm import Usage
from synth.prompts import PromptLibrary
from synth.steps.base import Row, Step, StepContext, StepResult, drop, stable_hash
from synth.steps.filter_spec import (
    CopyRule,
    DedupRule,
    FilterSpec,
    JudgeRule,
    LeakageRule,
    LengthRule,
    RegexRule,
    RepetitionRule,
    RoundTripRule,
    ScriptRule,
)

_WORD = re.compile(r"\w+")


@dataclass
class Outcome:
    """What one rule did: kept rows, drop records, and LLM usage (judge only)."""

    kept: list[Row] = field(default_factory=list)
    dropped: list[Row] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


def text_of(row: Row, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _record(step: str, rule: Any, reason: str, row: Row, **values: Any) -> Row:
    return drop(step, reason, row, rule=rule.label, **values)


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
            _record(
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
            out.dropped.append(_record(step, rule, "regex_excluded", row, column=rule.column, value=text, pattern=hit))
        elif include and not any(p.search(text) for p in include):
            out.dropped.append(
                _record(step, rule, "regex_not_included", row, column=rule.column, value=text, pattern=rule.include)
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
                _record(
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
            dropped[i] = _record(
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
            _record(
                step, rule, reason, row, column=rule.column, value=text, partial_ratio=ratio, token_overlap=overlap,
                threshold=rule.threshold, max_token_overlap=rule.max_token_overlap,
            )
        )  # fmt: skip
    return out


def repeated_share(text: str, n: int) -> float:
    """Share of the text's word n-grams that repeat an earlier one (0.0 for texts shorter than n + 1 words)."""
    tokens = [w.casefold() for w in words(text)]
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return round((len(grams) - len(set(grams))) / len(grams), 4)


def apply_repetition(rule: RepetitionRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for row in rows:
        text = text_of(row, rule.column)
        share = repeated_share(text, rule.n)
        if share < rule.max_share:
            out.kept.append(row)
            continue
        out.dropped.append(
            _record(
                step, rule, "repetitive", row, column=rule.column, value=text, repeated_share=share, n=rule.n,
                max_share=rule.max_share,
            )
        )  # fmt: skip
    return out


def leaked_words(reply: str, examples: Sequence[str], passage: str) -> list[str]:
    """Words of the reply that appear in a few-shot example but not in the passage (case-folded)."""
    from_examples = {w.casefold() for e in examples for w in words(e)}
    in_passage = {w.casefold() for w in words(passage)}
    return [w for w in words(reply) if w.casefold() in from_examples and w.casefold() not in in_passage]


def apply_leakage(rule: LeakageRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for i, row in enumerate(rows):
        messages = ctx.prompts.render(
            rule.template, {**row, **rule.vars, "row": row}, f"{i} (id={row.get('source_id')})"
        )
        examples = [m["content"] for m in messages if m["role"] == "assistant"]
        text = text_of(row, rule.column)
        leaked = leaked_words(text, examples, text_of(row, rule.source_column))
        share = round(len(leaked) / max(1, len(words(text))), 4)
        if len(leaked) < rule.min_leaked_words or share < rule.max_share:
            out.kept.append(row)
            continue
        out.dropped.append(
            _record(
                step, rule, "fewshot_leak", row, column=rule.column, value=text, leaked_words=leaked,
                leaked_share=share, examples=examples, max_share=rule.max_share,
            )
        )  # fmt: skip
    return out


def apply_roundtrip(rule: RoundTripRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    if not rows:
        return out
    if rule.corpus == "source":
        corpus = [text_of(d, "text") for d in ctx.documents]
        by_id = {str(d["id"]): i for i, d in enumerate(ctx.documents)}
    else:
        corpus = list(dict.fromkeys(text_of(r, rule.positive_column) for r in rows))
        by_id = {}
    by_text: dict[str, int] = {}
    for i, t in enumerate(corpus):
        by_text.setdefault(t, i)
    targets = []
    for row in rows:
        target = by_id.get(text_of(row, rule.id_column))
        targets.append(target if target is not None else by_text.get(text_of(row, rule.positive_column), -1))
    queries = [text_of(r, rule.query_column) for r in rows]
    embedder = ctx.embedder(rule.embedder)
    with ctx.progress.task(f"{step}: round-trip embedding corpus", len(corpus)) as advance:
        doc_emb = embedder.embed(corpus, role="document", progress=advance)
    with ctx.progress.task(f"{step}: round-trip embedding queries", len(queries)) as advance:
        query_emb = embedder.embed(queries, role="query", progress=advance)
    for start in range(0, len(rows), 1024):
        scores = query_emb[start : start + 1024] @ doc_emb.T
        for k, sims in enumerate(scores):
            row, target = rows[start + k], targets[start + k]
            if target < 0:
                out.dropped.append(
                    _record(
                        step, rule, "positive_not_in_corpus", row, column=rule.query_column, value=queries[start + k]
                    )
                )
                continue
            own = float(sims[target])
            rank = int(np.sum(sims > own)) + 1
            if rank <= rule.top_k:
                out.kept.append({**row, f"{rule.label}_rank": rank})
                continue
            best = int(np.argmax(sims))
            out.dropped.append(
                _record(
                    step, rule, "roundtrip_miss", row, column=rule.query_column, value=queries[start + k], rank=rank,
                    top_k=rule.top_k, positive_score=round(own, 6), top_score=round(float(sims[best]), 6),
                    top_document=str(ctx.documents[best]["id"]) if rule.corpus == "source" else corpus[best][:200],
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
    RoundTripRule: apply_roundtrip,
    JudgeRule: _apply_judge,
}


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
                    prompts.render(rule.template, variables, "0")
                except ValueError as e:
                    problems.append(f"step {self.name!r}, rule {rule.label!r}: {e}")
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
