"""The default executor: row-wise steps run in this process, one shard (batch of rows) at a time.

The streaming itself (source to shards, markers, global steps, export) is synth/executors/
pipeline.py, shared with the Ray executor; an executor only decides where a row-wise step's
batches run. Here: in order, in this process, through the run's own models and caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from synth.executors.shards import read_rows
from synth.steps.base import Row, Step, StepContext, StepResult

Prepare = Callable[[list[Row]], list[Row]]


class LocalExecutor:
    name = "local"

    def start(self, pool: object) -> None:
        pass

    def map_batches(
        self, step: Step, ctx: StepContext, todo: Sequence[tuple[int, Path]], prepare: Prepare
    ) -> Iterator[tuple[int, StepResult]]:
        """(shard index, the step's result on that shard's rows) for each shard to do, in order."""
        for index, path in todo:
            yield index, step(prepare(read_rows(path)), ctx)

    def close(self) -> None:
        pass
