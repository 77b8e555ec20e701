"""The vLLM backend: one over-long row is a drop, not a dead run; no engine outlives synth (issue 12).

Starts real engines: run under `flock /tmp/synth-engine.lock` like every engine test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from synth.backends import Completion, SamplingParams
from tests.conftest import QUICKSTART, REPO
from tests.servers import default_sigint


def test_an_over_long_prompt_is_one_error_not_a_dead_run(vllm_backend: object) -> None:
    """Before: VLLMValidationError from the engine killed the whole batch (and the run)."""
    normal = [[{"role": "user", "content": f"Write one search query about topic {i}."}] for i in range(3)]
    long = [{"role": "user", "content": "word " * 3000}]  # ~3000 tokens > max_model_len 2048
    conversations = [normal[0], long, normal[1], normal[2]]
    params = SamplingParams(max_tokens=8, temperature=0.0)
    delivered: dict[int, Completion] = {}
    results = vllm_backend.generate(conversations, params, on_result=lambda i, c: delivered.setdefault(i, c))  # type: ignore[attr-defined]
    assert sorted(delivered) == [0, 1, 2, 3] and all(delivered[i] is results[i] for i in range(4))
    error = results[1].error
    assert results[1].texts == [] and error is not None
    assert error.startswith("prompt_too_long: ") and "tokens > limit 2040" in error, error
    for i in (0, 2, 3):
        assert results[i].error is None and len(results[i].texts) == 1
    # the measure is the engine's own count: the same number vLLM reports for the prompts it ran
    measured = vllm_backend.prompt_lengths([conversations[i] for i in (0, 2, 3)])  # type: ignore[attr-defined]
    assert measured == [results[i].prompt_tokens for i in (0, 2, 3)]


def test_a_prompt_that_leaves_no_room_for_the_reply_is_refused(vllm_backend: object) -> None:
    """The limit is max_model_len - max_tokens, the rule an OpenAI-compatible server applies too."""

    def words(k: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": "word " * k}]

    [base] = vllm_backend.prompt_lengths([words(100)])  # type: ignore[attr-defined]
    conversation = words(2040 - (base - 100))  # about 2040 prompt tokens: room for about 8
    [length] = vllm_backend.prompt_lengths([conversation])  # type: ignore[attr-defined]
    assert 2030 <= length < 2048, length
    room = 2048 - length
    [refused] = vllm_backend.generate([conversation], SamplingParams(max_tokens=room + 1, temperature=0.0))  # type: ignore[attr-defined]
    assert refused.error == (
        f"prompt_too_long: {length} tokens > limit {length - 1} (max_model_len 2048 - max_tokens {room + 1})"
    )
    [ran] = vllm_backend.generate([conversation], SamplingParams(max_tokens=room, temperature=0.0))  # type: ignore[attr-defined]
    assert ran.error is None and ran.prompt_tokens == length


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            continue
    return alive


def test_ctrl_c_while_the_engine_starts_leaves_no_engine_behind(tmp_path: Path) -> None:
    """Before: vLLM's start-up wait swallowed Ctrl-C; synth hung (up to 10 min) with the engine alive."""
    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    args = ["generate", str(QUICKSTART), "--limit", "2", "-o", str(tmp_path / "out"), "--set", "embedder.model=hashing"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr_file:  # a file, not a pipe: engine logs must never block synth
        cli = subprocess.Popen(
            [sys.executable, "-m", "synth.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            start_new_session=True,  # its own group, so a failed test can take every process down
            preexec_fn=default_sigint,
        )
    synth = psutil.Process(cli.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 240
    engine_started = None
    while cli.poll() is None and time.monotonic() < deadline:
        for child in _descendants(synth):
            seen.setdefault(child.pid, child)
            try:
                if engine_started is None and "spawn_main" in " ".join(child.cmdline()):
                    engine_started = time.monotonic()
            except psutil.Error:
                continue
        if engine_started is not None and time.monotonic() - engine_started > 2:
            break
        time.sleep(0.2)
    assert engine_started is not None, "the engine process never started"
    cli.send_signal(signal.SIGINT)  # to synth only, as the earlier test of the API backend does
    try:
        cli.wait(timeout=90)
    except subprocess.TimeoutExpired:
        left = _alive(list(seen.values()))
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
        raise AssertionError(f"synth still running 90 s after Ctrl-C; processes: {left}") from None
    time.sleep(1)
    stderr = log.read_text(errors="replace")
    assert cli.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert _alive(list(seen.values())) == []


def test_an_engine_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Before: a TypeError traceback for a bad engine option."""
    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    args = ["generate", str(QUICKSTART), "--limit", "2", "-o", str(tmp_path / "out"), "--set", "embedder.model=hashing"]
    args += ["--set", "llm.engine_kwargs.not_a_vllm_option=1"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr_file:
        cli = subprocess.Popen(
            [sys.executable, "-m", "synth.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            start_new_session=True,
        )
    synth = psutil.Process(cli.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 240
    while cli.poll() is None and time.monotonic() < deadline:
        seen.update({c.pid: c for c in _descendants(synth)})
        time.sleep(0.2)
    if cli.poll() is None:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
        raise AssertionError("synth did not exit within 240 s")
    time.sleep(1)
    stderr = log.read_text(errors="replace")
    assert cli.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "error: the vLLM engine for smollm2-135m-instruct did not start" in stderr
    assert "not_a_vllm_option" in stderr
    assert _alive(list(seen.values())) == []


CLOSE_SCRIPT = """
import json, psutil
from synth.backends.vllm import VLLMBackend
from synth.recipe import LLMSpec

if __name__ == "__main__":
    backend = VLLMBackend(LLMSpec())
    engine = [p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    backend.close()
    alive = [pid for pid in engine if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    print(json.dumps({"engine": engine, "alive_after_close": alive}))
"""


def test_close_stops_the_engine_processes_right_away(tmp_path: Path) -> None:
    """Before: close() looked for LLMEngine.shutdown, which vLLM 0.32 lacks; the engine lived until exit."""
    script = tmp_path / "close_engine.py"
    script.write_text(CLOSE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["engine"] and report["alive_after_close"] == []
