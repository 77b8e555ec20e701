"""The round-trip rule in bounded memory (synth/steps/roundtrip_corpus.py, filter_roundtrip.py):
the block scan against a whole-matrix reference, the streamed filter against the whole-list one,
and the pipeline's peak memory while it filters 200k rows.

Real hashing embedder (no model), real vector files and shards on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synth.mining.search import VectorFile
from synth.steps.filter import FilterStep
from synth.steps.filter_spec import FilterSpec
from synth.steps.roundtrip_corpus import BLOCK, QUERY_CHUNK, TIE, scan
from tests.conftest import make_ctx
from tests.test_mine_memory import PEAK_PRELUDE, _text


def _vectors(tmp_path: Path, array: np.ndarray, name: str = "corpus") -> VectorFile:
    np.save(tmp_path / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    return VectorFile(tmp_path / f"{name}.npy")


def test_scan_ranks_margins_and_ties_on_literal_scores(tmp_path: Path) -> None:
    """Unit documents, so each query's scores are its own coordinates."""
    corpus = _vectors(tmp_path, np.eye(3))
    queries = np.array([[0.5, 0.2, 0.1], [0.3, 0.4, 0.0], [0.6, 0.6, 0.1]], dtype=np.float32)
    got = scan(queries, np.array([0, 0, 1]), corpus)
    assert got.own.tolist() == pytest.approx([0.5, 0.3, 0.6])
    assert got.rank.tolist() == [1, 2, 1]  # a tie is not beaten: rank counts strictly higher scores
    assert got.margin.tolist() == pytest.approx([0.3, -0.1, 0.0])
    assert got.best_other_index.tolist() == [1, 1, 0]  # query 3: doc 0 ties the own passage
    alone = scan(np.array([[0.7]], dtype=np.float32), np.array([0]), _vectors(tmp_path, np.ones((1, 1)), "one"))
    assert alone.margin.tolist() == pytest.approx([0.7]) and alone.best_other_index.tolist() == [-1]
    empty = scan(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), corpus)
    assert len(empty.rank) == 0


