"""Generate step: render a template per row (and per `each` combination), ask the LLM, parse.

Prompts stream lazily to the named LLM through the one cached path (no per-chunk drain), n samples and
list replies explode into rows that keep their source id, and unparseable replies become drop
records that keep the raw text and the parser's reason. JSON replies that parse but do not fit the
output columns (not an object, missing keys, blank or wrongly typed values) are drops too, never
silently empty fields. `each` fans a row out over every combination of values; `sample` draws
one value per key for each prompt (E5-style knobs), deterministic per row.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.backends import PROMPT_TOO_LONG, Completion, Messages, SamplingParams, finish_reason
from synth.llm import Usage
from synth.parsers import ParseError, parse_reply
from synth.progress import Advance, Ticker, count_tokens
from synth.prompts import PromptLibrary, PromptTooLong
from synth.steps.base import Row, Step, StepContext, StepResult, drop, stable_hash


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


class SamplingOverrides(BaseModel):
    """Per-step sampling changes; unset fields fall back to the chosen LLM's `sampling`."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    seed: int | None = None


class GenerateSpec(BaseModel):
    """Render a template per row, ask the LLM, parse the reply into new column(s)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    template: str
    output: str | list[str]
    llm: str | None = None  # one of the recipe's `llms:` (default: the recipe's `llm:`)
    parser: Literal["text", "lines", "json", "regex"] = "text"
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    max_items: int | None = Field(default=None, ge=1)
    guided: bool = True
    vars: dict[str, Any] = Field(default_factory=dict)
    each: dict[str, list[Any]] = Field(default_factory=dict)
    # One value per key drawn for each prompt (row x `each` combination), seeded by the row's
    # content: the same row always gets the same values, whatever the order, chunking or --limit.
    sample: dict[str, list[Any]] = Field(default_factory=dict)
    sample_seed: int = 0
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)

    @model_validator(mode="after")
    def _parser_needs(self) -> GenerateSpec:
        if self.parser == "regex" and not self.pattern:
            raise ValueError("parser 'regex' needs `pattern`")
        if isinstance(self.output, list) and self.parser not in ("json", "regex"):
            raise ValueError("a list of output columns needs parser 'json' or 'regex' (dict values)")
        for field_name, table in (("each", self.each), ("sample", self.sample)):
            for key, values in table.items():
                if not values:
                    raise ValueError(f"{field_name}.{key}: needs at least one value")
        both = sorted(set(self.each) & set(self.sample))
        if both:
            raise ValueError(f"{', '.join(both)}: in both `each` and `sample`; pick one")
        return self

    @property
    def outputs(self) -> list[str]:
        return [self.output] if isinstance(self.output, str) else list(self.output)


def combinations(each: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """`each: {style: [a, b]}` -> [{style: a}, {style: b}]; no `each` -> one empty combination."""
    keys = list(each)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*each.values())]


def sampled(row: Row, spec: GenerateSpec, combo: dict[str, Any]) -> dict[str, Any]:
    """This prompt's `sample` values: drawn with an rng seeded by (seed, step, row content, combination).

    Why the row's content and not its position: a resumed, reordered or --limit'ed run asks the
    same prompts again (request-cache hits) and the data does not change with the batch layout.
    """
    if not spec.sample:
        return {}
    rng = random.Random(stable_hash([spec.sample_seed, spec.name, row, combo]))
    return {key: rng.choice(values) for key, values in spec.sample.items()}


def template_variables(row: Row, spec: GenerateSpec, combo: dict[str, Any]) -> dict[str, Any]:
    return {**row, **spec.vars, **combo, "row": row}


def _first_sample(spec: GenerateSpec) -> dict[str, Any]:
    return {key: values[0] for key, values in spec.sample.items()}


class GenerateStep(Step):
    key = "generate"
    spec_type = GenerateSpec

    spec: GenerateSpec

    def params(self, ctx: StepContext) -> SamplingParams:
        """The chosen LLM's sampling with this step's overrides (and its JSON schema for guided decoding)."""
        merged = {**ctx.llm(self.spec.llm).sampling.model_dump(), **self.spec.sampling.model_dump(exclude_none=True)}
        schema = self.spec.json_schema if self.spec.parser == "json" and self.spec.guided else None
        return SamplingParams(
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
                "spec": self.spec.model_dump(mode="json", exclude={"llm"}),
                "params": self.params(ctx).__dict__,
                "template": ctx.prompts.fingerprint(self.spec.template),
            }
        )

    def preview(self, row: Row) -> Row:
        new = {**row, **{c: f"<{c} generated by {self.name}>" for c in self.spec.outputs}}
        new[f"{self.name}_finish_reason"] = "stop"  # read by the filter rule `truncated`
        return {**new, **combinations(self.spec.each)[0], **_first_sample(self.spec)}

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        problems = []
        first = _first_sample(self.spec)
        # Every `each` combination, and every `sample` value once (the others at their first value).
        variants = [{**combo, **first} for combo in combinations(self.spec.each)]
        variants += [{**first, key: v} for key, values in self.spec.sample.items() for v in values[1:]]
        for combo in variants:
            try:
                prompts.render(self.spec.template, template_variables(row, self.spec, combo), "0")
            except ValueError as e:
                problems.append(f"step {self.name!r}: {e}")
        return list(dict.fromkeys(problems))

    def messages(self, row: Row, prompts: PromptLibrary, label: str) -> list[Messages]:
        return [
            prompts.render(self.spec.template, template_variables(row, self.spec, c), label)
            for c in (self._with_sample(row, combo) for combo in combinations(self.spec.each))
        ]

    def _with_sample(self, row: Row, combo: dict[str, Any]) -> dict[str, Any]:
        return {**combo, **sampled(row, self.spec, combo)}

    def _values_to_columns(self, value: Any) -> dict[str, Any]:
        """The reply's value(s) as columns; a value that would make a wrong or empty field is a ParseError.

        Several output columns need an object with every key, none null or blank; without a
        `json_schema` (which decides types itself) each must also be a string, number or boolean.
        """
        output = self.spec.output
        if isinstance(output, str):
            return {output: value}
        if not isinstance(value, dict):
            raise ParseError("not_an_object", f"expected an object with keys {output}, got {_kind(value)}")
        missing = [k for k in output if k not in value]
        if missing:
            raise ParseError("missing_keys", ", ".join(missing))
        empty = [k for k in output if value[k] is None or (isinstance(value[k], str) and not value[k].strip())]
        if empty:
            raise ParseError("empty_value", ", ".join(empty))
        if self.spec.json_schema is None:
            wrong = [f"{k} is {_kind(value[k])}" for k in output if isinstance(value[k], dict | list)]
            if wrong:
                raise ParseError("wrong_type", "; ".join(wrong))
        return {k: value[k] for k in output}

    def _jobs(
        self, rows: Sequence[Row], ctx: StepContext
    ) -> Iterator[tuple[Row, dict[str, Any], Messages | PromptTooLong]]:
        """(row, each-combination, rendered messages), lazily, in a fixed order. A prompt over the
        size cap comes as its error instead: the row's text is at fault, so it is that row's drop,
        as a prompt too long for the model is (a broken template still stops the step)."""
        combos = combinations(self.spec.each)
        for i, row in enumerate(rows):
            for each in combos:
                combo = self._with_sample(row, each)
                label = f"{i} (id={row.get('source_id', row.get('id'))})"
                variables = template_variables(row, self.spec, combo)
                try:
                    yield row, combo, ctx.prompts.render(self.spec.template, variables, label)
                except PromptTooLong as e:
                    yield row, combo, e

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        """Stream the rows' prompts through the LLM as one stream: memory stays flat in the input
        size, and the engine gets new prompts as old ones finish (no per-chunk drain)."""
        return [result for _, result in self.stream_batches([(0, rows)], ctx, across=True)][0]

    def stream_batches(
        self, batches: Iterable[tuple[int, Sequence[Row]]], ctx: StepContext, across: bool | None = None
    ) -> Iterator[tuple[int, StepResult]]:
        """(index, this step's result on those rows) for each (index, rows) batch, in order: one LLM
        stream across every batch, so the engine is still fed while a shard's last replies finish and
        while the executor writes it (a result is yielded as soon as its batch's last reply is in).

        Each batch's result is exactly what `self(rows)` gives, usage included. `across` (default:
        when the LLM's backend streams) False: one stream per batch, as a backend that answers a
        whole chunk per call would otherwise report no batch until that chunk is done.
        """
        llm = ctx.llm(self.spec.llm)
        if not (llm.streams if across is None else across):
            for index, rows in batches:
                yield from self.stream_batches([(index, rows)], ctx, across=True)
            return
        params = self.params(ctx)
        provenance = {
            f"{self.name}_template": ctx.prompts.fingerprint(self.spec.template),
            f"{self.name}_model": llm.model_id,
            f"{self.name}_sampling": stable_hash(params.__dict__),
            f"{self.name}_parse": "ok",
        }
        combos = len(combinations(self.spec.each))
        # Rendered, reply not yet collected: (its batch's result, [replies due, all read] of the batch,
        # row, combo, None; or the render error of a prompt over the size cap, never sent).
        waiting: deque[tuple[StepResult, list[int], Row, dict[str, Any], PromptTooLong | None]] = deque()
        opened: deque[tuple[int, StepResult, list[int]]] = deque()  # batches not yet yielded, in order
        starts: list[int] = []  # stream position of each opened batch's first prompt
        owners: list[Usage] = []  # each opened batch's usage (not its result: yielded rows must be freed)
        bar: list[Advance] = []  # the progress bar, opened with the first rows (a shard may be empty)
        stack = ExitStack()

        def prompts() -> Iterator[Messages]:
            position = 0
            for index, rows in batches:
                result, due = StepResult(rows=[]), [0, 0]
                opened.append((index, result, due))
                starts.append(position)
                owners.append(result.usage)
                if rows and not bar:
                    bar.append(stack.enter_context(ctx.progress.task(f"{self.name}: generating", len(rows) * combos)))
                for row, combo, messages in self._jobs(rows, ctx):
                    due[0] += 1
                    error = messages if isinstance(messages, PromptTooLong) else None
                    waiting.append((result, due, row, combo, error))
                    if error is None:
                        position += 1
                        yield messages
                due[1] = 1  # every prompt of the batch is read

        def unsent() -> None:
            """Record the drops of the prompts over the size cap at the head of the queue (in order)."""
            while waiting and waiting[0][4] is not None:
                result, due, row, _, error = waiting.popleft()
                result.dropped.append(drop(self.name, PROMPT_TOO_LONG, row, detail=str(error)))
                due[0] -= 1

        def finished() -> Iterator[tuple[int, StepResult]]:
            unsent()
            while opened and opened[0][2] == [0, 1]:
                index, result, _ = opened.popleft()
                yield index, result

        def usage_of(position: int) -> Usage:
            return owners[bisect.bisect_right(starts, position) - 1]

        ticker = Ticker(lambda n: bar[0](n) if bar else None, lambda n: count_tokens(bar[0], n) if bar else None)
        with stack:
            for completion in llm.stream(prompts(), params, usage_of, ticker):
                unsent()
                result, due, row, combo, _ = waiting.popleft()
                self._collect(row, combo, completion, provenance, result)
                due[0] -= 1
                yield from finished()
            yield from finished()

    def _collect(
        self, row: Row, combo: dict[str, Any], completion: Completion, provenance: dict[str, str], result: StepResult
    ) -> None:
        """Parse one reply into rows, or record why it yields none."""
        spec = self.spec
        if completion.error is not None:
            reason = PROMPT_TOO_LONG if completion.error.startswith(PROMPT_TOO_LONG) else "request_failed"
            result.dropped.append(drop(self.name, reason, row, detail=completion.error))
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
                new[f"{self.name}_finish_reason"] = finish_reason(completion, sample)  # "length": cut at max_tokens
                new.update(provenance)
                result.rows.append(new)
