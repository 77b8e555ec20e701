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
    search = None  # mining searches in this process
    scan = None  # so does the round-trip rule

    def __init__(self, across_shards: bool = True) -> None:
        # A step that can (`stream_batches`: generate) gets every shard as one request stream, so the
        # engine is not drained at each shard boundary; False: one call per shard (a benchmark's "before").
        self.across_shards = across_shards

    def start(self, pool: object) -> None:
        pass

    def map_batches(
        self, step: Step, ctx: StepContext, todo: Sequence[tuple[int, Path]], prepare: Prepare
    ) -> Iterator[tuple[int, StepResult]]:
        """(shard index, the step's result on that shard's rows) for each shard to do, in order.

        Shards are read lazily: with a cross-shard stream the next shard is read (and its first
        requests queued) while the current one's last replies finish. A shard's rows are held
        until its last reply is in; the read-ahead is the request stream's own (one chunk of cache
        look-ups plus the in-flight window), so with shards of more prompts than that, two at most."""
        stream = getattr(step, "stream_batches", None)
        if self.across_shards and stream is not None:
            yield from stream(((index, prepare(read_rows(path))) for index, path in todo), ctx)
            return
        for index, path in todo:
            yield index, step(prepare(read_rows(path)), ctx)

    def close(self) -> None:
        pass
