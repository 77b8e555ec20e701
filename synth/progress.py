"""Progress reporting: one small protocol, a silent implementation and a rich one for terminals.

Why a protocol: steps report progress without knowing who listens (the CLI's bars, a test, a
library user), and the CLI, `synth mine` and the runner share one implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

Advance = Callable[[float], None]


class Progress(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]: ...


class SilentProgress:
    """Progress that shows nothing (tests, libraries)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None


class RichProgress:
    """Progress bars with ETA, one per long stage. Use as `with progress.bars: ...`."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        task_id = self.bars.add_task(description, total=total)
        try:
            yield lambda n: self.bars.advance(task_id, n)
        finally:
            self.bars.update(task_id, completed=total)
            self.bars.refresh()
