"""Generate step: render a template per row (and per `each` combination), ask the LLM, parse.

All prompts of the step go to the backend in one call (it batches), n samples and list replies
explode into rows that keep their source id, and unparseable replies become drop records that
keep the raw text and the parser's reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from synth.backends import Completion, Messages, SamplingParams
from synth.cache import request_key
from synth.faults import crash_point
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
    chunk_size = 1024  # prompts rendered, looked up and sent per round

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

    def _complete(
        self, conversations: list[Messages], ctx: StepContext, result: StepResult, advance: Callable[[float], None]
    ) -> list[Completion]:
        """Replies for a chunk of conversations: cached ones from the cache, the rest from the LLM.

        Each fresh reply is committed to the cache the moment the backend reports it, so a run
        killed mid-step pays for none of them again. Usage counts only requests really sent.
        """
        kind, model_id = ctx.llm_identity
        keys = [request_key(kind, model_id, c, self.params) for c in conversations]
        cached = ctx.cache.get_many(keys) if ctx.cache else {}
        missing = [i for i, k in enumerate(keys) if k not in cached]
        result.cache_hits += len(conversations) - len(missing)
        advance(len(conversations) - len(missing))

        def arrived(j: int, completion: Completion) -> None:
            if ctx.cache is not None:
                ctx.cache.put(keys[missing[j]], completion, model_id)
                crash_point("reply")
            advance(1)

        fresh: dict[int, Completion] = {}
        if missing:
            replies = ctx.llm().generate([conversations[i] for i in missing], self.params, on_result=arrived)
            fresh = dict(zip(missing, replies, strict=True))
        for completion in fresh.values():
            result.requests += 1
            result.retries += completion.retries
            result.prompt_tokens += completion.prompt_tokens
            result.completion_tokens += completion.completion_tokens
        return [fresh[i] if i in fresh else cached[keys[i]] for i in range(len(conversations))]

    def _jobs(self, rows: Sequence[Row], ctx: StepContext) -> Iterator[tuple[Row, dict[str, Any], Messages]]:
        """(row, each-combination, rendered messages), lazily, in a fixed order."""
        combos = combinations(self.spec.each)
        for i, row in enumerate(rows):
            for combo in combos:
                label = f"{i} (id={row.get('source_id', row.get('id'))})"
                variables = template_variables(row, self.spec, combo)
                yield row, combo, ctx.prompts.render(self.spec.template, variables, label)

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        """Stream the rows through the LLM `chunk_size` prompts at a time: memory stays flat in the input size."""
        result = StepResult(rows=[])
        total = len(rows) * len(combinations(self.spec.each))
        if total == 0:
            return result
        provenance = {
            f"{self.name}_template": ctx.prompts.fingerprint(self.spec.template),
            f"{self.name}_model": ctx.llm_identity[1],
            f"{self.name}_sampling": stable_hash(self.params.__dict__),
            f"{self.name}_parse": "ok",
        }
        jobs = self._jobs(rows, ctx)
        with ctx.progress.task(f"{self.name}: generating", total) as advance:
            while chunk := list(itertools.islice(jobs, self.chunk_size)):
                completions = self._complete([m for _, _, m in chunk], ctx, result, advance)
                for (row, combo, _), completion in zip(chunk, completions, strict=True):
                    self._collect(row, combo, completion, provenance, result)
        return result

    def _collect(
        self, row: Row, combo: dict[str, Any], completion: Completion, provenance: dict[str, str], result: StepResult
    ) -> None:
        """Parse one reply into rows, or record why it yields none."""
        spec = self.spec
        if completion.error is not None:
            result.dropped.append(drop(self.name, "request_failed", row, detail=completion.error))
            return
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
                new.update(provenance)
                result.rows.append(new)
