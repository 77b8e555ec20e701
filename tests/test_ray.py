"""`--executor ray` on a real local Ray cluster (2 CPUs) started by the tests: same output, resume, faults.

The cluster is `ray start --head --block` in its own process group, stopped by that group only.
Each run is the real `synth generate` in a subprocess that connects with `--address`. The
killed-actor test needs an LLM stage that lasts: a small OpenAI-compatible HTTP server (a real
implementation of the protocol, deterministic replies, a delay per request) serves the openai
backend, and the test SIGKILLs the process of a `StepActor` while it is answering.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, REPO
from tests.servers import free_port
from tests.test_executors import output
from tests.test_resume import DOUBLES, replies_by_run

RAY = Path(sys.executable).parent / "ray"
# Ray >= 2.59 authenticates local clusters with a token: the test's cluster and its drivers share one.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = dict(os.environ, **AUTH)
    command = [
        str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
        "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={temp}", "--object-store-memory=200000000", "--disable-usage-stats",
    ]  # fmt: skip
    head = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
    time.sleep(3)  # the raylet registers after the GCS listens
    try:
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: stopping it stops the cluster it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def generate(
    out: Path, cache: Path, *extra: str, crash_at: str | None = None, limit: str = "10"
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache), **AUTH)
    env.pop("SYNTH_CRASH_AT", None)
    if crash_at:
        env["SYNTH_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "--limit", limit, "-o", str(out)]
    return subprocess.run(
        [*command, *extra], env=env, capture_output=True, text=True, timeout=900, cwd=REPO, start_new_session=True
    )


def test_quickstart_on_ray_equals_the_local_run(tmp_path: Path, ray_cluster: str) -> None:
    local = generate(tmp_path / "local", tmp_path / "local-cache", *DOUBLES, limit="49")
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = generate(
        tmp_path / "ray", tmp_path / "ray-cache", *DOUBLES, "--executor", "ray", "--address", ray_cluster, limit="49"
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert output(tmp_path / "ray") == output(tmp_path / "local")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    queries = next(s for s in summary["steps"] if s["name"] == "queries")
    assert (queries["requests"], queries["cache_hits"]) == (98, 0)
    assert list(replies_by_run(tmp_path / "ray-cache").values()) == [98], "the driver committed every reply"
    negatives = next(s for s in summary["steps"] if s["name"] == "negatives")
    assert negatives["stats"]["executor_search_batches"] == 1, "mining's search ran as a Ray Data stage"


def test_a_bad_cluster_address_is_one_line_and_fails(tmp_path: Path) -> None:
    closed = free_port()
    done = generate(
        tmp_path / "out", tmp_path / "cache", *DOUBLES, "--executor", "ray", "--address", f"127.0.0.1:{closed}"
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach the Ray cluster at 127.0.0.1:{closed}: Connection refused"], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_driver_killed_mid_generation_resumes_without_paying_twice(tmp_path: Path, ray_cluster: str) -> None:
    on_ray = ("--executor", "ray", "--address", ray_cluster)
    reference = generate(tmp_path / "ref", tmp_path / "ref-cache", *DOUBLES)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out, cache = tmp_path / "out", tmp_path / "cache"
    killed = generate(out, cache, *DOUBLES, *on_ray, crash_at="reply:7")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert list(replies_by_run(cache).values()) == [7]
    resumed = generate(out, cache, *DOUBLES, *on_ray)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(replies_by_run(cache).values()) == [7, 13], "the 7 committed replies were not bought again"
    assert output(out) == output(tmp_path / "ref")


class SlowChat(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: a few words of the last message, chosen by its hash, after a delay."""

    delay = 0.05
    served = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        text = body["messages"][-1]["content"]
        words = re.findall(r"[A-Za-z]{4,}", text) or ["reply"]
        seed = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        choices = []
        for i in range(body.get("n") or 1):
            picked = [words[(seed >> (8 * j + i)) % len(words)] for j in range(4)]
            choices.append(
                {"index": i, "message": {"role": "assistant", "content": " ".join(picked)}, "finish_reason": "stop"}
            )
        reply = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices,
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 4, "total_tokens": len(text.split()) + 4},
        }  # fmt: skip
        data = json.dumps(reply).encode()
        with SlowChat.lock:
            SlowChat.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def actor_pids(name: bytes = b"StepActor") -> list[int]:
    """Processes of our Ray actors of one class (their title names the class)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if name in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_worker_actor_killed_mid_stage_the_run_completes(tmp_path: Path, ray_cluster: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = [
        "--set", "llm.backend=openai", "--set", f"llm.base_url=http://127.0.0.1:{server.server_port}/v1",
        "--set", "llm.model=slow", "--set", "llm.max_concurrency=1", "--set", "embedder.model=hashing",
    ]  # fmt: skip
    try:
        local = generate(tmp_path / "local", tmp_path / "local-cache", *api, limit="40")
        assert local.returncode == 0, local.stderr[-3000:]
        SlowChat.served = 0
        env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), **AUTH)
        command = [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "--limit", "40"]
        command += ["-o", str(tmp_path / "ray"), *api, "--executor", "ray", "--address", ray_cluster]
        run = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while SlowChat.served < 10 and time.time() < deadline and run.poll() is None:
            time.sleep(0.1)
        victims = actor_pids()
        assert victims and run.poll() is None, "the LLM stage was running"
        os.kill(victims[0], signal.SIGKILL)
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        assert SlowChat.served > 80, "the killed actor's shard was asked again"
        assert output(tmp_path / "ray") == output(tmp_path / "local"), "nothing lost, nothing changed"
    finally:
        server.shutdown()


def test_embedding_runs_in_a_ray_actor_pool_that_survives_a_killed_actor(tmp_path: Path, ray_cluster: str) -> None:
    """The round-trip filter and mining embed through `EmbedActor`s (the real MiniLM model): one
    actor is SIGKILLed while the pool works, Ray restarts it and retries its block, and the output
    equals a local run's (each actor encodes the local run's own batches, so the vectors are equal)."""
    dry = ["--set", "llm.backend=dry-run"]
    local = generate(tmp_path / "local", tmp_path / "local-cache", *dry, limit="30")
    assert local.returncode == 0, local.stderr[-3000:]
    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), **AUTH)
    command = [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "--limit", "30", *dry]
    command += ["-o", str(tmp_path / "ray"), "--executor", "ray", "--address", ray_cluster]
    run = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not actor_pids(b"EmbedActor") and time.time() < deadline and run.poll() is None:
        time.sleep(0.1)
    victims = actor_pids(b"EmbedActor")
    assert victims and run.poll() is None, "the embedding actor pool was started"
    time.sleep(1.0)
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    assert output(tmp_path / "ray") == output(tmp_path / "local"), "nothing lost, nothing changed"


def test_exact_search_as_a_ray_data_stage_equals_the_local_search(tmp_path: Path, ray_cluster: str) -> None:
    """`ray_top_k` (one map_batches task per 1,024 queries, each reading the stored vectors) gives
    exactly `top_k`'s ids and scores: a query count that is no multiple of the chunk, tied scores
    (ties go to the lowest corpus index), a corpus view shorter than its file, k past the corpus.
    A driver process of its own (as `synth generate` is), connected to the test's cluster."""
    script = tmp_path / "search.py"
    script.write_text(
        f"""
import numpy as np, ray
from pathlib import Path
from synth.executors.ray_search import ray_top_k
from synth.mining.search import VectorFile, top_k

folder = Path({str(tmp_path / "vectors")!r})
folder.mkdir()
rng = np.random.default_rng(0)
corpus = rng.standard_normal((3000, 16)).astype(np.float32)
corpus[2000:2100] = corpus[5]  # 100 copies of one document: tied scores across corpus chunks
queries = rng.standard_normal((2500, 16)).astype(np.float32)
queries[7] = corpus[5]
np.save(folder / "corpus.npy", corpus)
file = VectorFile(folder / "corpus.npy").head(2900)
ray.init(address={ray_cluster!r}, logging_level="ERROR", log_to_driver=False)
for k in (40, 3000):
    got_idx, got_scores = ray_top_k(ray, queries, file, k, 1024)
    want_idx, want_scores = top_k(queries, file, k, corpus_chunk=1024)
    assert np.array_equal(got_idx, want_idx) and np.array_equal(got_scores, want_scores), k
assert list(got_idx[7][:3]) == [5, 2000, 2001], got_idx[7][:3]
assert sorted(p.name for p in folder.iterdir()) == ["corpus.npy"], "the query file is removed"
print("equal")
"""
    )
    env = dict(os.environ, **AUTH)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("equal"), done.stderr[-3000:]


