"""Hard-negative mining core on hand-built scores whose answers were worked out by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from synth.mining.engine import run_mining
from synth.mining.result import MinedQuery
from synth.mining.select import select_negatives
from synth.mining.spec import MiningParams

# Score of doc i for one query; sorted descending this is: 1 (.9), 3 (.8), 2 (.7), 4 (.6), 0 (.5).
SCORES = np.array([0.5, 0.9, 0.7, 0.8, 0.6])


def _select(
    scores: np.ndarray | list[float],
    exclude: set[int] = frozenset(),  # type: ignore[assignment]
    positive_score: float = 1.0,
    seed: int = 0,
    **kwargs: object,
) -> tuple[list[int], list[float]]:
    params = MiningParams(**kwargs)  # type: ignore[arg-type]
    return select_negatives(
        np.asarray(scores, dtype=np.float64),
        positive_score,
        set(exclude),
        params,
        np.random.default_rng(seed),
    )


# --- select_negatives: ordering, exclusion, window ----------------------------------------------


def test_sorted_by_score_descending() -> None:
    assert _select(SCORES, num_negatives=5) == ([1, 3, 2, 4, 0], [0.9, 0.8, 0.7, 0.6, 0.5])


def test_excludes_own_positive() -> None:
    assert _select(SCORES, exclude={1}, num_negatives=3) == ([3, 2, 4], [0.8, 0.7, 0.6])


def test_excludes_several_indices() -> None:
    assert _select(SCORES, exclude={1, 2}, num_negatives=3) == ([3, 4, 0], [0.8, 0.6, 0.5])


def test_range_window_counted_after_exclusion() -> None:
    # After excluding 1: [3, 2, 4, 0]; ranks [1, 3) -> [2, 4].
    # (Counting before exclusion would give [3, 2].)
    assert _select(SCORES, exclude={1}, range_min=1, range_max=3, num_negatives=5)[0] == [2, 4]


def test_range_min_only() -> None:
    # After excluding 3: [1, 2, 4, 0]; skip two -> [4, 0].
    assert _select(SCORES, exclude={3}, range_min=2, num_negatives=3)[0] == [4, 0]


def test_range_max_only() -> None:
    assert _select(SCORES, range_max=2, num_negatives=3)[0] == [1, 3]


def test_window_applies_before_filters() -> None:
    # Window drops rank 0 (doc 1) -> [3, 2, 4, 0]; max_score .75 drops doc 3 -> [2, 4, 0].
    # (sentence-transformers filters first, then skips range_min survivors: it would give [4, 0].)
    assert _select(SCORES, range_min=1, max_score=0.75, num_negatives=2)[0] == [2, 4]


# --- filters -------------------------------------------------------------------------------------


def test_absolute_margin() -> None:
    # pos .85, margin .1 -> keep score <= .75: [2 (.7), 4 (.6), 0 (.5)].
    assert _select(SCORES, positive_score=0.85, absolute_margin=0.1, num_negatives=2) == (
        [2, 4],
        [0.7, 0.6],
    )


def test_absolute_margin_keeps_equal_score() -> None:
    # Dyadic values are exact: threshold 1.0 - .25 = .75; .875 dropped, .75 kept.
    got = _select([0.75, 0.875, 0.5], positive_score=1.0, absolute_margin=0.25, num_negatives=3)
    assert got == ([0, 2], [0.75, 0.5])


def test_absolute_margin_zero_drops_harder_than_positive() -> None:
    got = _select([0.5, 0.75, 0.25], positive_score=0.5, absolute_margin=0.0, num_negatives=3)
    assert got == ([0, 2], [0.5, 0.25])


def test_relative_margin_positive_pos() -> None:
    # pos .8, r .2 -> keep score <= .64: [4 (.6), 0 (.5)].
    assert _select(SCORES, positive_score=0.8, relative_margin=0.2, num_negatives=3)[0] == [4, 0]


def test_relative_margin_negative_pos_is_sign_safe() -> None:
    # pos -.2, r .5 -> keep score <= -.2 - .1 = -.3: [3, 4].
    # sentence-transformers' pos * (1 - r) = -.1 would also keep -.15 and -.25, i.e. candidates
    # MORE similar than the positive.
    scores = [-0.05, -0.15, -0.25, -0.35, -0.45]
    got = _select(scores, positive_score=-0.2, relative_margin=0.5, num_negatives=5)
    assert got == ([3, 4], [-0.35, -0.45])


def test_relative_margin_zero_pos() -> None:
    # pos 0 -> threshold 0 whatever r is; the 0.0 score survives, positives do not.
    got = _select([0.25, 0.0, -0.5], positive_score=0.0, relative_margin=0.5, num_negatives=3)
    assert got == ([1, 2], [0.0, -0.5])


def test_max_and_min_score() -> None:
    # keep .55 <= score <= .75: [2 (.7), 4 (.6)].
    assert _select(SCORES, max_score=0.75, min_score=0.55, num_negatives=5)[0] == [2, 4]


def test_max_and_min_score_bounds_inclusive() -> None:
    got = _select([0.75, 0.5, 0.25, 0.125], max_score=0.5, min_score=0.25, num_negatives=5)
    assert got == ([1, 2], [0.5, 0.25])


def test_filters_compare_float32_scores_exactly() -> None:
    # float32(0.6) = 0.60000002..., which is > 0.6: the filter judges the score it reports.
    scores = np.array([0.6, 0.5], dtype=np.float32)
    params = MiningParams(max_score=0.6, num_negatives=2)
    assert select_negatives(scores, 1.0, set(), params, np.random.default_rng(0)) == ([1], [0.5])


def test_filters_combine() -> None:
    # max .85 drops 1; abs margin with pos .9 keeps <= .8 (all left); min .55 drops 0;
    # relative .2 with pos .9 keeps <= .72: drops 3 -> [2, 4].
    got = _select(
        SCORES,
        positive_score=0.9,
        max_score=0.85,
        min_score=0.55,
        absolute_margin=0.1,
        relative_margin=0.2,
        num_negatives=5,
    )
    assert got[0] == [2, 4]


# --- ties, fewer survivors ----------------------------------------------------------------------


def test_ties_broken_by_lower_index() -> None:
    scores = [0.5, 0.7, 0.7, 0.9, 0.7]  # sorted: 3, 1, 2, 4, 0
    assert _select(scores, num_negatives=3)[0] == [3, 1, 2]
    assert _select(scores, range_min=2, num_negatives=3)[0] == [2, 4, 0]


def test_fewer_survivors_than_requested_top() -> None:
    assert _select(SCORES, max_score=0.55, num_negatives=3) == ([0], [0.5])


def test_fewer_survivors_than_requested_random() -> None:
    got = _select(SCORES, max_score=0.65, num_negatives=3, sampling="random")
    assert got == ([4, 0], [0.6, 0.5])


def test_no_survivors() -> None:
    assert _select(SCORES, exclude={0, 1, 2, 3, 4}) == ([], [])


def test_rejects_2d_scores() -> None:
    with pytest.raises(ValueError, match="1-D"):
        _select(np.zeros((2, 3)))


# --- random sampling ----------------------------------------------------------------------------

# Ten docs with scores .10 .. 1.00 by index; max_score .75 leaves survivors 0..6 (.10 .. .70).
TEN = np.arange(1, 11) / 10
TEN_SURVIVORS = {0, 1, 2, 3, 4, 5, 6}


def test_random_subset_of_survivors_sorted_and_deterministic() -> None:
    for seed in range(20):
        idx, scores = _select(TEN, seed=seed, max_score=0.75, num_negatives=3, sampling="random")
        assert len(idx) == 3 and len(set(idx)) == 3
        assert set(idx) <= TEN_SURVIVORS
        assert scores == sorted(scores, reverse=True)
        assert scores == [TEN[i] for i in idx]
        again = _select(TEN, seed=seed, max_score=0.75, num_negatives=3, sampling="random")
        assert again == (idx, scores)


def test_random_differs_from_top_and_across_seeds() -> None:
    top = _select(TEN, max_score=0.75, num_negatives=3)[0]
    assert top == [6, 5, 4]
    draws = {tuple(_select(TEN, seed=s, max_score=0.75, num_negatives=3, sampling="random")[0]) for s in range(20)}
    assert len(draws) > 5  # 35 possible subsets; a "random" that returns top gives 1
    assert draws != {tuple(top)}


def test_random_is_uniform_over_survivors() -> None:
    counts = dict.fromkeys(TEN_SURVIVORS, 0)
    for seed in range(3500):
        (i,), _ = _select(TEN, seed=seed, max_score=0.75, num_negatives=1, sampling="random")
        counts[i] += 1
    # Expected 500 each; binomial sd ~ 20.
    assert all(400 < c < 600 for c in counts.values()), counts


# --- mine: embeddings ---------------------------------------------------------------------------

# Queries are the unit axes, so query j's score for a doc is exactly the doc's j-th component.
QUERIES = np.eye(3, dtype=np.float32)
CORPUS = np.array(
    [
        [1.0, 0.0, 0.0],  # d0
        [0.8, 0.6, 0.0],  # d1
        [0.6, 0.0, 0.8],  # d2
        [0.0, 0.8, 0.6],  # d3
        [0.0, 0.6, 0.8],  # d4
        [0.0, 0.0, 1.0],  # d5
    ],
    dtype=np.float32,
)
# Row 0: positive d0, scores [1, .8, .6, 0, 0, 0]
# Row 1: positive d3, scores [0, .6, 0, .8, .6, 0]
# Row 2: positive d5, scores [0, 0, .8, .6, .8, 1]
POSITIVES = CORPUS[[0, 3, 5]]
EXCLUDE = [{0}, {3}, {5}]
F = np.float32  # expected scores are float32 values, as the embeddings are


class VectorTable:
    """A real Embedder whose vectors are given: text "q3" is queries[3], "d5" is docs[5], "p1" positives[1]."""

    model_id = "vector-table"

    def __init__(self, queries: np.ndarray, docs: np.ndarray, positives: np.ndarray | None = None) -> None:
        self.table = {"q": queries, "d": docs, "p": positives}

    def embed(self, texts: Sequence[str], *, role: str, progress: object = None) -> np.ndarray:
        dim = self.table["q"].shape[1] if self.table["q"].ndim == 2 else len(self.table["q"])
        if not texts:
            return np.zeros((0, dim), np.float32)
        if role == "query" and self.table["q"].ndim == 1:
            return self.table["q"]  # a broken embedder (1-D), for the shape check
        return np.stack([self.table[t[0]][int(t[1:])] for t in texts]).astype(np.float32)


def mine(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    positives: list[int] | np.ndarray,
    exclude: list[set[int]],
    params: MiningParams,
) -> list[MinedQuery]:
    """The real engine on given vectors: query i's positive is corpus doc positives[i] when an int,
    else the vector positives[i] (a positive that is no document: embedded, never searched)."""
    n = len(query_emb) if query_emb.ndim == 2 else 1
    docs = [f"d{j}" for j in range(len(corpus_emb))]
    if isinstance(positives, np.ndarray) and positives.ndim == 2:
        embedder = VectorTable(query_emb, corpus_emb, positives)
        corpus, groups = docs + [f"p{i}" for i in range(len(positives))], [[len(docs) + i] for i in range(n)]
    else:
        embedder = VectorTable(query_emb, corpus_emb)
        corpus, groups = docs, [[int(p)] for p in positives]
    result = run_mining(
        [f"q{i}" for i in range(n)], groups, corpus, embedder, params, searchable=len(docs), exclude_extra=exclude
    )
    return result.mined


def _mine(**kwargs: object) -> list[MinedQuery]:
    return mine(QUERIES, CORPUS, [0, 3, 5], [set()] * 3, MiningParams(**kwargs))  # type: ignore[arg-type]


def _negatives(rows: list[MinedQuery]) -> list[list[int]]:
    return [r.negatives for r in rows]


def test_mine_top() -> None:
    rows = _mine(num_negatives=2)
    assert _negatives(rows) == [[1, 2], [1, 4], [2, 4]]
    assert [r.negative_scores for r in rows] == [
        [float(F(0.8)), float(F(0.6))],
        [float(F(0.6)), float(F(0.6))],
        [float(F(0.8)), float(F(0.8))],
    ]
    assert [r.positive_scores for r in rows] == [[1.0], [float(F(0.8))], [1.0]]


def test_mine_relative_margin_uses_positive_embedding() -> None:
    # Thresholds: row 0 1*.7 = .7, row 1 .8*.7 = .56, row 2 .7.
    rows = _mine(num_negatives=2, relative_margin=0.3)
    assert _negatives(rows) == [[2, 3], [0, 2], [3, 0]]
    assert [r.negative_scores for r in rows] == [[float(F(0.6)), 0.0], [0.0, 0.0], [float(F(0.6)), 0.0]]


def test_mine_range_max_with_ties_at_the_cut() -> None:
    # Row 1 raw order: 3 (.8), then 1 and 4 tied at .6; K = 1 + 1 = 2 must keep doc 1.
    assert _negatives(_mine(num_negatives=3, range_max=1)) == [[1], [1], [2]]
    assert _negatives(_mine(num_negatives=3, range_max=2)) == [[1, 2], [1, 4], [2, 4]]


def test_mine_ties_at_the_cut_in_a_large_tie_block() -> None:
    # 200 docs all scoring .5 except doc 150 (score 1); the 3 best by (score, -index) are 150, 0, 1.
    corpus = np.tile(np.array([[0.5, np.sqrt(0.75)]], dtype=np.float32), (200, 1))
    corpus[150] = [1.0, 0.0]
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    rows = mine(query, corpus, query, [set()], MiningParams(num_negatives=5, range_max=3))
    assert rows[0].negatives == [150, 0, 1]
    rows = mine(query, corpus, query, [{0}], MiningParams(num_negatives=5, range_max=3))
    assert rows[0].negatives == [150, 1, 2]


def test_mine_chunking_identical_on_hand_built() -> None:
    for sampling in ("top", "random"):
        results = [_mine(num_negatives=2, sampling=sampling, chunk_size=c, seed=3) for c in (1, 2, 3, 1024)]
        assert all(r == results[0] for r in results)


def test_mine_random_per_row_seed_and_survivors() -> None:
    rows = _mine(num_negatives=2, sampling="random", seed=7)
    survivors = [{1, 2, 3, 4, 5}, {0, 1, 2, 4, 5}, {0, 1, 2, 3, 4}]
    for row, allowed in zip(rows, survivors, strict=True):
        assert len(row.negatives) == 2 and set(row.negatives) <= allowed
        assert row.negative_scores == sorted(row.negative_scores, reverse=True)
    # Row i draws from default_rng([seed, i]) alone, whatever else is in the batch.
    params = MiningParams(num_negatives=2, sampling="random", seed=7)
    shifted = mine(QUERIES[[0, 0, 2]], CORPUS, [0, 0, 5], [set(), set(), set()], params)
    assert shifted[2] == rows[2]
    row2_scores = np.array([0, 0, 0.8, 0.6, 0.8, 1], dtype=np.float32)
    expected = select_negatives(row2_scores, 1.0, {5}, params, np.random.default_rng([7, 2]))
    assert (rows[2].negatives, rows[2].negative_scores) == expected


def test_mine_chunking_and_top_k_match_full_sort_on_random_data() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    c = rng.normal(size=(101, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    pos_idx = rng.integers(0, 101, size=37)
    exclude = [{int(p), int(p + 1) % 101} for p in pos_idx]
    base = dict(num_negatives=4, range_min=2, range_max=15, absolute_margin=0.05)
    for sampling in ("top", "random"):
        runs = [
            mine(q, c, c[pos_idx], exclude, MiningParams(**base, sampling=sampling, chunk_size=cs))
            for cs in (1, 5, 1024)
        ]
        for run in runs[1:]:
            assert _negatives(run) == _negatives(runs[0])
            for a, b in zip(run, runs[0], strict=True):
                np.testing.assert_allclose(a.negative_scores, b.negative_scores, rtol=1e-6)
        # Top-K path agrees with select_negatives on the full row.
        params = MiningParams(**base, sampling=sampling)
        for i, row in enumerate(runs[0]):
            full = select_negatives(
                q[i] @ c.T,
                row.positive_scores[0],
                exclude[i],
                params,
                np.random.default_rng([params.seed, i]),
            )
            assert full[0] == row.negatives


def test_mine_empty_corpus_and_no_queries() -> None:
    empty = np.zeros((0, 3), dtype=np.float32)
    rows = mine(QUERIES, empty, POSITIVES, [set()] * 3, MiningParams())
    assert [r.negatives for r in rows] == [[], [], []]
    assert mine(empty, CORPUS, empty, [], MiningParams()) == []


def test_mine_validates_shapes() -> None:
    """The engine checks what it is given and what the embedder returns, with one clear message."""
    texts = ["d0", "d1", "d2", "d3", "d4", "d5"]
    queries = ["q0", "q1", "q2"]
    with pytest.raises(ValueError, match="len\\(positives\\)"):
        run_mining(queries, [[0], [3]], texts, VectorTable(QUERIES, CORPUS), MiningParams())
    with pytest.raises(ValueError, match="document vectors of shape \\(6, 2\\).*dim 3"):
        run_mining(queries, [[0], [3], [5]], texts, VectorTable(QUERIES, CORPUS[:, :2]), MiningParams())
    with pytest.raises(ValueError, match="len\\(exclude_extra\\)"):
        run_mining(
            queries, [[0], [3], [5]], texts, VectorTable(QUERIES, CORPUS), MiningParams(), exclude_extra=EXCLUDE[:2]
        )
    with pytest.raises(ValueError, match="2-D"):
        run_mining(queries, [[0], [3], [5]], texts, VectorTable(QUERIES[0], CORPUS), MiningParams())


# --- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"range_min": -1}, "range_min must be >= 0"),
        ({"range_min": 3, "range_max": 3}, "range_max must be > range_min"),
        ({"range_max": 0}, "range_max must be > range_min"),
        ({"relative_margin": 1.0}, "relative_margin"),
        ({"relative_margin": -0.1}, "relative_margin"),
        ({"absolute_margin": -0.01}, "absolute_margin"),
        ({"min_score": 0.6, "max_score": 0.5}, "min_score must be <= max_score"),
        ({"sampling": "hardest"}, "sampling"),
        ({"seed": -1}, "seed"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_params_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiningParams(**kwargs)  # type: ignore[arg-type]


def test_params_edge_values_accepted() -> None:
    MiningParams(
        range_min=2,
        range_max=3,
        relative_margin=0.0,
        absolute_margin=0.0,
        min_score=0.5,
        max_score=0.5,
        chunk_size=1,
    )


def test_batched_windows_equal_per_row_window() -> None:
    """`windows` (all rows at once, the engine's path) gives what `window` gives row by row."""
    from synth.mining.select import window, windows

    rng = np.random.default_rng(5)
    n, k = 40, 30
    idx = np.stack([rng.permutation(90)[:k] for _ in range(n)]).astype(np.int64)
    idx[::7, -4:] = -1  # short-corpus padding
    scores = -np.sort(-rng.random((n, k)), axis=1).astype(np.float32)
    for sizes in ([0, 1, 3], [2], [0, 70]):  # 70 > the batched limit: the per-row fallback
        exclude = [set(rng.choice(90, size=sizes[i % len(sizes)], replace=False).tolist()) for i in range(n)]
        for params in (
            MiningParams(range_min=2, range_max=9),
            MiningParams(),
            MiningParams(st_compatible=True, range_max=5, range_min=1),
            MiningParams(st_compatible=True, relative_margin=0.1),
        ):
            got = windows(idx, scores, exclude, params, max_positives=3)
            for i in range(n):
                want = window(idx[i], scores[i], exclude[i], params, max_positives=3)
                np.testing.assert_array_equal(got[i][0], want[0])
                np.testing.assert_array_equal(got[i][1], want[1])
                assert got[i][2] == want[2]
