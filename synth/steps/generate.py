"""Generate step: render a template per row (and per `each` combination), ask the LLM, parse.

All prompts of the step go to the backend in one call (it batches), n samples and list replies
explode into rows that keep their source id, and unparseable replies become drop records that
keep the raw text and the parser's reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from synth.backends import SamplingParams
from synth.parsers import ParseError, parse_reply
from synth.recipe import GenerateSpec, SamplingSpec
from synth.steps import Row, StepContext, StepResult, drop, stable_hash


def combinations(each: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """`each: {style: [a, b]}` -> [{style: a}, {style: b}]; no `each` -> one empty combination."""
    keys = list(each)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*each.values())]


def template_variables(row: Row, spec: GenerateSpec, combo: dict[str, Any]) -> dict[str, Any]:
    return {**row, **spec.vars, **combo, "row": row}


class GenerateStep:
    def __init__(self, spec: GenerateSpec, sampling: SamplingSpec) -> None:
        self.spec = spec
        self.name = spec.name
        overrides = spec.sampling.model_dump(exclude_none=True)
        merged = {**sampling.model_dump(), **overrides}
        schema = spec.json_schema if spec.parser == "json" and spec.guided else None
        self.params = SamplingParams(
            temperature=merged["temperature"],
            top_p=merged["top_p"],
            max_tokens=merged["max_tokens"],
            n=merged["n"],
            stop=tuple(merged["stop"]),
            seed=merged["seed"],
            json_schema=schema,
        )

    def fingerprint(self, ctx: StepContext) -> str:
        return stable_hash(
            {
                "spec": self.spec.model_dump(mode="json"),
                "params": self.params.__dict__,
                "template": ctx.prompts.fingerprint(self.spec.template),
            }
        )

    def _values_to_columns(self, value: Any) -> dict[str, Any]:
        output = self.spec.output
        if isinstance(output, str):
            return {output: value}
        if not isinstance(value, dict):
            raise ParseError("not_an_object", f"expected an object with keys {output}")
        missing = [k for k in output if k not in value]
        if missing:
            raise ParseError("missing_keys", ", ".join(missing))
        return {k: value[k] for k in output}

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        spec = self.spec
        jobs: list[tuple[Row, dict[str, Any]]] = []
        conversations = []
        for i, row in enumerate(rows):
            for combo in combinations(spec.each):
                label = f"{i} (id={row.get('source_id', row.get('id'))})"
                conversations.append(ctx.prompts.render(spec.template, template_variables(row, spec, combo), label))
                jobs.append((row, combo))
        result = StepResult(rows=[])
        if not conversations:
            return result
        backend = ctx.llm()
        with ctx.progress.task(f"{self.name}: generating", len(conversations)) as advance:
            completions = backend.generate(conversations, self.params, on_result=lambda i, c: advance(1))
        template_hash = ctx.prompts.fingerprint(spec.template)
        for (row, combo), completion in zip(jobs, completions, strict=True):
            result.requests += 1
            result.prompt_tokens += completion.prompt_tokens
            result.completion_tokens += completion.completion_tokens
            result.retries += completion.retries
            if completion.error is not None:
                result.dropped.append(drop(self.name, "request_failed", row, detail=completion.error))
                continue
            for sample, raw in enumerate(completion.texts):
                try:
                    values = parse_reply(
                        raw, spec.parser, schema=spec.json_schema, pattern=spec.pattern, max_items=spec.max_items
                    )
                    produced = [self._values_to_columns(v) for v in values]
                except ParseError as e:
                    result.dropped.append(drop(self.name, f"parse_{e.reason}", row, raw=raw, detail=e.detail))
                    continue
                for columns in produced:
                    new = {**row, **combo, **columns}
                    new.setdefault("source_id", row.get("id"))
                    new[f"{self.name}_sample"] = sample
                    new[f"{self.name}_template"] = template_hash
                    result.rows.append(new)
        return result
