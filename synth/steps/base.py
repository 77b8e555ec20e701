"""What every step kind shares: rows, the step base class, its context and result, drop records.

Rows are plain dicts. A step never loses a row silently: every row it removes is returned as a
drop record with the step name, a reason slug and the evidence (raw reply, scores, ...). A step
kind declares itself once: its YAML `key` (also its name in reports), its pydantic `spec_type`,
how it runs, and what `synth validate` / `synth render` need to check it without any model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from synth.backends import Messages
from synth.embedders import Embedder
from synth.llm import CachedLLM, Usage
from synth.progress import Advance, Progress, SilentProgress
from synth.prompts import PromptLibrary

Row = dict[str, Any]

__all__ = ["Advance", "Row", "Step", "StepContext", "StepResult", "Usage", "drop", "stable_hash"]


@dataclass
class StepContext:
    """What a step may use. Models are named in the recipe and built lazily, once per run, on first use."""

    prompts: PromptLibrary
    documents: list[Row]
    llm: Callable[[str | None], CachedLLM]  # ctx.llm(name): None is the recipe's default `llm:`
    embedder: Callable[[str | None], Embedder]  # ctx.embedder(name): cached, None is the default `embedder:`
    progress: Progress = field(default_factory=SilentProgress)
    # Exact top-k over stored corpus vectors where the executor runs it (Ray: a map_batches stage);
    # None: in this process. (queries, VectorFile, k, corpus chunk) -> (indices, scores).
    search: Callable[..., Any] | None = None
    # The round-trip rule's scan likewise: (queries, own passages, VectorFile) -> Scan; None: here.
    scan: Callable[..., Any] | None = None


@dataclass
class StepResult:
    rows: list[Row]
    dropped: list[Row] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stats: dict[str, Any] = field(default_factory=dict)


class Step:
    """Base of every step kind: subclasses set `key` and `spec_type` and implement `__call__`."""

    key: ClassVar[str]  # the YAML key; also the step's kind in summary.json and the report
    spec_type: ClassVar[type[BaseModel]]
    # True: the step maps each row on its own, so a batch at a time gives the same rows, order and
    # drop records as all rows at once; executors then stream it (synth/executors/plan.py).
    row_wise: ClassVar[bool] = False

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name: str = spec.name

    def fingerprint(self, ctx: StepContext) -> str:
        """Changes whenever the step's output could change (spec, templates)."""
        return stable_hash({"spec": self.spec.model_dump(mode="json")})

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        raise NotImplementedError

    def stream(
        self, batches: Callable[[], Iterator[list[Row]]], ctx: StepContext, drops: Path, total: int = 0
    ) -> StepResult | None:
        """The step over its input read in passes (`batches()` starts one; `total` rows in all), in
        bounded memory: a result whose `rows` is an iterator that writes the drop records to `drops`
        as it goes. None: this step (or this configuration of it) needs every row at once (`__call__`).
        """
        return None

    def split(self) -> tuple[Step | None, Step | None]:
        """(row-wise head, global tail) of this step: the head runs per batch, the tail on all rows it kept.

        A step whose first part is row-wise (a filter's row-local rules) returns two steps of its
        own kind; the default is all (`row_wise`) or nothing.
        """
        return (self, None) if self.row_wise else (None, self)

    def preview(self, row: Row) -> Row:
        """The row after this step, with placeholders for new columns (validate/render load no model)."""
        return row

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        """What is wrong with this step for a previewed input row (missing columns, broken templates)."""
        return []

    def messages(self, row: Row, prompts: PromptLibrary, label: str) -> list[Messages]:
        """The chat messages this step sends for one row (for `synth render`)."""
        raise ValueError(f"step {self.name!r} is a {self.key} step; it sends no prompt")

    def write_extras(self, folder: Path) -> list[Path]:
        """Extra files this step adds to the (temporary) output folder."""
        return []

    def missing_columns(self, row: Row, columns: Sequence[str], what: str = "") -> list[str]:
        """One problem line per column the row lacks."""
        where = f"step {self.name!r}{what}"
        return [f"{where}: no column {c!r} (columns: {', '.join(row)})" for c in columns if c not in row]


def stable_hash(value: Any) -> str:
    """Short canonical hash of JSON-able data (sorted keys), for fingerprints and provenance."""
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drop(step: str, reason: str, row: Row, **evidence: Any) -> Row:
    return {"step": step, "reason": reason, "source_id": str(row.get("source_id", row.get("id", ""))), **evidence}
