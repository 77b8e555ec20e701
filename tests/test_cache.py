"""Request and embedding caches: keys, round trips, and damaged files that are redone, not fatal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from synth.backends import Completion, SamplingParams
from synth.cache import EmbeddingCache, RequestCache, request_key
from synth.embedders import CachedEmbedder

MESSAGES = [{"role": "user", "content": "Write a query."}]


def test_request_key_changes_with_everything_that_determines_a_reply() -> None:
    base = request_key("vllm", "m@1", MESSAGES, SamplingParams())
    assert base == request_key("vllm", "m@1", [dict(MESSAGES[0])], SamplingParams())
    variants = [
        request_key("openai", "m@1", MESSAGES, SamplingParams()),
        request_key("vllm", "m@2", MESSAGES, SamplingParams()),
        request_key("vllm", "m@1", [{"role": "user", "content": "Write a query!"}], SamplingParams()),
        request_key("vllm", "m@1", MESSAGES, SamplingParams(temperature=0.2)),
        request_key("vllm", "m@1", MESSAGES, SamplingParams(seed=1)),
        request_key("vllm", "m@1", MESSAGES, SamplingParams(n=2)),
        request_key("vllm", "m@1", MESSAGES, SamplingParams(json_schema={"type": "array"})),
        request_key("vllm", "m@1", MESSAGES, SamplingParams(logprobs=5)),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_replies_round_trip_and_failures_are_not_cached(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "r.sqlite")
    good = Completion(texts=["a", "b"], finish_reasons=["stop", "length"], prompt_tokens=3, completion_tokens=4)
    cache.put("k1", good, "m")
    cache.put("k2", Completion(texts=[], error="HTTP 500 after 3 retries"), "m")
    cache.close()
    reopened = RequestCache(tmp_path / "r.sqlite")
    assert reopened.get_many(["k1", "k2", "k1"]) == {"k1": good}
    assert (reopened.hits, reopened.misses) == (2, 1)
    assert reopened.stats()["replies"] == 1
    assert reopened.clear() == 1 and reopened.get_many(["k1"]) == {}


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_request_cache_is_moved_aside_with_a_warning(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "r.sqlite"
    cache = RequestCache(path)
    for i in range(200):
        cache.put(f"k{i}", Completion(texts=["x" * 200]), "m")
    cache.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a database" * 100)
    with pytest.warns(UserWarning, match="damaged"):
        fresh = RequestCache(path)
    assert fresh.get_many(["k1"]) == {}  # redone, never served from a broken file
    fresh.put("k1", Completion(texts=["y"]), "m")
    assert fresh.get_many(["k1"])["k1"].texts == ["y"]
    assert any(p.name.startswith("r.sqlite.corrupt-") for p in tmp_path.iterdir())


def test_damaged_embedding_row_is_a_miss(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    cache.put_many([("a", np.ones(4, dtype=np.float32)), ("b", np.zeros(4, dtype=np.float32))])
    cache.conn.execute("UPDATE vectors SET data = ? WHERE key = 'b'", (b"\x00\x01",))  # half-written row
    assert list(cache.get_many(["a", "b"])) == ["a"]


class CountingEmbedder:
    """An embedder (here the hashing one), counting how many texts actually reach it."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.model_id = inner.model_id
        self.texts = 0

    def embed(self, texts, *, role, progress=None):  # type: ignore[no-untyped-def]
        self.texts += len(texts)
        return self.inner.embed(texts, role=role, progress=progress)


def test_cached_embedder_embeds_each_text_once_and_matches_the_model(tmp_path: Path, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    embedder = hashing_embedder
    counting = CountingEmbedder(embedder)
    cached = CachedEmbedder(lambda: counting, embedder.model_id, EmbeddingCache(tmp_path / "e.sqlite"), {})
    texts = ["heaps keep the smallest item first", "json is a data format", "heaps keep the smallest item first"]
    first = cached.embed(texts, role="document")
    again = cached.embed(texts + ["a new text"], role="document")
    assert counting.texts == 3 + 1  # the duplicate text is embedded once per call, then never again
    np.testing.assert_allclose(first, embedder.embed(texts, role="document"), atol=1e-5)
    np.testing.assert_array_equal(again[:3], first)
    assert cached.embed([], role="query").shape[0] == 0


def test_truncated_embedding_cache_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    cache = EmbeddingCache(path)
    cache.put_many([(f"k{i}", np.ones(384, dtype=np.float32)) for i in range(300)])
    cache.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.conn.close()
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.warns(UserWarning, match="damaged"):
        fresh = EmbeddingCache(path)
    assert fresh.get_many(["k1"]) == {}
    with pytest.raises(sqlite3.DatabaseError):
        moved = next(p for p in tmp_path.glob("e.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm")))
        sqlite3.connect(moved).execute("PRAGMA integrity_check").fetchall()
