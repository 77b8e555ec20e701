"""Hard-negative mining core: pure numpy, no model code, so it can be tested on literal scores.

Semantics, per query (one row):

1. Candidates are every corpus document, sorted by score descending; ties go to the lower
   corpus index first, so results never depend on sort internals or chunking.
2. Excluded indices (the row's own positive(s), by id and by exact text) are removed.
3. The rank window ``[range_min, range_max)`` is applied to what is left: ranks are counted
   after exclusion, before any score filter.
4. Filters drop candidates: ``score > max_score``, ``score < min_score``,
   ``score > pos - absolute_margin``, ``score > pos - |pos| * relative_margin``.
5. Sampling: ``top`` keeps the first ``num_negatives`` survivors; ``random`` draws
   ``num_negatives`` survivors uniformly without replacement (rng of row i is
   ``np.random.default_rng([seed, i])``) and returns them in score order.
   Fewer survivors than ``num_negatives`` returns what is there; the caller decides drops.

Compared with sentence-transformers ``util.mine_hard_negatives``:

- Same: absolute margin (drop ``score > pos - m``); relative margin for ``pos >= 0`` (drop
  ``score > pos * (1 - r)``); min/max score; min over several positives; top/random sampling
  returned in score order.
- Different: ST's relative margin is ``pos * (1 - r)``, which *loosens* the bound when ``pos < 0``;
  ours uses ``pos - |pos| * r`` so the margin always pushes negatives below the positive.
- Different: ST filters first and then slices ``range_min``, so it skips the top ``range_min``
  *surviving* candidates, and its ``range_max`` pool is taken before positives are masked (with a
  ``max_positives`` slack). Here the window is fixed ranks after exclusion, before filters, so
  ``range_min`` means the same thing whatever filters are on.
- Different: ST's ``range_max=None`` becomes a small default; ours means the whole corpus.
  ST's random sampling uses the global ``random`` state and may return filtered slots; ours is
  seeded per row and only draws survivors. Ties are ordered explicitly here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


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
    chunk_size: int = 1024

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


@dataclass
class MinedRow:
    """Negatives of one row, with scores kept for margin statistics and distillation labels."""

    negatives: list[int]  # corpus indices, ordered by score descending
    scores: list[float]  # their scores, same order
    positive_score: float  # score of the row's positive (callers with several pass the min)


def _sorted_order(idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions that sort by score descending, then corpus index ascending (deterministic ties)."""
    return np.lexsort((idx, -scores))


def _select_sorted(
    idx: np.ndarray,
    scores: np.ndarray,
    positive_score: float,
    exclude: set[int],
    params: MiningParams,
    rng: np.random.Generator,
) -> tuple[list[int], list[float]]:
    """Steps 2-5 of the module semantics on candidates already in final sort order."""
    if exclude:
        excluded = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
        keep = ~np.isin(idx, excluded)
        idx, scores = idx[keep], scores[keep]
    idx = idx[params.range_min : params.range_max]
    # float64 so thresholds are not rounded to float32 before comparing.
    scores = scores[params.range_min : params.range_max].astype(np.float64)

    mask = np.ones(len(scores), dtype=bool)
    if params.max_score is not None:
        mask &= scores <= params.max_score
    if params.min_score is not None:
        mask &= scores >= params.min_score
    if params.absolute_margin is not None:
        mask &= scores <= positive_score - params.absolute_margin
    if params.relative_margin is not None:
        mask &= scores <= positive_score - abs(positive_score) * params.relative_margin
    idx, scores = idx[mask], scores[mask]

    n = params.num_negatives
    if params.sampling == "top" or len(idx) <= n:
        idx, scores = idx[:n], scores[:n]
    else:
        # Sorting the drawn positions keeps the score-descending order of the survivors.
        picked = np.sort(rng.choice(len(idx), size=n, replace=False))
        idx, scores = idx[picked], scores[picked]
    return [int(i) for i in idx], [float(s) for s in scores]


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
    return _select_sorted(idx[order], scores[order], positive_score, exclude, params, rng)


def _top_k(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (index, score) of one row in final sort order, without sorting the whole row.

    Everything tied with the k-th best score is kept before truncating, so which of several
    equal scores makes the cut is decided by corpus index, never by argpartition internals.
    """
    m = len(row)
    if k < m:
        kth = row[np.argpartition(row, m - k)[m - k]]  # value of the k-th largest score
        idx = np.flatnonzero(row >= kth)
    else:
        idx = np.arange(m)
    idx = idx[_sorted_order(idx, row[idx])][:k]
    return idx, row[idx]


def mine(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    positive_emb: np.ndarray,
    exclude: Sequence[set[int]],
    params: MiningParams,
) -> list[MinedRow]:
    """All queries. Embeddings are L2-normalised float32, so score = dot product (cosine).

    positive_emb[i] embeds row i's positive; positive_score = dot(query_emb[i], positive_emb[i]).
    exclude[i] holds corpus indices that must never be a negative for row i (computed by the
    caller). Scores are computed `chunk_size` queries at a time to bound memory; per query only
    the top K = (range_max or len(corpus)) + len(exclude[i]) candidates are sorted, which is
    enough because at most len(exclude[i]) of them can be removed before the window.
    """
    if query_emb.ndim != 2 or corpus_emb.ndim != 2 or positive_emb.ndim != 2:
        raise ValueError("query_emb, corpus_emb and positive_emb must be 2-D arrays")
    n, dim = query_emb.shape
    if positive_emb.shape != (n, dim):
        raise ValueError(f"positive_emb shape {positive_emb.shape} != query_emb shape {(n, dim)}")
    if corpus_emb.shape[1] != dim:
        raise ValueError(f"corpus_emb dim {corpus_emb.shape[1]} != query_emb dim {dim}")
    if len(exclude) != n:
        raise ValueError(f"len(exclude) = {len(exclude)} != number of queries {n}")

    m = corpus_emb.shape[0]
    window = params.range_max if params.range_max is not None else m
    positive_scores = np.einsum("ij,ij->i", query_emb, positive_emb)
    unused_rng = np.random.default_rng(params.seed)  # "top" never draws
    rows: list[MinedRow] = []
    for start in range(0, n, params.chunk_size):
        chunk = query_emb[start : start + params.chunk_size] @ corpus_emb.T
        for offset, row in enumerate(chunk):
            i = start + offset
            k = min(m, window + len(exclude[i]))
            idx, scores = _top_k(row, k)
            rng = unused_rng
            if params.sampling == "random":  # per-row seed: independent of chunk_size
                rng = np.random.default_rng([params.seed, i])
            pos = float(positive_scores[i])
            negatives, neg_scores = _select_sorted(idx, scores, pos, exclude[i], params, rng)
            rows.append(MinedRow(negatives=negatives, scores=neg_scores, positive_score=pos))
    return rows
