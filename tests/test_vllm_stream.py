"""Keeping the engine fed (issue 17): a window of requests in flight instead of batch-then-drain.

The engine tests use the session's real vLLM engine (run under `flock /tmp/synth-engine.lock`):
the windowed loop must give every prompt the reply it gets alone, in place, and must queue new
prompts while earlier ones still run. The cached path's stream (order, lazy reading, commits,
no backend for a fully cached input) and the per-core locks run on the test doubles.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from synth.backends import Completion, Messages, SamplingParams
from synth.backends.cpu_cores import BIND, RESERVED, bound_engine_env, claim_cores, engine_env
from synth.cache import RequestCache
from synth.executors.shards import read_rows
from synth.llm import CachedLLM, Usage
from synth.specs import LLMSpec
from tests.conftest import REPO

PARAMS = SamplingParams(max_tokens=12, temperature=0.7, seed=5)


def _ask(i: int) -> Messages:
    return [{"role": "user", "content": f"Write one short search query about topic number {i}: {'tea ' * (i % 4)}"}]


def _windowed(backend: object, window: int) -> object:
    """The same engine with another in-flight window (`llm.batch_size`)."""
    backend.spec = backend.spec.model_copy(update={"batch_size": window})  # type: ignore[attr-defined]
    return backend


def test_the_window_gives_each_prompt_its_own_reply_in_place(vllm_backend: object) -> None:
    """Per-request seeds: a reply does not depend on what else was in flight, nor on the window."""
    original = vllm_backend.spec  # type: ignore[attr-defined]
    conversations = [_ask(i) for i in range(6)]
    conversations.insert(3, [{"role": "user", "content": "word " * 3000}])  # refused, in place
    try:
        alone = [_windowed(vllm_backend, 1).generate([c], PARAMS)[0] for c in conversations]  # type: ignore[attr-defined]
        delivered: dict[int, Completion] = {}
        together = _windowed(vllm_backend, 3).generate(  # type: ignore[attr-defined]
            conversations, PARAMS, on_result=lambda i, c: delivered.setdefault(i, c)
        )
    finally:
        vllm_backend.spec = original  # type: ignore[attr-defined]
    assert sorted(delivered) == list(range(7)) and all(delivered[i] is together[i] for i in range(7))
    assert together[3].error is not None and together[3].error.startswith("prompt_too_long")
    assert [c.texts for c in together] == [c.texts for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    assert all(c.texts and c.texts[0].strip() for i, c in enumerate(together) if i != 3)


def test_new_prompts_are_queued_while_earlier_ones_still_run(vllm_backend: object) -> None:
    """The old loop drained the engine at every `batch_size` boundary: no prompt was ever read
    while a request was in flight. The window reads the next prompt as soon as one finishes."""
    original = vllm_backend.spec  # type: ignore[attr-defined]
    engine = vllm_backend.llm.llm_engine  # type: ignore[attr-defined]
    busy_at_read: list[int] = []

    def prompts() -> Iterator[Messages]:
        # ~1400-token prompts: the scheduler's 4096-token budget prefills two per step, so the
        # requests of a window start (and finish) in different steps, as they do in real runs.
        for i in range(10):
            busy_at_read.append(engine.get_num_unfinished_requests())
            yield [{"role": "user", "content": f"Topic {i}. " + "tea " * 1400 + "Write one search query."}]

    try:
        replies = dict(_windowed(vllm_backend, 3).stream(prompts(), PARAMS))  # type: ignore[attr-defined]
    finally:
        vllm_backend.spec = original  # type: ignore[attr-defined]
    assert sorted(replies) == list(range(10)) and all(r.error is None for r in replies.values())
    assert busy_at_read[:3] == [0, 0, 0], "the first window is read before anything runs"
    later = busy_at_read[3:]
    assert max(later) <= 2, "never more than the window in flight"
    assert sum(n > 0 for n in later) >= len(later) // 2, f"engine drained between reads: {busy_at_read}"


def test_a_stream_abandoned_midway_leaves_the_engine_clean(vllm_backend: object) -> None:
    """Ctrl-C or an error in the caller: the requests still in flight are aborted, not left to
    surface in the next call (where their ids would be unknown)."""
    original = vllm_backend.spec  # type: ignore[attr-defined]
    engine = vllm_backend.llm.llm_engine  # type: ignore[attr-defined]
    # Ten ~1400-token prompts in one window: the scheduler's 4096-token budget prefills two per
    # step, so they finish in different steps and some are surely still running at the first
    # reply (eight short prompts could all finish in the same step, leaving nothing to abort).
    prompts = [
        [{"role": "user", "content": f"Topic {i}. " + "tea " * 1400 + "Write one search query."}] for i in range(10)
    ]
    try:
        stream = _windowed(vllm_backend, 10).stream(prompts, PARAMS)  # type: ignore[attr-defined]
        next(stream)
        assert engine.has_unfinished_requests()
        stream.close()
    finally:
        vllm_backend.spec = original  # type: ignore[attr-defined]
    assert not engine.has_unfinished_requests()
    [reply] = vllm_backend.generate([_ask(1)], PARAMS)  # type: ignore[attr-defined]
    assert reply.error is None and reply.texts


class ReversedStream:
    """A streaming LLMBackend (the dry-run replies) that finishes each window of 4 in reverse order."""

    kind = "dry-run"

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.model_id = inner.model_id  # type: ignore[attr-defined]
        self.read = 0
        self.streams = 0

    def stream(self, conversations: Iterable[Messages], params: SamplingParams) -> Iterator[tuple[int, Completion]]:
        self.streams += 1
        window: list[tuple[int, Messages]] = []
        for i, conversation in enumerate(conversations):
            self.read += 1
            window.append((i, conversation))
            if len(window) == 4:
                yield from self._finish(window, params)
                window = []
        yield from self._finish(window, params)

    def _finish(self, window: list[tuple[int, Messages]], params: SamplingParams) -> Iterator[tuple[int, Completion]]:
        replies = self.inner.generate([c for _, c in window], params)  # type: ignore[attr-defined]
        yield from reversed([(i, r) for (i, _), r in zip(window, replies, strict=True)])

    def generate(self, conversations: list[Messages], params: SamplingParams, on_result: object = None) -> list:
        raise AssertionError("a streaming backend is streamed")

    def close(self) -> None:
        pass


def test_cached_stream_keeps_input_order_commits_each_reply_and_reads_lazily(
    dry_backend: object, tmp_path: Path
) -> None:
    cache = RequestCache(tmp_path / "requests.sqlite")
    spec = LLMSpec(backend="dry-run")
    conversations = [_ask(i) for i in range(11)]
    expected = [c.texts for c in dry_backend.generate(conversations, PARAMS)]  # type: ignore[attr-defined]
    warm = CachedLLM("default", spec, cache, backend=dry_backend)  # type: ignore[arg-type]
    warm.complete([conversations[i] for i in (1, 2, 7)], PARAMS, Usage())  # some already cached
    streaming = ReversedStream(dry_backend)
    llm = CachedLLM("default", spec, cache, backend=streaming)  # type: ignore[arg-type]
    usage = Usage()
    stream = llm.stream(iter(conversations), PARAMS, usage)
    first = next(stream)
    assert first.texts == expected[0]
    assert streaming.read == 4, "the backend read only what it needed for the first reply"
    got = [first, *stream]
    assert [c.texts for c in got] == expected
    assert (usage.cache_hits, usage.requests) == (3, 8)
    again = Usage()
    CachedLLM("default", spec, cache, backend=streaming).complete(conversations, PARAMS, again)  # type: ignore[arg-type]
    assert (again.cache_hits, again.requests) == (11, 0), "every fresh reply was committed"


def test_a_fully_cached_stream_never_builds_the_backend(dry_backend: object, tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "requests.sqlite")
    spec = LLMSpec(backend="dry-run")
    conversations = [_ask(i) for i in range(5)]
    CachedLLM("default", spec, cache, backend=dry_backend).complete(conversations, PARAMS, Usage())  # type: ignore[arg-type]
    cold = CachedLLM("default", spec, cache)  # would build a dry-run backend on first miss
    replies = list(cold.stream(conversations, PARAMS, Usage()))
    assert len(replies) == 5 and cold._backend is None


def _shards(tmp_path: Path, sizes: list[int]) -> list[tuple[int, Path]]:
    """Shard files of the quickstart corpus's rows, `sizes` rows each (0: an empty shard)."""
    import json

    from synth.executors.shards import ShardSet

    docs = [json.loads(x) for x in (REPO / "recipes" / "data" / "python_stdlib.jsonl").read_text().splitlines()]
    shards, start = ShardSet(tmp_path / "source"), 0
    for i, size in enumerate(sizes):
        shards.write(i, [dict(d, source_id=d["id"]) for d in docs[start : start + size]])
        start += size
    return [(i, shards.path(i)) for i in range(len(sizes))]


