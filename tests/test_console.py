"""The console a person watches: synth's progress only, engine and library logs in `logs/engine.log`.

Fast tests cover the plain progress lines (non-terminal stdout), `--quiet`, the bars on a terminal
and the log routing itself on the test doubles; one test runs the real quickstart on the real
engine (run it under `flock /tmp/synth-engine.lock`) and checks that no engine line reaches the console.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth.logs import copy_run_log, route_engine_logs
from synth.progress import PlainProgress, SilentProgress, count_tokens
from tests.conftest import QUICKSTART, REPO

DOUBLES = ("--set", "llm.backend=dry-run", "--set", "embedder.model=hashing")
# What engine and library output looks like on a console (vLLM, torch, triton, transformers, tqdm).
ENGINE_LINE = re.compile(
    r"WARNING|INFO|Warning|warn|Triton|libtcmalloc|libiomp|NUMA|EngineCore|pid=\d+|safetensors|it/s\]|Traceback"
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_start_periodic_and_final_lines_with_rates_and_eta() -> None:
    clock, lines = Clock(), []
    progress = PlainProgress(lines.append, interval=10, clock=clock)
    with progress.task("queries: generating", 100) as advance:
        advance(20)
        count_tokens(advance, 400)
        clock.now += 5
        progress.tick()
        assert lines == ["queries: generating: started (100 to do)"], "nothing before the interval"
        clock.now += 5
        progress.tick()
        assert lines[-1] == "queries: generating: 20/100 (20%), 2.00/s, 40 tok/s, elapsed 10s, eta 40s"
        advance(80)
        clock.now += 30
    assert lines[-1] == "queries: generating: done 100/100, 2.50/s, 10 tok/s in 40s"
    assert len(lines) == 3


def test_a_stage_of_unknown_size_prints_its_count_and_rate_without_a_total() -> None:
    """A streamed step called without the row count (total 0) must not print `n/0`."""
    clock, lines = Clock(), []
    progress = PlainProgress(lines.append, interval=10, clock=clock)
    with progress.task("quality: round-trip scoring queries", 0) as advance:
        advance(30)
        clock.now += 10
        progress.tick()
        assert lines[-1] == "quality: round-trip scoring queries: 30, 3.00/s, elapsed 10s"
    assert lines[-1] == "quality: round-trip scoring queries: done 30, 3.00/s in 10s"


def test_a_nested_stage_pauses_the_outer_one_and_only_the_innermost_reports() -> None:
    clock, lines = Clock(), []
    progress = PlainProgress(lines.append, interval=10, clock=clock)
    with progress.task("queries: generating", 10) as advance:
        with progress.task("loading LLM default: m", 1) as loaded:
            clock.now += 60
            progress.tick()
            loaded(1)
        assert lines[-2:] == [
            "loading LLM default: m: 0/1 (0%), elapsed 1m00s",
            "loading LLM default: m: done 1/1 in 1m00s",
        ]
        progress.tick()
        assert lines[-1].startswith("loading LLM default: m: done"), "the resumed stage waits a full interval"
        advance(5)
        clock.now += 10
        progress.tick()
        assert lines[-1] == "queries: generating: 5/10 (50%), 0.50/s, elapsed 1m10s, eta 10s", (
            "loading time is not in the rate"
        )
    with pytest.raises(RuntimeError):
        with progress.task("negatives: embedding", 4) as advance:
            advance(1)
            raise RuntimeError("boom")
    assert lines[-1].startswith("negatives: embedding: stopped at 1/4 (25%)")


def test_the_periodic_lines_come_from_a_thread_while_nothing_advances() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=0.05)
    with progress.task("loading embedder default: e", 1) as advance:
        time.sleep(0.5)
        advance(1)
    periodic = [line for line in lines if "0/1 (0%), elapsed" in line]
    assert len(periodic) >= 2 and lines[-1].startswith("loading embedder default: e: done 1/1")


def test_token_counts_reach_only_displays_that_show_them() -> None:
    count_tokens(lambda n: None, 5)  # a plain callable (a test's, a library user's) is left alone
    with SilentProgress().task("x", 1) as advance:
        count_tokens(advance, 5)
        advance(1)


def test_engine_output_goes_to_the_log_and_the_console_keeps_synth_lines(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    child = "import sys, warnings; print('child stdout'); warnings.warn('child warning'); sys.stderr.write('child stderr\\n')"
    with route_engine_logs() as log:
        log.console_out.write("synth progress line\n")
        print("python print", file=sys.__stdout__, flush=True)  # sys.stdout itself is pytest's here
        os.write(2, b"C-level stderr\n")
        subprocess.run([sys.executable, "-c", child], check=True)  # inherits the redirected fds, like EngineCore
        assert copy_run_log(tmp_path / "out") == [tmp_path / "out" / "logs" / "engine.log"]
        log.keep = True
    console = capfd.readouterr()
    assert console.out == "synth progress line\n" and console.err == ""
    text = log.path.read_text()
    for expected in (
        "python print",
        "C-level stderr",
        "child stdout",
        "child warning",
        "child stderr",
    ):
        assert expected in text
    assert "child stderr" in (tmp_path / "out" / "logs" / "engine.log").read_text()
    log.path.unlink()
    assert copy_run_log(tmp_path / "later") == [], "no run log outside the block"
    os.write(1, b"back on the console\n")
    assert capfd.readouterr().out == "back on the console\n"


def test_verbose_echoes_each_log_line_and_an_unkept_log_is_removed(capfd) -> None:  # type: ignore[no-untyped-def]
    shown: list[str] = []
    with route_engine_logs(shown.append) as log:
        subprocess.run([sys.executable, "-c", "print('one'); import sys; sys.stderr.write('two\\n')"], check=True)
        print("three", file=sys.__stdout__, flush=True)
        path = log.path
        assert path.is_file()
    assert shown == ["one", "two", "three"]
    assert not path.exists(), "a log nobody asked to keep is removed"
    assert capfd.readouterr().out == ""


def synth(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "SYNTH_PROGRESS_INTERVAL": "0.05", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
    )


def test_a_piped_run_prints_plain_progress_lines_and_writes_the_engine_log(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    result = synth(
        "generate", str(QUICKSTART), "--limit", "4", "-o", str(out), *DOUBLES, "--no-cache"
    )  # fresh: the LLM must be loaded
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    for expected in (
        "queries: generating: started (8 to do)",
        "loading LLM default: smollm2-135m-instruct: started",
        "negatives: embedding queries + searching: started (8 to do)",
        "writing dataset: started",
    ):
        assert expected in lines
    assert any(
        re.fullmatch(r"queries: generating: done 8/8, [\d.]+/s, [\d.]+ tok/s in \d+s", line) for line in lines
    ), lines
    assert any(line.startswith("writing dataset: done 1/1 in") for line in lines)
    assert "synth summary" in result.stdout
    assert f"engine and library logs: {out / 'logs' / 'engine.log'}" in " ".join(result.stdout.split())
    assert (out / "logs" / "engine.log").is_file()
    assert "logs" in (out / ".synth-output").read_text(), "the marker lists logs/, so the next run may replace it"


def test_quiet_prints_only_the_final_summary(tmp_path: Path) -> None:
    result = synth("generate", str(QUICKSTART), "--limit", "4", "-o", str(tmp_path / "qs"), "--quiet", *DOUBLES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.lstrip().startswith("synth summary")
    assert "rows written to" in result.stdout
    assert not re.search(r": (started|done)\b|engine and library logs", result.stdout)
    assert synth("generate", str(QUICKSTART), "--quiet", "--verbose", *DOUBLES).returncode == 2


def test_a_terminal_gets_progress_bars_not_plain_lines(tmp_path: Path) -> None:
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "--limit", "4", "-o", str(tmp_path / "qs"), *DOUBLES],
        stdout=child, stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )  # fmt: skip
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-3000:] if process.stderr else ""
    screen = b"".join(chunks).decode(errors="replace")
    assert "━" in screen and "queries: generating" in screen and "synth summary" in screen
    assert ": started" not in screen


def test_the_real_quickstart_console_has_no_engine_lines_and_a_piped_run_shows_progress(tmp_path: Path) -> None:
    """The real engine and MiniLM (run under `flock /tmp/synth-engine.lock`): vLLM, torch and triton
    warnings land in logs/engine.log, the console keeps synth's lines, including a periodic one
    while the engine loads."""
    out = tmp_path / "qs"
    result = synth(
        "generate", str(QUICKSTART), "--limit", "3", "-o", str(out), env={"SYNTH_PROGRESS_INTERVAL": "5"}, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    noisy = [line for line in result.stdout.splitlines() if ENGINE_LINE.search(line)]
    assert noisy == [], noisy
    lines = result.stdout.splitlines()
    assert any(
        re.fullmatch(r"loading LLM default: smollm2-135m-instruct: 0/1 \(0%\), elapsed \d+s", line) for line in lines
    )
    assert any(re.fullmatch(r"loading LLM default: smollm2-135m-instruct: done 1/1 in \S+", line) for line in lines)
    assert any(re.fullmatch(r"queries: generating: done 6/6, [\d.]+/s, [\d.]+ tok/s in \S+", line) for line in lines), (
        lines
    )
    log = (out / "logs" / "engine.log").read_text()
    assert "WARNING" in log and "EngineCore" in log, "the engine's own lines were routed, not lost"
