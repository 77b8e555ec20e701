"""Filter rules for the failure modes of small generators, none of which needs a model.

Seen in what SmolLM2-135M writes for biomedical passages (issue 18): replies that loop on one
phrase ("liver cells liver cells ..."), replies that copy the prompt's few-shot answer ("honey
shelf life ..."), and replies cut off at `max_tokens`. Each rule here catches one of them from the
row alone (the reply, its passage, the generate step's recorded finish reason), so all of them
run shard by shard, before the rules that need every row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from synth.backends import UNKNOWN_FINISH
from synth.steps.base import Row, StepContext
from synth.steps.filter_common import Outcome, record, text_of, words
from synth.steps.filter_spec import LeakageRule, QueryLikeRule, RepetitionRule, TruncatedRule


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
            record(
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


def echoed_prefix(reply: str, examples: Sequence[str], passage: str) -> list[str]:
    """The longest run of words the reply opens with that also opens an example answer, when none of
    them is in the passage (case-folded); else []."""
    in_passage = {w.casefold() for w in words(passage)}
    said = [w.casefold() for w in words(reply)]
    best: list[str] = []
    for example in examples:
        shared = 0
        for a, b in zip(said, (w.casefold() for w in words(example)), strict=False):
            if a != b or a in in_passage:
                break
            shared += 1
        best = max(best, words(reply)[:shared], key=len)
    return best


def fewshot_answers(messages: Sequence[dict[str, str]], answer_prefix: str | None) -> list[str]:
    """A rendered prompt's few-shot answers: its assistant turns; with `answer_prefix`, the rest of
    every line that starts with it (a plain-text template; the empty last cue is the model's turn)."""
    if answer_prefix is None:
        return [m["content"] for m in messages if m["role"] == "assistant"]
    lines = (line for m in messages for line in m["content"].splitlines())
    return [a for line in lines if line.startswith(answer_prefix) and (a := line[len(answer_prefix) :].strip())]


def apply_leakage(rule: LeakageRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for i, row in enumerate(rows):
        messages = ctx.prompts.render(
            rule.template, {**row, **rule.vars, "row": row}, f"{i} (id={row.get('source_id')})"
        )
        examples = fewshot_answers(messages, rule.answer_prefix)
        text, passage = text_of(row, rule.column), text_of(row, rule.source_column)
        leaked = leaked_words(text, examples, passage)
        share = round(len(leaked) / max(1, len(words(text))), 4)
        prefix = echoed_prefix(text, examples, passage) if rule.prefix_words is not None else []
        if len(leaked) >= rule.min_leaked_words and share >= rule.max_share:
            reason = "fewshot_leak"
        elif rule.prefix_words is not None and len(prefix) >= rule.prefix_words:
            reason = "fewshot_prefix"
        else:
            out.kept.append(row)
            continue
        out.dropped.append(
            record(
                step, rule, reason, row, column=rule.column, value=text, leaked_words=leaked,
                leaked_share=share, echoed_prefix=prefix, examples=examples, max_share=rule.max_share,
            )
        )  # fmt: skip
    return out


def apply_truncated(rule: TruncatedRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    """Drop rows whose reply ended for one of `rule.reasons` (default: `length`, the max_tokens cap).

    A row whose finish reason is unknown (a reply cached before synth recorded it, a server that
    sends none) is kept: not knowing is no evidence of a cut.
    """
    out = Outcome()
    for row in rows:
        finish = text_of(row, rule.finish_column) or UNKNOWN_FINISH
        if finish not in rule.reasons:
            out.kept.append(row)
            continue
        out.dropped.append(
            record(
                step, rule, "truncated", row, column=rule.column, value=text_of(row, rule.column),
                finish_reason=finish, finish_column=rule.finish_column,
            )
        )  # fmt: skip
    return out


def not_a_query(text: str, passage: str, rule: QueryLikeRule) -> tuple[str, str] | None:
    """(reason, evidence) when the text is no query: meta talk about the prompt, or a lead-in colon."""
    for pattern in rule.meta_phrases:
        hit = re.search(pattern, text, re.IGNORECASE)
        if hit and not (passage and re.search(pattern, passage, re.IGNORECASE)):
            return "meta_reply", hit.group(0)
    if rule.lead_in and text.rstrip().endswith(":"):
        return "lead_in", text.rstrip()[-20:]
    return None


def apply_querylike(rule: QueryLikeRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    for row in rows:
        text = text_of(row, rule.column)
        passage = text_of(row, rule.source_column) if rule.source_column else ""
        found = not_a_query(text, passage, rule)
        if found is None:
            out.kept.append(row)
            continue
        reason, evidence = found
        out.dropped.append(record(step, rule, reason, row, column=rule.column, value=text, matched=evidence))
    return out
