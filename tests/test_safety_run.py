"""A run whose requests failed is a failure, never an empty success that replaces good output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth.llm import Usage
from synth.runner import RunFailed, _check_failures
from synth.steps.base import StepResult, drop
from synth.steps.generate import GenerateSpec, GenerateStep
from tests.conftest import QUICKSTART
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def synth(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_dead_server_exits_non_zero_and_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    free = ("--set", "llm.backend=dry-run", "--set", "embedder.model=hashing")
    good = synth("generate", str(QUICKSTART), "--limit", "3", "--output", str(out), *free)
    assert good.returncode == 0, good.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    args = ("--set", "llm.backend=openai", "--set", f"llm.base_url={dead}", "--set", "llm.max_retries=0")
    run = synth("generate", str(QUICKSTART), "--limit", "3", "--output", str(out), "--no-cache", *args)
    assert run.returncode != 0
    assert "requests failed" in run.stderr and "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) <= 3, run.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the good output is untouched


def _result(sent: int, failed: int) -> StepResult:
    row = {"id": "a", "source_id": "a"}
    dropped = [drop("q", "request_failed", row, detail="HTTP 500") for _ in range(failed)]
    return StepResult(rows=[], dropped=dropped, usage=Usage(requests=sent, failed=failed))


@pytest.mark.parametrize(("sent", "failed", "fails"), [(10, 10, True), (10, 6, True), (10, 5, False), (0, 0, False)])
def test_the_failed_share_decides(sent: int, failed: int, fails: bool) -> None:
    step = GenerateStep(GenerateSpec(name="q", template="query.j2", output="query"))
    if fails:
        with pytest.raises(RunFailed, match=rf"step 'q': {failed} of {sent} requests failed.*HTTP 500"):
            _check_failures(step, _result(sent, failed), 0.5)
    else:
        _check_failures(step, _result(sent, failed), 0.5)
    with pytest.raises(RunFailed):  # every request failed: a failure whatever the share allows
        _check_failures(step, _result(4, 4), 1.0)
