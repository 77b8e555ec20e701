"""The `map` step: new columns computed from each row by Jinja expressions, no model.

Why a step: recipes need small per-row rewrites between the LLM steps and the export: an anchor
prefixed with its task instruction (`'Instruct: %s\\nQuery: %s' | format(task, query)`), a gold
score scaled to [0, 1] (`score | float / 5`), a column renamed. Expressions run in the same
immutable sandbox as the prompt templates (they read a row, never change data or call unsafe
code) and keep their native type (a float stays a float). Columns are computed in order, so a
later expression can use an earlier one. A row whose expression fails (an undefined column, a
type error) is a drop record `map_error` with the column, the expression and the error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import TemplateError, Undefined
from pydantic import Field

from synth.prompts import PromptLibrary
from synth.specs import Strict
from synth.steps.base import Row, Step, StepContext, StepResult, drop

Expression = Callable[..., Any]


class MapSpec(Strict):
    """`columns: {new column: Jinja expression}`; variables are the row's columns, `vars` and `row`."""

    name: str = "map"
    columns: dict[str, str] = Field(min_length=1)
    vars: dict[str, Any] = Field(default_factory=dict)


class MapError(ValueError):
    def __init__(self, column: str, expression: str, detail: str) -> None:
        self.column, self.expression, self.detail = column, expression, detail
        super().__init__(f"column {column!r} = {expression!r}: {detail}")


class MapStep(Step):
    key = "map"
    spec_type = MapSpec
    row_wise = True
    spec: MapSpec

    def _compile(self, prompts: PromptLibrary) -> dict[str, Expression]:
        compiled = {}
        for column, expression in self.spec.columns.items():
            try:
                compiled[column] = prompts.env.compile_expression(expression, undefined_to_none=False)
            except TemplateError as e:
                raise MapError(column, expression, f"not a valid expression ({e})") from None
        return compiled

    def _apply(self, row: Row, compiled: dict[str, Expression]) -> Row:
        new = dict(row)
        for column, expression in compiled.items():
            try:
                value = expression(**{**new, **self.spec.vars, "row": new})
            except Exception as e:  # noqa: BLE001 - any error of a user's expression on this row is recorded
                raise MapError(column, self.spec.columns[column], f"{type(e).__name__}: {e}") from None
            if isinstance(value, Undefined):
                raise MapError(column, self.spec.columns[column], "uses an undefined variable")
            new[column] = value
        return new

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        result = StepResult(rows=[])
        compiled = self._compile(ctx.prompts)
        for row in rows:
            try:
                result.rows.append(self._apply(row, compiled))
            except MapError as e:
                result.dropped.append(
                    drop(self.name, "map_error", row, column=e.column, expression=e.expression, detail=e.detail)
                )
        return result

    def preview(self, row: Row) -> Row:
        return {**row, **{c: f"<{c} computed by {self.name}>" for c in self.spec.columns}}

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        """Syntax errors and undefined variables (other errors depend on real values, not placeholders)."""
        try:
            self._apply(row, self._compile(prompts))
        except MapError as e:
            if "not a valid expression" in e.detail or "undefined" in e.detail.casefold():
                return [f"step {self.name!r}: {e}"]
        return []
