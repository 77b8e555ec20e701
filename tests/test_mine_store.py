"""Out-of-core search: exact top-k over corpus chunks equals a full sort, on disk or in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synth.mining.search import VectorFile, embed_to_file, top_k
from synth.mining.select import select_negatives
from synth.mining.spec import MiningParams


def _full_sort(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ c.T
    idx = np.array([np.lexsort((np.arange(len(c)), -row))[:k] for row in s])
    return idx, np.take_along_axis(s, idx, axis=1)


def test_top_k_equals_full_sort_for_any_chunking() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(23, 6)).astype(np.float32)
    c = rng.normal(size=(97, 6)).astype(np.float32)
    want_idx, want_scores = _full_sort(q, c, 10)
    for qc, cc in [(1, 1), (5, 7), (23, 10), (1024, 97), (4, 200)]:
        idx, scores = top_k(q, c, 10, query_chunk=qc, corpus_chunk=cc)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_top_k_ties_across_chunks_go_to_lower_index() -> None:
    # Every doc scores 0.5 except doc 7 (1.0): the top 4 are 7, 0, 1, 2 whatever the chunking.
    c = np.tile(np.array([[0.5, np.sqrt(0.75)]], dtype=np.float32), (12, 1))
    c[7] = [1.0, 0.0]
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    for cc in (1, 3, 5, 12):
        idx, scores = top_k(q, c, 4, corpus_chunk=cc)
        assert idx.tolist() == [[7, 0, 1, 2]]
        assert scores.tolist() == [[1.0, 0.5, 0.5, 0.5]]


def test_top_k_pads_short_corpus() -> None:
    c = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    idx, scores = top_k(np.array([[0.0, 1.0]], dtype=np.float32), c, 4)
    assert idx.tolist() == [[1, 0, -1, -1]]
    assert scores[0, :2].tolist() == [1.0, 0.0] and np.isneginf(scores[0, 2:]).all()


def test_embed_to_file_streams_blocks_and_reads_back(tmp_path: Path) -> None:
    calls: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    done: list[int] = []
    vf = embed_to_file(embed, texts, tmp_path / "v.npy", block=2, progress=done.append)
    assert calls == [2, 2, 1] and done == [2, 2, 1]
    assert vf.shape == (5, 2) and len(vf) == 5
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy")[:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(vf.read(1, 3)[:, 0], [2, 3])
    np.testing.assert_array_equal(vf.take([4, 0])[:, 0], [5, 1])
    # The search reads a VectorFile chunk by chunk and finds what the in-memory array gives.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    assert top_k(q, vf, 3, corpus_chunk=2)[0].tolist() == [[4, 3, 2]]


def test_vector_file_rejects_other_dtypes(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.float64))
    try:
        VectorFile(tmp_path / "x.npy")
    except ValueError as e:
        assert "float32" in str(e)
    else:
        raise AssertionError("float64 file accepted")


# --- st_compatible window, on literal scores ------------------------------------------------------

SCORES = np.array([0.5, 0.9, 0.7, 0.8, 0.6])  # sorted: 1, 3, 2, 4, 0


def _st(exclude: set[int] = frozenset(), **kwargs: object) -> list[int]:  # type: ignore[assignment]
    params = MiningParams(st_compatible=True, **kwargs)  # type: ignore[arg-type]
    return select_negatives(SCORES, 1.0, set(exclude), params, np.random.default_rng(0))[0]


def test_st_range_min_skips_survivors_after_filters() -> None:
    # max_score .75 drops 1 and 3 -> survivors [2, 4, 0]; range_min 1 skips 2 -> [4, 0].
    assert _st(range_min=1, range_max=5, max_score=0.75, num_negatives=2) == [4, 0]


def test_st_pool_is_counted_before_exclusion() -> None:
    # Pool = range_max + 1 (max_positives) best: [1, 3, 2]; excluding 1 leaves [3, 2].
    assert _st({1}, range_max=2, num_negatives=3) == [3, 2]
    # Excluding a doc outside the pool frees no slot: [1, 3, 2][:2].
    assert _st({0}, range_max=2, num_negatives=3) == [1, 3]


def test_st_default_range_max() -> None:
    p = MiningParams(num_negatives=3, range_min=2, st_compatible=True)
    assert p.st_range_max(max_positives=2) == 2 + 3 + 2
    assert MiningParams(num_negatives=3, relative_margin=0.1).st_range_max(1) == 0 + 30 + 1
    # No margin: pool of 0 + 1 + 1 = 2 -> only the best two are candidates, then exclusion.
    assert _st({1}, num_negatives=1) == [3]


def test_streaming_top_k_with_prefilter_equals_full_sort_on_minilm(embedder: object) -> None:
    """Search-while-embedding (blocks fed in order, threshold prefilter) equals a full sort."""
    from synth.mining.search import StreamingTopK
    from tests.test_mine_parity import docstring_pairs

    pairs = docstring_pairs(["json", "textwrap", "shutil", "pathlib", "os"])
    c = embedder.embed([p["positive"] for p in pairs], role="document")  # type: ignore[attr-defined]
    q = embedder.embed([p["anchor"] for p in pairs], role="query")  # type: ignore[attr-defined]
    # (exact ties are covered on literal scores above: BLAS may round duplicate columns differently)
    want_idx, want_scores = _full_sort(q, c, 7)
    for block, query_chunk in [(1, 3), (9, 1024), (16, 5), (len(c), 2)]:
        stream = StreamingTopK(q, 7, query_chunk=query_chunk)
        for start in range(0, len(c), block):
            stream.add(start, c[start : start + block])
        idx, scores = stream.result()
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_faiss_candidates_get_exact_scores_and_order(tmp_path: Path, embedder: object) -> None:
    """All clusters probed: faiss equals exact search; one cluster: returned scores are still exact."""
    from synth.mining.ivf import faiss_top_k
    from tests.test_mine_parity import docstring_pairs

    pairs = docstring_pairs(["json", "textwrap", "shutil", "pathlib", "os", "inspect"])
    texts = [p["positive"] for p in pairs]
    vf = embed_to_file(lambda t: embedder.embed(t, role="document"), texts, tmp_path / "c.npy", block=50)  # type: ignore[attr-defined]
    c = np.load(tmp_path / "c.npy")
    q = embedder.embed([p["anchor"] for p in pairs], role="query")  # type: ignore[attr-defined]
    want_idx, want_scores = _full_sort(q, c, 5)
    idx, scores = faiss_top_k(q, vf, 5, nprobe=10_000, nlist=4)
    # Same scores as a full sort; ids equal up to exact-duplicate docstrings (equal vectors, whose
    # dot products BLAS may round one ulp apart), so each id is checked against its own score.
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    np.testing.assert_allclose(np.einsum("ikd,id->ik", c[idx], q), scores, rtol=1e-5)
    assert (idx == want_idx).mean() > 0.99
    idx, scores = faiss_top_k(q, vf, 5, nprobe=1, nlist=4)
    for i in range(len(q)):
        got = idx[i][idx[i] >= 0]
        np.testing.assert_allclose(scores[i][: len(got)], c[got] @ q[i], rtol=1e-5)
        assert list(scores[i][: len(got)]) == sorted(scores[i][: len(got)], reverse=True)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, want_idx, strict=True)])
    assert recall < 1.0  # one of four clusters misses some true neighbours: the search is approximate


def test_streaming_top_k_exact_on_integer_scores_with_many_ties() -> None:
    """Small-integer vectors score exactly in any BLAS: heavy ties at every cut, rows that overflow
    the threshold prefilter (later blocks score higher), background worker or inline, same result."""
    from synth.mining.search import StreamingTopK

    rng = np.random.default_rng(3)
    q = rng.integers(0, 3, size=(37, 4)).astype(np.float32)
    c = rng.integers(0, 3, size=(400, 4)).astype(np.float32)
    c[200:] += 1  # the second half beats most k-th bests: the top-k path inside merge_block
    want_idx, want_scores = _full_sort(q, c, 9)
    for block, query_chunk, background in [(1, 5, True), (7, 1024, True), (50, 4, False), (64, 37, True)]:
        stream = StreamingTopK(q, 9, query_chunk=query_chunk, background=background)
        for start in range(0, len(c), block):
            stream.add(start, c[start : start + block])
        idx, scores = stream.result()
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(scores, want_scores)


def test_streaming_top_k_worker_error_reaches_the_caller() -> None:
    from synth.mining.search import StreamingTopK

    stream = StreamingTopK(np.ones((3, 4), np.float32), 2)
    stream.add(0, np.ones((5, 3), np.float32))  # wrong dimension: fails in the worker thread
    try:
        stream.result()
    except ValueError:
        pass
    else:
        raise AssertionError("a failed block search was not reported")
    stream.close()  # idempotent


def test_failed_embedding_stops_the_search_worker() -> None:
    """An embedder error mid-corpus reaches the caller and leaves no search thread behind."""
    import threading

    from synth.mining.engine import run_mining

    class FailsOnSecondBlock:
        model_id = "fails"

        def __init__(self) -> None:
            self.document_calls = 0

        def embed(self, texts: list[str], *, role: str, progress: object = None) -> np.ndarray:
            if role == "document":
                self.document_calls += 1
                if self.document_calls == 2:
                    raise RuntimeError("embedder broke")
            v = np.random.default_rng(len(texts)).normal(size=(len(texts), 8)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    corpus = [f"doc {i}" for i in range(9000)]  # two embedding blocks of 8192
    try:
        run_mining(["q0", "q1"], [[0], [1]], corpus, FailsOnSecondBlock(), MiningParams(range_max=5))  # type: ignore[arg-type]
    except RuntimeError as e:
        assert "embedder broke" in str(e)
    else:
        raise AssertionError("the embedder's error was swallowed")
    assert not [t for t in threading.enumerate() if t.name == "synth-topk"]


def test_take_gathers_exactly_as_fancy_indexing(tmp_path: Path) -> None:
    """`VectorFile.take` reads row by row: numpy's own gather, unsorted and repeated indices
    included, through a `head` view too; an index outside the file is an error, not garbage."""
    rng = np.random.default_rng(0)
    array = rng.standard_normal((1000, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", array)
    vectors = VectorFile(tmp_path / "v.npy")
    idx = rng.integers(0, 1000, 777)
    np.testing.assert_array_equal(vectors.take(idx), array[idx])
    np.testing.assert_array_equal(vectors.head(10).take([9, 0, 9]), array[[9, 0, 9]])
    assert vectors.take([]).shape == (0, 8)
    for bad in ([1000], [-1]):
        with pytest.raises(IndexError, match="out of range"):
            vectors.take(bad)


_GATHER_RSS = """
import sys, numpy as np
from synth.mining.search import VectorFile
def hwm(): return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
vectors = VectorFile(sys.argv[1])
idx = np.random.default_rng(0).permutation(len(vectors))[:40_000]
before = hwm()
for s in range(0, len(idx), 8192):
    vectors.take(idx[s : s + 8192])
print(hwm() - before)
"""


def test_a_random_gather_holds_only_the_rows_it_reads(tmp_path: Path) -> None:
    """Gathering 40k random rows of a 200 MiB vector file, 8,192 at a time, raises the peak RSS by
    about the 8 MiB asked for; a memory-mapped gather kept the file's touched pages resident
    (+200 MiB here: the kernel maps 64 KiB around each faulted page)."""
    import subprocess
    import sys

    path = tmp_path / "v.npy"
    with path.open("wb") as f:  # written block by block: this test's own RSS stays small too
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (200_000, 256)})
        for _ in range(20):
            f.write(np.ones((10_000, 256), np.float32).tobytes())
    out = subprocess.run([sys.executable, "-c", _GATHER_RSS, str(path)], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 60, f"a gather of 8 MiB raised the peak RSS by {out.stdout.strip()} MiB"
