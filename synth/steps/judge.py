"""LLM-judge rule: one yes/no question per row, scored from the first token's log-probabilities.

Why log-probabilities and not the reply text: a one-token greedy reply is a coin with no edge;
P(yes) / (P(yes) + P(no)) over the top candidates is a calibrated-enough score to threshold, and
it costs one generated token per row. A reply that cannot be scored (no yes/no among the top
candidates, no log-probabilities, a failed request) is a drop with its own reason, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from synth.backends import Completion, Messages, SamplingParams
from synth.cache import request_key
from synth.filter_spec import JudgeRule
from synth.steps import Row, StepContext, drop

_STRIP = " \t\n.,:;!?\"'*_()[]"


def p_yes(top: dict[str, float], yes: Sequence[str], no: Sequence[str]) -> float | None:
    """P(yes)/(P(yes)+P(no)) from one token's {token: logprob}; None when neither answer is present."""
    yes_set = {w.casefold() for w in yes}
    no_set = {w.casefold() for w in no}
    p_y = p_n = 0.0
    for token, logprob in top.items():
        word = token.strip(_STRIP).casefold()
        if word in yes_set:
            p_y += math.exp(logprob)
        elif word in no_set:
            p_n += math.exp(logprob)
    if p_y + p_n == 0.0:
        return None
    return p_y / (p_y + p_n)


def judge_variables(rule: JudgeRule, row: Row) -> dict[str, Any]:
    mapped = {var: row.get(column) for var, column in rule.inputs.items()}
    return {**row, **rule.vars, **mapped, "row": row}


def apply_judge(
    rule: JudgeRule, rows: Sequence[Row], ctx: StepContext, step: str
) -> tuple[list[Row], list[Row], tuple[int, int, int, int]]:
    """(kept rows with a `<rule>_score` column, drops, (requests, prompt tokens, completion tokens, cache hits))."""
    if not rows:
        return [], [], (0, 0, 0, 0)
    conversations = [
        ctx.prompts.render(rule.template, judge_variables(rule, row), f"{i} (id={row.get('source_id')})")
        for i, row in enumerate(rows)
    ]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, n=1, logprobs=rule.top_logprobs)
    completions, fresh = _complete(conversations, params, ctx, f"{step}: judging ({rule.label})")
    kept: list[Row] = []
    dropped: list[Row] = []
    prompt_tokens = sum(c.prompt_tokens for c in fresh)
    completion_tokens = sum(c.completion_tokens for c in fresh)
    for row, completion in zip(rows, completions, strict=True):
        common = {
            "rule": rule.label,
            "column": rule.column,
            "value": row.get(rule.column),
            "template": rule.template,
            "threshold": rule.threshold,
        }
        if completion.error is not None:
            dropped.append(drop(step, "judge_request_failed", row, **common, detail=completion.error))
            continue
        raw = completion.texts[0] if completion.texts else ""
        first = completion.logprobs[0][0] if completion.logprobs and completion.logprobs[0] else None
        score = p_yes(first, rule.yes, rule.no) if first else None
        if score is None:
            top = {k: round(v, 4) for k, v in (first or {}).items()}
            dropped.append(drop(step, "judge_unscored", row, **common, raw=raw, top_logprobs=top))
        elif score < rule.threshold:
            dropped.append(drop(step, "judge_rejected", row, **common, raw=raw, p_yes=round(score, 6)))
        else:
            kept.append({**row, f"{rule.label}_score": round(score, 6)})
    return kept, dropped, (len(fresh), prompt_tokens, completion_tokens, len(rows) - len(fresh))


def _complete(
    conversations: list[Messages], params: SamplingParams, ctx: StepContext, description: str
) -> tuple[list[Completion], list[Completion]]:
    """(a reply per conversation, the replies really requested): the request cache first, then the LLM."""
    kind, model_id = ctx.llm_identity
    keys = [request_key(kind, model_id, c, params) for c in conversations]
    cached = ctx.cache.get_many(keys) if ctx.cache is not None else {}
    missing = [i for i, k in enumerate(keys) if k not in cached]
    fresh: dict[int, Completion] = {}
    with ctx.progress.task(description, len(conversations)) as advance:
        advance(len(conversations) - len(missing))

        def arrived(j: int, completion: Completion) -> None:
            if ctx.cache is not None and completion.error is None:
                ctx.cache.put(keys[missing[j]], completion, model_id)
            advance(1)

        if missing:
            replies = ctx.llm().generate([conversations[i] for i in missing], params, on_result=arrived)
            fresh = dict(zip(missing, replies, strict=True))
    return [fresh[i] if i in fresh else cached[keys[i]] for i in range(len(conversations))], list(fresh.values())
