"""Progress of a step run one batch at a time: one bar per stage for the whole step, not one per batch.

A row-wise step opens its bars (`queries: generating`, N) on every batch it is given; this keeps
the first one open for the whole step, its total scaled from that batch to all the step's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from synth.progress import Advance, Progress


class PerStep:
    def __init__(self, progress: Progress, scale: float) -> None:
        self.progress, self.scale = progress, scale
        self.stack = ExitStack()
        self.bars: dict[str, Advance] = {}

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if description not in self.bars:
            bar = self.progress.task(description, max(total, round(total * self.scale)))
            self.bars[description] = self.stack.enter_context(bar)
        yield self.bars[description]

    def close(self) -> None:
        self.stack.close()