def test_the_executor_streams_across_shards_with_each_shards_own_result(dry_backend: object, tmp_path: Path) -> None:
    """The local executor gives a generate step every shard as one request stream: the backend
    reads the next shard's prompts before the current shard's result is handed back (no drain
    at the boundary), and each shard's rows, drops and usage (cache hits included) are exactly
    what one call per shard gives (what the shard's marker records)."""
    from synth.executors.local import LocalExecutor
    from synth.prompts import PromptLibrary
    from synth.recipe import load_recipe
    from synth.steps.base import StepContext
    from synth.steps.generate import GenerateStep

    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml")
    step = GenerateStep(recipe.steps[0].spec)  # 2 prompts a row (question, keywords)
    todo = _shards(tmp_path, [3, 4, 0, 3, 2])  # an empty shard too (a filter may empty one)
    cache = RequestCache(tmp_path / "requests.sqlite")
    spec = LLMSpec(backend="dry-run")
    runs: dict[bool, list[tuple[int, object, int]]] = {}
    for across in (False, True):
        if across:  # 2 of shard 3's prompts answered by the cache
            warm = CachedLLM("default", spec, cache, backend=dry_backend)  # type: ignore[arg-type]
            ctx = StepContext(PromptLibrary(REPO / "recipes"), [], lambda n=None, m=warm: m, lambda n=None: None)  # type: ignore[arg-type,return-value]
            step(read_rows(todo[3][1])[:1], ctx)
        streaming = ReversedStream(dry_backend)
        llm = CachedLLM("default", spec, cache if across else None, backend=streaming)  # type: ignore[arg-type]
        ctx = StepContext(PromptLibrary(REPO / "recipes"), [], lambda n=None, m=llm: m, lambda n=None: None)  # type: ignore[arg-type,return-value]
        runs[across] = [
            (i, result, streaming.read) for i, result in LocalExecutor(across).map_batches(step, ctx, todo, list)
        ]
        assert streaming.streams == (1 if across else 4), (
            "one stream for all shards (per shard: the empty one has none)"
        )
    assert [r for _, _, r in runs[False]] == [6, 14, 14, 20, 24], "one call per shard: its own prompts, drained"
    # One stream (shard 3's 2 cached prompts never reach the backend): shards end at backend prompt
    # 6, 14, 14, 18, 22, and each result is handed back only after prompts of the next shard were
    # read into the same window of 4 (0-3, 4-7, ...), as vLLM queues them while the shard's tail runs.
    assert [r for _, _, r in runs[True]] == [8, 16, 16, 20, 22], "the next shard was queued first"
    for (i, one, _), (j, many, _) in zip(runs[False], runs[True], strict=True):
        assert i == j and one.rows == many.rows and one.dropped == many.dropped  # type: ignore[attr-defined]
        hits = 2 if i == 3 else 0
        assert many.usage.cache_hits == hits  # type: ignore[attr-defined]
        assert many.usage.requests == one.usage.requests - hits  # type: ignore[attr-defined]
    assert [len(r.rows) for _, r, _ in runs[True]] == [6, 8, 0, 6, 4]  # type: ignore[attr-defined]