def test_round_trip_scan_as_a_ray_data_stage_equals_the_local_scan(tmp_path: Path, ray_cluster: str) -> None:
    """`ray_scan` (one map_batches task per 1,024 queries) gives exactly `scan`'s own scores, ranks,
    best other scores and documents: a query count that is no multiple of the chunk, copies of the
    own passage across corpus blocks (ties), own passages in every block, the temp files removed."""
    script = tmp_path / "scan.py"
    script.write_text(
        f"""
import numpy as np, ray
from pathlib import Path
from synth.executors.ray_search import ray_scan
from synth.mining.search import VectorFile
from synth.steps.roundtrip_corpus import BLOCK, scan

folder = Path({str(tmp_path / "vectors")!r})
folder.mkdir()
rng = np.random.default_rng(0)
corpus = rng.standard_normal((BLOCK + 900, 16)).astype(np.float32)
corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
corpus[[40, BLOCK + 3]] = corpus[5]  # copies of a passage on both sides of a block boundary
queries = rng.standard_normal((2500, 16)).astype(np.float32)
targets = rng.integers(0, len(corpus), len(queries))
queries[:30], targets[:30] = corpus[5] + 0.01 * rng.standard_normal((30, 16)), 5
np.save(folder / "corpus.npy", corpus)
file = VectorFile(folder / "corpus.npy")
ray.init(address={ray_cluster!r}, logging_level="ERROR", log_to_driver=False)
got, want = ray_scan(ray, queries, targets, file), scan(queries, targets, file)
for name in ("own", "rank", "best_other", "best_other_index"):
    assert np.array_equal(getattr(got, name), getattr(want, name)), name
assert set(got.best_other_index[:30].tolist()) <= {{40, BLOCK + 3}}
assert sorted(p.name for p in folder.iterdir()) == ["corpus.npy"], "the query and target files are removed"
print("equal")
"""
    )
    env = dict(os.environ, **AUTH)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("equal"), done.stderr[-3000:]