def test_scan_equals_one_score_matrix_across_blocks_and_query_chunks(tmp_path: Path) -> None:
    """More documents than a block and queries than a chunk; exact copies of a passage on both sides
    of a block boundary must stay ties (rank 1, margin 0) although they come from different products."""
    rng = np.random.default_rng(0)
    n_docs, n_queries = BLOCK + 1500, QUERY_CHUNK * 2 + 300
    docs = rng.normal(size=(n_docs, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    docs[100] = docs[BLOCK + 7] = docs[0]
    queries = (docs[rng.integers(0, n_docs, n_queries)] + 0.8 * rng.normal(size=(n_queries, 16))).astype(np.float32)
    targets = rng.integers(0, n_docs, n_queries)
    targets[:50] = 0
    queries[:50] = docs[0] + 0.05 * rng.normal(size=(50, 16))  # queries close to the copied passage
    got = scan(queries, targets, _vectors(tmp_path, docs))

    scores = queries.astype(np.float64) @ docs.T.astype(np.float64)
    rows = np.arange(n_queries)
    own = scores[rows, targets]
    scores[rows, targets] = -np.inf
    want_rank = 1 + np.sum(scores > own[:, None] + TIE, axis=1)
    assert (got.rank == want_rank).all()
    assert np.allclose(got.margin, own - scores.max(axis=1), atol=1e-5)
    assert (got.rank[:50] == 1).all() and np.allclose(got.margin[:50], 0, atol=1e-6)
    assert set(got.best_other_index[:50].tolist()) <= {100, BLOCK + 7}, "a copy of the passage is its best other"
    clear = np.sort(scores, axis=1)[:, -2] < scores.max(axis=1) - 1e-5  # no near-tie for the best other
    assert (got.best_other_index[clear] == scores.argmax(axis=1)[clear]).all()


def test_the_faiss_scan_probing_every_cluster_decides_as_the_exact_scan(tmp_path: Path) -> None:
    """`search: faiss` with every cluster probed: the same rank, scores and best other document for
    every query within top_k; a miss stays a miss, its rank a lower bound. With few probes it runs
    and keeps at least what exact search keeps (an unprobed document cannot outrank the passage)."""
    from synth.mining.ivf import FaissIndex
    from synth.steps.roundtrip_corpus import ivf_scan

    rng = np.random.default_rng(1)
    docs = rng.normal(size=(3000, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    docs[[10, 2500]] = docs[3]  # copies of a passage: ties
    targets = rng.integers(0, len(docs), 1500)
    targets[:40] = 3
    queries = (docs[targets] + 0.35 * rng.normal(size=(1500, 16))).astype(np.float32)
    queries[:40] = docs[3] + 0.05 * rng.normal(size=(40, 16))  # close to the copied passage
    corpus = _vectors(tmp_path, docs)
    exact, top_k = scan(queries, targets, corpus), 5
    index = FaissIndex(corpus, nprobe=10**6)
    try:
        got = ivf_scan(index, queries, targets, corpus, top_k)
    finally:
        index.close()
    within = exact.rank <= top_k
    assert 200 < within.sum() < 1400, "both kept and missed queries"
    assert (got.rank[within] == exact.rank[within]).all()
    assert (got.rank[~within] > top_k).all() and (got.rank <= exact.rank).all()
    assert np.allclose(got.own, exact.own, atol=1e-6) and np.allclose(got.best_other, exact.best_other, atol=1e-6)
    clear = np.abs(got.best_other - exact.best_other) < 1e-7
    assert (got.best_other_index[clear] == exact.best_other_index[clear]).mean() > 0.99
    assert set(got.best_other_index[:40].tolist()) <= {10, 2500}
    few = FaissIndex(corpus, nprobe=2)
    try:
        approx = ivf_scan(few, queries, targets, corpus, top_k)
    finally:
        few.close()
    assert (approx.rank <= exact.rank).all() and (approx.rank <= top_k).sum() >= within.sum()


def test_a_round_trip_filter_with_faiss_search_probing_everything_equals_the_exact_one(hashing_embedder: Any) -> None:
    rows = _rows()
    rule = {"rule": "roundtrip", "top_k": 3, "keep_best_per_source": 2}
    ctx = make_ctx(DOCS, embedder=hashing_embedder)
    exact = FilterStep(FilterSpec.model_validate({"name": "quality", "rules": [rule]}))(rows, ctx)  # type: ignore[arg-type]
    faiss_rule = {**rule, "search": "faiss", "nprobe": 10**6}
    got = FilterStep(FilterSpec.model_validate({"name": "quality", "rules": [faiss_rule]}))(rows, ctx)  # type: ignore[arg-type]
    assert got.rows == exact.rows
    assert [d["reason"] for d in got.dropped] == [d["reason"] for d in exact.dropped]


DOCS = [{"id": f"d{i}", "text": _text(i, 8, 1)} for i in range(60)]


def _rows() -> list[dict[str, Any]]:
    """Several queries per passage (some good, some drawn at random), a passage that is no document,
    a row whose id is unknown but whose text is a document's, and queries the later rules drop."""
    rows = []
    for i in range(400):
        d = DOCS[(i * 7) % 60]
        words = d["text"].split()
        query = " ".join(words[i % 4 : i % 4 + 3]) if i % 3 else _text(i, 3, 2)
        rows.append({"source_id": d["id"], "id": d["id"], "query": query, "text": d["text"], "_synth_row": i})
    rows[5]["text"], rows[5]["source_id"] = "a passage nobody indexed about zinc", "nowhere"
    rows[8]["source_id"] = "unknown"  # found by its text
    rows[12]["query"] = "x"  # too short for the length rule after the round trip
    return rows


@pytest.mark.parametrize(
    "rules",
    [
        [{"rule": "roundtrip", "top_k": 3}],
        [{"rule": "roundtrip", "top_k": 5, "keep_best_per_source": 2}, {"rule": "length", "min_chars": 3}],
        [{"rule": "roundtrip", "top_k": 2, "corpus": "positives"}, {"rule": "repetition"}],
        [{"rule": "roundtrip", "top_k": 4, "corpus": "positives", "keep_best_per_source": 1}],
    ],
    ids=["source", "keep-best-then-length", "positives", "positives-keep-best"],
)
def test_the_streamed_filter_equals_the_whole_list_filter(
    tmp_path: Path, rules: list[dict[str, Any]], hashing_embedder: Any
) -> None:
    """Rows, drop records (order included) and per-rule counts, with the rows in uneven batches."""
    rows = _rows()
    step = FilterStep(FilterSpec.model_validate({"name": "quality", "rules": rules}))
    want = step(rows, make_ctx(DOCS, embedder=hashing_embedder))  # type: ignore[arg-type]

    def batches():  # type: ignore[no-untyped-def]
        return (rows[s : s + 37] for s in range(0, len(rows), 37))

    got = step.stream(batches, make_ctx(DOCS, embedder=hashing_embedder), tmp_path / "drops.jsonl", len(rows))  # type: ignore[arg-type]
    assert got is not None
    assert list(got.rows) == want.rows
    dropped = [json.loads(line) for line in (tmp_path / "drops.jsonl").read_text().splitlines()]
    assert sorted(dropped, key=lambda d: d["rule"] != rules[0].get("name", "roundtrip")) == json.loads(
        json.dumps(want.dropped)
    )  # the file lists a chunk's later-rule drops beside it; the pipeline orders them by rule
    assert got.stats == want.stats
    reasons = {d["reason"] for d in want.dropped}
    assert "roundtrip_miss" in reasons and len(want.rows) >= 40
    assert ("roundtrip_not_best" in reasons) == ("keep_best_per_source" in rules[0])
    if rules[0].get("corpus") != "positives":
        assert "positive_not_in_corpus" in reasons and any(r["_synth_row"] == 8 for r in want.rows + want.dropped)


def test_every_rule_but_the_judge_streams(hashing_embedder: Any) -> None:
    def streams(rules: list[dict[str, Any]]) -> bool:
        step = FilterStep(FilterSpec.model_validate({"name": "f", "rules": rules}))
        return (
            step.stream(lambda: iter([[{"query": "q", "text": "t"}]]), make_ctx(DOCS), Path("/nonexistent")) is not None
        )  # type: ignore[arg-type]

    assert streams([{"rule": "roundtrip"}, {"rule": "length"}, {"rule": "copy"}])
    assert streams([{"rule": "dedup"}, {"rule": "roundtrip"}])
    assert streams([{"rule": "roundtrip"}, {"rule": "dedup"}])
    assert not streams([{"rule": "roundtrip"}, {"rule": "judge"}])
    assert not streams([{"rule": "dedup"}, {"rule": "judge"}])
    step = FilterStep(FilterSpec.model_validate({"name": "f", "rules": [{"rule": "roundtrip", "query_column": "q2"}]}))
    with pytest.raises(ValueError, match="no column 'q2'"):
        step.stream(lambda: iter([[{"query": "q", "text": "t"}]]), make_ctx(DOCS), Path("/nonexistent"))  # type: ignore[arg-type]


_PEAK_SCRIPT = (
    PEAK_PRELUDE
    + """
from synth.steps.filter import FilterStep
from synth.steps.filter_spec import FilterSpec

folder, n, whole = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "whole"
n_docs = n // 40
docs, rows = ShardSet(folder / "docs"), ShardSet(folder / "rows")
doc_counts = [docs.write(s // 4096, ({"id": f"d{i}", "text": _text(i, 40, 1)} for i in range(s, min(n_docs, s + 4096))))
              for s in range(0, n_docs, 4096)]
def row(i):
    own = _text(i % n_docs, 40, 1)
    return {"source_id": f"d{i % n_docs}", "id": f"d{i % n_docs}", "text": own,
            "query": " ".join([*own.split()[i % 5 : i % 5 + 8], _text(i, 1, 2), str(i)])}
counts = [rows.write(s // 4096, (row(i) for i in range(s, min(n, s + 4096)))) for s in range(0, n, 4096)]
embedder = HashingEmbedder(EmbedderSpec(model="hashing"))
ctx = StepContext(prompts=PromptLibrary(None), llm=None, embedder=lambda _: embedder,
                  documents=pipeline.final_rows(pipeline.Stage([docs.path(i) for i in range(len(doc_counts))], doc_counts)))
stage = pipeline.Stage([rows.path(i) for i in range(len(counts))], counts)
step = FilterStep(FilterSpec.model_validate({"name": "quality", "rules": [
    {"rule": "roundtrip", "top_k": 20, "keep_best_per_source": 30}, {"rule": "length", "min_chars": 5}]}))
if whole:
    step.stream = lambda *a: None  # the whole-list path, for the comparison
before = hwm()
out = pipeline.run_step(step, ctx, stage, folder / "step", None, lambda *a: None, 1.0, 4096)
print(json.dumps({"before": before, "after": hwm(), "rows": out.stage.total, "dropped": out.dropped}))
"""
)


def test_round_trip_memory_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    """Peak RSS while the pipeline round-trip-filters 200k rows (keep-best on) grows by far less
    than holding them takes: rows are read a shard at a time, scored, and written out."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), "200000", "stream"],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["rows"] + sum(peak["dropped"].values()) == 200000, peak
    assert peak["rows"] > 100000 and peak["dropped"].get("roundtrip_not_best", 0) > 0, peak
    assert peak["after"] - peak["before"] < 150, peak  # MiB
