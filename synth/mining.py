"""Hard-negative mining core: pure numpy, no model code, so it can be tested on literal scores.

Semantics, per query (one row), default (``st_compatible=False``):

1. Candidates are every corpus document, sorted by score descending; ties go to the lower
   corpus index first, so results never depend on sort internals or chunking.
2. Excluded indices (every positive of the query, by id and by exact text) are removed.
3. The rank window ``[range_min, range_max)`` is applied to what is left: ranks are counted
   after exclusion, before any score filter. ``range_max=None`` is the whole corpus.
4. (Callers may now drop guarded candidates and rescore the window; see synth/mine_engine.py.)
5. Filters drop candidates: ``score > max_score``, ``score < min_score``,
   ``score > pos - absolute_margin``, ``score > pos - |pos| * relative_margin``, where ``pos`` is
   the *lowest* score among the query's positives. Each filter's removals are counted.
6. Sampling: ``top`` keeps the first ``num_negatives`` survivors; ``random`` draws
   ``num_negatives`` survivors uniformly without replacement (rng of row i is
   ``np.random.default_rng([seed, i])``) and returns them in score order.
   Fewer survivors than ``num_negatives`` returns what is there; the caller decides drops.

``st_compatible=True`` reproduces sentence-transformers ``util.mine_hard_negatives``:
the pool is the top ``range_max + max_positives`` candidates *before* exclusion; exclusion and
filters remove from it; then survivors ``[range_min, range_max)`` are kept (ST skips the best
``range_min`` *survivors*), and ``range_max=None`` becomes ST's default
``range_min + num_negatives * (10 if a margin/max_score is set else 1) + max_positives``.

Same in both modes (and in ST >= 5 since its #3819): absolute margin, sign-safe relative margin
``pos - |pos| * r``, min/max score, minimum over several positives, results in score order.
Different from ST in both modes: ST's random sampling uses the global ``random`` state and may
return filtered slots; ours is seeded per row and only draws survivors. Ties are ordered here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from synth.vector_store import Vectors, top_k

FILTERS = ("max_score", "min_score", "absolute_margin", "relative_margin")


@dataclass(frozen=True)
class MiningParams:
    """How negatives are chosen; validated up front so a bad recipe fails before any embedding."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 0
    chunk_size: int = 1024  # queries scored at once
    corpus_chunk: int = 8192  # corpus rows scored at once
    st_compatible: bool = False
    search: Literal["exact", "faiss"] = "exact"  # faiss: approximate candidates, exact scores
    nprobe: int = 16  # faiss IVF clusters visited per query

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ValueError(f"range_min must be >= 0, got {self.range_min}")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(
                f"range_max must be > range_min when set, got range_max={self.range_max}, range_min={self.range_min}"
            )
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ValueError(f"absolute_margin must be >= 0, got {self.absolute_margin}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(
                f"min_score must be <= max_score, got min_score={self.min_score}, max_score={self.max_score}"
            )
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {self.seed}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.search not in ("exact", "faiss"):
            raise ValueError(f"search must be 'exact' or 'faiss', got {self.search!r}")
        if self.nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {self.nprobe}")
        if self.corpus_chunk < 1:
            raise ValueError(f"corpus_chunk must be >= 1, got {self.corpus_chunk}")

    def st_range_max(self, max_positives: int, rescoring: bool = False) -> int:
        """sentence-transformers' range_max when none is given (its filters need a deeper pool)."""
        if self.range_max is not None:
            return self.range_max
        deep = (
            self.absolute_margin is not None
            or self.relative_margin is not None
            or self.max_score is not None
            or (rescoring and self.min_score is not None)
        )
        return self.range_min + self.num_negatives * (10 if deep else 1) + max_positives

    def pool_size(self, corpus_size: int, n_exclude: int, max_positives: int = 1) -> int:
        """How many top candidates a row needs from the search so every rule sees what it must."""
        if self.st_compatible:
            return min(corpus_size, self.st_range_max(max_positives) + max_positives)
        window = self.range_max if self.range_max is not None else corpus_size
        return min(corpus_size, window + n_exclude)


@dataclass
class MinedRow:
    """Negatives of one row, with scores kept for margin statistics and distillation labels."""

    negatives: list[int]  # corpus indices, ordered by score descending
    scores: list[float]  # their scores, same order
    positive_score: float  # score of the row's positive (several positives: the lowest)
    removed: dict[str, int] = field(default_factory=dict, compare=False)  # candidates each rule removed