def test_a_vllm_run_over_small_shards_gives_the_rows_of_one_shard(
    vllm_backend: object, embedder: object, tmp_path: Path
) -> None:
    """The real engine, shards of 2 documents: one request stream across 3 shards gives exactly the
    rows and report that one shard gives (per-request seeds; each shard's usage on its own)."""
    from datasets import load_from_disk

    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    recipe, folder = load_recipe(REPO / "recipes" / "quickstart.yaml")
    runs = {}
    for batch in (4096, 2):
        out = tmp_path / f"out-{batch}"
        result = run_recipe(
            recipe, folder, limit=6, output_dir=out, llm=vllm_backend, embedder=embedder, use_cache=False,
            batch_rows=batch,
        )  # type: ignore[arg-type]  # fmt: skip
        report = [(r.name, r.rows_in, r.rows_out, r.requests, r.dropped) for r in result.reports]
        runs[batch] = (load_from_disk(str(out / "details")).to_list(), report)
    assert runs[2] == runs[4096]
    queries = next(r for r in runs[2][1] if r[0] == "queries")
    assert queries[3] == 12 and len(runs[2][0]) > 0  # 6 documents x 2 styles, each sent once


def test_two_claims_never_share_a_core_and_a_release_frees_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNTH_CPU_LOCK_DIR", str(tmp_path))
    first = claim_cores([0, 1])
    assert first.cores == [0, 1]
    second = claim_cores([0, 1, 2])
    assert second.cores == [2], "cores 0 and 1 are held by the first engine"
    first.release()
    third = claim_cores([0, 1, 2])
    assert third.cores == [0, 1]
    second.release()
    third.release()
    added, share = engine_env({"OMP_NUM_THREADS": "1"})  # a 1-CPU Ray actor
    assert share is not None and len(share.cores) == 1 and added[BIND] == str(share.cores[0])
    share.release()


