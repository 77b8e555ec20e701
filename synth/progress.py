"""Progress reporting: one small protocol and three displays (silent, rich bars, plain lines).

Why a protocol: steps report progress without knowing who listens (the CLI's bars, a CI log, a
test, a library user), and the CLI, `synth mine` and the runner share one implementation.
Which display: bars on a terminal, a plain line every ~10 s per stage when stdout is not a
terminal (CI, nohup, a pipe: bars would print nothing until the end), nothing for `--quiet`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TextIO

Advance = Callable[[float], None]

INTERVAL_ENV = "SYNTH_PROGRESS_INTERVAL"  # seconds between plain progress lines (tests set it low)
DEFAULT_INTERVAL = 10.0


class Progress(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]: ...


class Ticker:
    """The `advance` a display hands out: `advance(n)` counts items; `count_tokens` adds generated tokens."""

    def __init__(self, on_items: Callable[[float], None], on_tokens: Callable[[int], None] | None = None) -> None:
        self._on_items = on_items
        self._on_tokens = on_tokens

    def __call__(self, n: float) -> None:
        self._on_items(n)

    def tokens(self, n: int) -> None:
        if self._on_tokens is not None:
            self._on_tokens(n)


def count_tokens(advance: Callable[[float], None] | None, n: int) -> None:
    """Tell the display behind `advance` that `n` tokens were generated (for tok/s); any other callable ignores it."""
    if isinstance(advance, Ticker) and n:
        advance.tokens(n)


class SilentProgress:
    """Progress that shows nothing (tests, libraries, `--quiet`)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield Ticker(lambda n: None)


class RichProgress:
    """Progress bars with ETA, one per long stage. Use as `with progress.bars: ...`.

    `redirect=False` leaves sys.stdout/sys.stderr alone instead of printing what libraries write
    above the bars: the CLI routes that output to the run's log file (synth/logs.py).
    """

    def __init__(self, console: Any = None, redirect: bool = True) -> None:
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
            redirect_stdout=redirect,
            redirect_stderr=redirect,
        )

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        task_id = self.bars.add_task(description, total=total)
        try:
            yield Ticker(lambda n: self.bars.advance(task_id, n))
        finally:
            self.bars.update(task_id, completed=total)
            self.bars.refresh()


def progress_interval() -> float:
    """Seconds between plain progress lines: $SYNTH_PROGRESS_INTERVAL, else 10."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        seconds = float(value) if value.strip() else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if seconds > 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


class _Stage:
    """One running task of a PlainProgress: counts, tokens and when it last printed."""

    def __init__(self, description: str, total: int, now: float) -> None:
        self.description, self.total = description, total
        self.done = 0.0
        self.tokens = 0
        self.started = self.last_line = now
        self.paused = 0.0  # seconds spent in stages nested in this one (a model loading): not in its rates

    def stats(self, now: float, final: bool = False) -> str:
        """`3/6 (50%), 0.15/s, 2.70 tok/s, elapsed 20s, eta 20s`; at the end `6/6, 0.15/s ... in 40s`."""
        elapsed = max(now - self.started, 1e-9)
        working = max(elapsed - self.paused, 1e-9)
        done = int(self.done) if float(self.done).is_integer() else round(self.done, 1)
        rate = self.done / working
        parts = [f"{done}/{self.total}" if self.total else f"{done}"]  # total 0: not known up front
        if self.total and not final:
            parts[0] += f" ({100 * min(self.done / self.total, 1):.0f}%)"
        if self.done and self.total != 1:
            parts.append(f"{_rate(rate)}/s")
        if self.tokens:
            parts.append(f"{_rate(self.tokens / working)} tok/s")
        if final:
            return f"{', '.join(parts)} in {_duration(elapsed)}"
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate > 0 and self.total > self.done:
            parts.append(f"eta {_duration((self.total - self.done) / rate)}")
        return ", ".join(parts)


class PlainProgress:
    """Plain text progress for logs: a line when a stage starts, one every `interval` s while it runs
    (done/total, items/s, tok/s where known, ETA), and one when it ends.

    A background thread writes the periodic lines, so a stage that reports nothing for a while (a
    model loading) still shows it is alive. `write` gets whole lines without the newline.
    """

    def __init__(
        self,
        write: Callable[[str], None] | TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = write if write is not None and not callable(write) else None
        self._write: Callable[[str], None] = write if callable(write) else self._to_stream
        self.interval = interval if interval is not None else progress_interval()
        self._clock = clock
        self._stages: list[_Stage] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        stage = _Stage(description, total, self._clock())

        def items(n: float) -> None:
            with self._lock:
                stage.done += n

        def tokens(n: int) -> None:
            with self._lock:
                stage.tokens += n

        with self._lock:
            self._stages.append(stage)
            self._write(f"{description}: started" + (f" ({total} to do)" if total > 1 else ""))
            self._start_ticker()
        finished = False
        try:
            yield Ticker(items, tokens)
            finished = True
        finally:
            with self._lock:
                self._stages.remove(stage)
                now = self._clock()
                for outer in self._stages:  # a nested stage ran inside the ones still open
                    outer.paused += now - stage.started - stage.paused
                if self._stages:
                    self._stages[-1].last_line = now  # the stage that resumes gets a full interval
                if finished:
                    stage.done = max(stage.done, total)
                    self._write(f"{description}: done {stage.stats(now, final=True)}")
                else:
                    self._write(f"{description}: stopped at {stage.stats(now)}")

    def _to_stream(self, line: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def tick(self) -> None:
        """Write a line for the innermost running stage (the one at work) if it has been quiet for `interval` s."""
        now = self._clock()
        with self._lock:
            if self._stages:
                stage = self._stages[-1]
                if now - stage.last_line >= self.interval:
                    stage.last_line = now
                    self._write(f"{stage.description}: {stage.stats(now)}")

    def _start_ticker(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="synth-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(min(self.interval, 1.0) / 2)
            with self._lock:
                if not self._stages:
                    self._thread = None
                    return
            self.tick()
