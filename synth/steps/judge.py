"""LLM-judge rule: one yes/no question per row, scored from the first token's log-probabilities.

The score is the one yes/no scorer's (`synth.parsers.yes_probability`). A reply that cannot be
scored (no yes/no among the top candidates, no log-probabilities, a failed request) is a drop with
its own reason, never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synth.backends import SamplingParams
from synth.llm import Usage
from synth.parsers import yes_probability
from synth.steps.base import Row, StepContext, drop
from synth.steps.filter_spec import JudgeRule


def judge_variables(rule: JudgeRule, row: Row) -> dict[str, Any]:
    mapped = {var: row.get(column) for var, column in rule.inputs.items()}
    return {**row, **rule.vars, **mapped, "row": row}


def apply_judge(
    rule: JudgeRule, rows: Sequence[Row], ctx: StepContext, step: str, usage: Usage
) -> tuple[list[Row], list[Row]]:
    """(kept rows with a `<rule>_score` column, drops); requests and tokens are added to `usage`."""
    if not rows:
        return [], []
    conversations = [
        ctx.prompts.render(rule.template, judge_variables(rule, row), f"{i} (id={row.get('source_id')})")
        for i, row in enumerate(rows)
    ]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, n=1, logprobs=rule.top_logprobs)
    with ctx.progress.task(f"{step}: judging ({rule.label})", len(conversations)) as advance:
        completions = ctx.llm(rule.llm).complete(conversations, params, usage, advance)
    kept: list[Row] = []
    dropped: list[Row] = []
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
        score = yes_probability(completion, rule.yes, rule.no)
        if score is None:
            first = completion.logprobs[0][0] if completion.logprobs and completion.logprobs[0] else {}
            top = {k: round(v, 4) for k, v in first.items()}
            dropped.append(drop(step, "judge_unscored", row, **common, raw=raw, top_logprobs=top))
        elif score < rule.threshold:
            dropped.append(drop(step, "judge_rejected", row, **common, raw=raw, p_yes=round(score, 6)))
        else:
            kept.append({**row, f"{rule.label}_score": round(score, 6)})
    return kept, dropped
