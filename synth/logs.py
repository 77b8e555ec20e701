"""Engine and library logs go to the run's log file, not the console; the output keeps a copy.

vLLM, torch, transformers and triton write warnings through Python logging, `warnings`, tqdm,
C++ code and vLLM's EngineCore subprocess (which inherits our stdout/stderr). Only pointing the
file descriptors 1 and 2 themselves at a file catches all of them, so that is what
`route_engine_logs` does for the length of a run. The console keeps writing to the terminal
through copies of the original descriptors (`RunLog.console_out`/`console_err`).

The output folder is written in a temporary folder and swapped in, so the log lives in the
system's temp folder while the run goes on; the export's extras hook copies it into the output as
`logs/engine.log` (`copy_run_log`) before the swap, which also puts `logs` in the marker's list.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

LOG_FOLDER = "logs"
LOG_NAME = "engine.log"


@dataclass
class RunLog:
    """The log file of a run in progress, and the console it took fds 1 and 2 from."""

    path: Path
    console_out: TextIO  # the original stdout (a terminal, a pipe, a file)
    console_err: TextIO  # the original stderr
    keep: bool = False  # keep the file after the block (set it when the run failed or the output has no copy)


_active: list[RunLog] = []  # the innermost routing is the one extras copy


def active_log() -> RunLog | None:
    return _active[-1] if _active else None


def copy_run_log(folder: Path) -> list[Path]:
    """Copy the running log into `folder/logs/engine.log` (call it from the export's extras hook).

    Nothing when no log is being routed (library use, tests): the output then has no `logs/`.
    """
    log = active_log()
    if log is None or not log.path.is_file():
        return []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    target = Path(folder) / LOG_FOLDER / LOG_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log.path, target)
    return [target]


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


def _tee(read_fd: int, log_fd: int, echo: Callable[[str], None] | None) -> None:
    """Copy what arrives on the pipe to the log file, and each whole line to `echo` (-v)."""
    pending = b""
    while True:
        try:
            data = os.read(read_fd, 65536)
        except OSError:
            break
        if not data:
            break
        os.write(log_fd, data)
        pending += data
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            if line.strip() and echo is not None:
                echo = _echoed(echo, line)
    if pending.strip() and echo is not None:
        _echoed(echo, pending)
    os.close(read_fd)


def _echoed(echo: Callable[[str], None], line: bytes) -> Callable[[str], None] | None:
    """Show one line; a console that is gone (closed at the end of the run) stops the echo, not the log."""
    try:
        echo(line.decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return echo


@contextmanager
def route_engine_logs(echo: Callable[[str], None] | None = None) -> Iterator[RunLog]:
    """Point fds 1 and 2 at a new log file for the block (child processes included).

    `echo` (for `-v`) also receives every line, in a helper thread. The file is deleted at the
    end unless the block set `log.keep` (a failed run: its path is the place to look).
    """
    fd, name = tempfile.mkstemp(prefix="synth-run-", suffix=".log")
    path = Path(name)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console_out = os.fdopen(os.dup(saved_out), "w", encoding="utf-8", errors="replace", buffering=1)
    console_err = os.fdopen(os.dup(saved_err), "w", encoding="utf-8", errors="replace", buffering=1)
    tee: threading.Thread | None = None
    if echo is None:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    else:
        read_fd, write_fd = os.pipe()
        tee = threading.Thread(target=_tee, args=(read_fd, fd, echo), name="synth-log-tee", daemon=True)
        tee.start()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    log = RunLog(path, console_out, console_err)
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        if tee is not None:
            tee.join(timeout=2.0)  # a child still holding the pipe keeps it open: do not wait for it
        if tee is None or not tee.is_alive():
            os.close(fd)  # else the tee thread still writes to it: left open rather than reused
        console_out.close()
        console_err.close()
        if not log.keep or _empty(path):
            path.unlink(missing_ok=True)
