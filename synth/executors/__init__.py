"""Where a run's row-wise steps execute: this process (`local`, the default) or a Ray cluster (`ray`).

Both run the same pipeline (synth/executors/pipeline.py): rows in shards on disk, global steps on
the driver, markers for resume, output written from shards. An executor only maps a row-wise step
over the shards still to do and hands each shard's StepResult back to the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from synth.steps.base import Row, Step, StepContext, StepResult

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str
    # Exact top-k over stored corpus vectors on the executor's workers (StepContext.search); None: in-process.
    search: Callable[..., Any] | None
    # The round-trip rule's scan likewise (StepContext.scan); None: in-process.
    scan: Callable[..., Any] | None

    def start(self, pool: Any) -> None:
        """Called once the run's models (and request cache) exist, before the first step."""

    def map_batches(
        self,
        step: Step,
        ctx: StepContext,
        todo: Sequence[tuple[int, Path]],
        prepare: Callable[[list[Row]], list[Row]],
    ) -> Iterator[tuple[int, StepResult]]:
        """(shard index, the step's result on that shard) for every shard in `todo`, any order."""
        ...

    def close(self) -> None: ...


def make_executor(
    name: str, *, recipe: Any = None, recipe_dir: Path | None = None, address: str | None = None, progress: Any = None
) -> Executor:
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --executor ray")
        from synth.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from synth.executors.ray import RayExecutor

        return RayExecutor(recipe, recipe_dir, address=address, progress=progress)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