def _sorted_order(idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions that sort by score descending, then corpus index ascending (deterministic ties)."""
    return np.lexsort((idx, -scores))


def window(
    idx: np.ndarray, scores: np.ndarray, exclude: set[int], params: MiningParams, max_positives: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """Steps 2-3 on candidates in final sort order: (idx, scores, how many exclusion removed)."""
    pool, rank = _cuts(params, max_positives)
    idx, scores = idx[pool], scores[pool]
    keep = idx >= 0  # -1 pads a short corpus
    if exclude:
        keep &= ~np.isin(idx, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
    removed = int(len(idx) - keep.sum())
    return idx[keep][rank], scores[keep][rank], removed


def _cuts(params: MiningParams, max_positives: int) -> tuple[slice, slice]:
    """(candidate pool before exclusion, rank window after it): the two window semantics.

    sentence-transformers cuts its pool first and applies range_min/range_max inside it; synth's
    default applies the rank window to what survives exclusion.
    """
    if params.st_compatible:
        return slice(params.st_range_max(max_positives) + max_positives), slice(None)
    return slice(None), slice(params.range_min, params.range_max)


def windows(
    idx: np.ndarray, scores: np.ndarray, exclude: Sequence[set[int]], params: MiningParams, max_positives: int = 1
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """`window` for every row of (n, K) sorted candidates at once: the same result, row by row.

    Why: one np.isin per row costs more than the rest of mining after the search; here the
    exclusion test is one comparison of the (n, K) block against each row's padded exclude list.
    """
    width = max((len(e) for e in exclude), default=0)
    if width > 64:  # one pass per excluded column: past a few dozen, per-row isin is cheaper
        return [window(idx[i], scores[i], exclude[i], params, max_positives) for i in range(len(idx))]
    pool, rank = _cuts(params, max_positives)
    idx, scores = idx[:, pool], scores[:, pool]
    ex = np.full((len(idx), max(width, 1)), -1, dtype=np.int64)  # -1 pads: dropped below anyway
    for i, e in enumerate(exclude):
        ex[i, : len(e)] = np.fromiter(e, dtype=np.int64, count=len(e))
    keep = idx >= 0  # -1 pads a short corpus
    for j in range(ex.shape[1]):
        keep &= idx != ex[:, j : j + 1]
    removed = idx.shape[1] - np.count_nonzero(keep, axis=1)
    return [(idx[i][keep[i]][rank], scores[i][keep[i]][rank], int(removed[i])) for i in range(len(idx))]


def finish(
    idx: np.ndarray,
    scores: np.ndarray,
    positive_score: float,
    params: MiningParams,
    rng: np.random.Generator | None,
    removed: dict[str, int] | None = None,
    max_positives: int = 1,
) -> MinedRow:
    """Steps 5-6 on a window in final sort order; counts what each filter removed into `removed`.

    `rng` is only drawn from with ``sampling="random"`` (None is fine for "top": building a
    generator per row costs more than the rest of this function).
    """
    removed = dict(removed or {})
    # float64 so thresholds are not rounded to float32 before comparing.
    scores = np.asarray(scores).astype(np.float64)
    bounds: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if params.max_score is not None:
        bounds["max_score"] = lambda s: s <= params.max_score
    if params.min_score is not None:
        bounds["min_score"] = lambda s: s >= params.min_score
    if params.absolute_margin is not None:
        bounds["absolute_margin"] = lambda s: s <= positive_score - params.absolute_margin
    if params.relative_margin is not None:
        bounds["relative_margin"] = lambda s: s <= positive_score - abs(positive_score) * params.relative_margin
    mask = np.ones(len(scores), dtype=bool)
    for name, keep in bounds.items():
        new = mask & keep(scores)
        removed[name] = removed.get(name, 0) + int(mask.sum() - new.sum())
        mask = new
    idx, scores = idx[mask], scores[mask]
    if params.st_compatible:
        stop = params.st_range_max(max_positives)
        idx, scores = idx[params.range_min : stop], scores[params.range_min : stop]

    n = params.num_negatives
    if params.sampling == "top" or len(idx) <= n:
        idx, scores = idx[:n], scores[:n]
    else:
        if rng is None:
            raise ValueError("sampling='random' needs a generator (row_rng)")
        # Sorting the drawn positions keeps the score-descending order of the survivors.
        picked = np.sort(rng.choice(len(idx), size=n, replace=False))
        idx, scores = idx[picked], scores[picked]
    return MinedRow([int(i) for i in idx], [float(s) for s in scores], float(positive_score), removed)


def row_rng(params: MiningParams, i: int) -> np.random.Generator | None:
    """Row i's generator, independent of batching (chunk sizes never change a result); None for "top"."""
    return np.random.default_rng([params.seed, i]) if params.sampling == "random" else None


def select_negatives(
    scores: np.ndarray,
    positive_score: float,
    exclude: set[int],
    params: MiningParams,
    rng: np.random.Generator,
) -> tuple[list[int], list[float]]:
    """One query: `scores` is its similarity to every corpus doc (1-D).

    Applies exclusion, rank window, score/margin filters and sampling, as in the module docstring.
    Returns (corpus indices, scores), score descending.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    idx = np.arange(len(scores))
    order = _sorted_order(idx, scores)
    w_idx, w_scores, _ = window(idx[order], scores[order], exclude, params)
    row = finish(w_idx, w_scores, positive_score, params, rng)
    return row.negatives, row.scores


def search_windows(
    query_emb: np.ndarray,
    corpus: Vectors,
    exclude: Sequence[set[int]],
    params: MiningParams,
    max_positives: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Steps 1-3 for every query: per row (window idx, window scores, excluded count).

    Only the top K candidates of each row are searched for, K = MiningParams.pool_size, which is
    enough because at most len(exclude[i]) of them can be removed before the window.
    """
    m = len(corpus)
    k = max((params.pool_size(m, len(e), max_positives) for e in exclude), default=0)
    # Keep the merged (query chunk x K) lists within ~32M entries when K is the whole corpus.
    query_chunk = max(1, min(params.chunk_size, (32 << 20) // max(k, 1)))
    idx, scores = top_k(
        query_emb, corpus, k, query_chunk=query_chunk, corpus_chunk=params.corpus_chunk, progress=progress
    )
    return windows(idx, scores, exclude, params, max_positives)


def mine(
    query_emb: np.ndarray,
    corpus_emb: Vectors,
    positive_emb: np.ndarray,
    exclude: Sequence[set[int]],
    params: MiningParams,
) -> list[MinedRow]:
    """All queries, one positive each. Embeddings are L2-normalised float32, so score = dot product.

    positive_emb[i] embeds row i's positive; positive_score = dot(query_emb[i], positive_emb[i]).
    exclude[i] holds corpus indices that must never be a negative for row i. For several
    positives per query, use `mine_with_scores` with the lowest positive score per row.
    """
    if query_emb.ndim != 2 or positive_emb.ndim != 2:
        raise ValueError("query_emb, corpus_emb and positive_emb must be 2-D arrays")
    if isinstance(corpus_emb, np.ndarray) and corpus_emb.ndim != 2:
        raise ValueError("query_emb, corpus_emb and positive_emb must be 2-D arrays")
    n, dim = query_emb.shape
    if positive_emb.shape != (n, dim):
        raise ValueError(f"positive_emb shape {positive_emb.shape} != query_emb shape {(n, dim)}")
    positive_scores = np.einsum("ij,ij->i", query_emb, positive_emb)
    return mine_with_scores(query_emb, corpus_emb, positive_scores, exclude, params)


def mine_with_scores(
    query_emb: np.ndarray,
    corpus_emb: Vectors,
    positive_scores: np.ndarray,
    exclude: Sequence[set[int]],
    params: MiningParams,
    max_positives: int = 1,
) -> list[MinedRow]:
    """All queries with their (lowest) positive score given directly."""
    n, dim = query_emb.shape
    corpus_dim = corpus_emb.shape[1]
    if len(corpus_emb) and corpus_dim != dim:
        raise ValueError(f"corpus_emb dim {corpus_dim} != query_emb dim {dim}")
    if len(exclude) != n:
        raise ValueError(f"len(exclude) = {len(exclude)} != number of queries {n}")
    windows = search_windows(query_emb, corpus_emb, exclude, params, max_positives)
    rows = []
    for i, (idx, scores, excluded) in enumerate(windows):
        removed = {"positive": excluded}
        rows.append(finish(idx, scores, float(positive_scores[i]), params, row_rng(params, i), removed, max_positives))
    return rows


def removal_totals(rows: Sequence[MinedRow]) -> dict[str, int]:
    """Sum of each rule's removed-candidate counts over rows (for reports and the card)."""
    totals: dict[str, int] = {}
    for r in rows:
        for name, count in r.removed.items():
            totals[name] = totals.get(name, 0) + count
    return totals