def test_engine_env_uses_free_cores_and_keeps_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNTH_CPU_LOCK_DIR", str(tmp_path))
    env: dict[str, str] = {}
    with bound_engine_env(env) as claim:
        assert claim is not None and env[RESERVED] == "0"
        assert env[BIND] == ",".join(map(str, claim.cores))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            added, none = engine_env({})
        assert none is None and added[BIND] == "nobind", "every core is held: unbound, never doubled up"
        assert any("held by another synth vLLM engine" in str(w.message) for w in caught)
    assert env == {}, "the variables are only set around the engine start"
    claim.release()
    mine = {RESERVED: "1", BIND: "0"}
    added, none = engine_env(mine)
    assert added == {} and none is None


def test_a_prompt_over_the_size_cap_is_its_rows_drop_in_place_across_shards(
    dry_backend: object, tmp_path: Path
) -> None:
    """A row whose text renders a prompt over the cap is one `prompt_too_long` drop, never sent,
    and the run goes on: same rows and drops in the same order streamed across shards or not."""
    from synth.executors.local import LocalExecutor
    from synth.executors.shards import ShardSet
    from synth.prompts import PromptLibrary
    from synth.recipe import load_recipe
    from synth.steps.base import StepContext
    from synth.steps.generate import GenerateStep

    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml")
    step = GenerateStep(recipe.steps[0].spec)  # 2 prompts a row (question, keywords)
    todo = _shards(tmp_path, [3, 4, 2])
    shards = ShardSet(tmp_path / "source")
    huge = {(1, 1), (2, 1)}  # (shard, row): the 2nd row of shard 1, the last row of the last shard
    for i, path in todo:
        rows = read_rows(path)
        for j, row in enumerate(rows):
            if (i, j) in huge:
                row["title"] = "long " * 2000  # the template cuts `text` at 1500 characters, not `title`
        shards.write(i, rows)
    runs = {}
    for across in (False, True):
        streaming = ReversedStream(dry_backend)
        llm = CachedLLM("default", LLMSpec(backend="dry-run"), None, backend=streaming)  # type: ignore[arg-type]
        prompts = PromptLibrary(REPO / "recipes", max_chars=5_000)
        ctx = StepContext(prompts, [], lambda n=None, m=llm: m, lambda n=None: None)  # type: ignore[arg-type,return-value]
        runs[across] = list(LocalExecutor(across).map_batches(step, ctx, todo, list))
        assert streaming.read == 2 * (9 - 2), "the too-long rows' prompts never reach the backend"
    for (i, one), (j, many) in zip(runs[False], runs[True], strict=True):
        assert i == j and one.rows == many.rows and one.dropped == many.dropped
    results = [r for _, r in runs[True]]
    assert [len(r.rows) for r in results] == [6, 6, 2]
    for (shard, row), result in zip(sorted(huge), results[1:], strict=True):
        source = read_rows(todo[shard][1])[row]["source_id"]
        assert [(d["reason"], d["source_id"]) for d in result.dropped] == [("prompt_too_long", source)] * 2
        assert "5,000 characters" in result.dropped[0]["detail"]
