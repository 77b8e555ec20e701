"""Choosing negatives from sorted candidates: pure numpy, no model code, testable on literal scores.

Semantics, per query (one row), default (``st_compatible=False``):

1. Candidates are every corpus document, sorted by score descending; ties go to the lower
   corpus index first, so results never depend on sort internals or chunking.
2. Excluded indices (every positive of the query, by id and by exact text) are removed.
3. The rank window ``[range_min, range_max)`` is applied to what is left: ranks are counted
   after exclusion, before any score filter. ``range_max=None`` is the whole corpus.
4. (Callers may now drop guarded candidates and rescore the window; see synth/mining/engine.py.)
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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from synth.mining.spec import MiningParams


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
) -> tuple[list[int], list[float], dict[str, int]]:
    """Steps 5-6 on a window in final sort order: (negatives, their scores, removal counts).

    `removed` holds the counts so far (exclusion, guards); each filter's removals are added to a
    copy. A NaN `positive_score` (no positive could be scored) fails every margin. `rng` is only drawn from with ``sampling="random"`` (None is fine for "top": building a
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
    return [int(i) for i in idx], [float(s) for s in scores], removed


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
    negatives, neg_scores, _ = finish(w_idx, w_scores, positive_score, params, rng)
    return negatives, neg_scores
