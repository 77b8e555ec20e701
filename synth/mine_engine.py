"""Mining on texts: embed to disk, search, guard against false negatives, rescore, select, teach.

Shared by the recipe step (synth/steps/mine.py) and the importable `mine_dataset` /
`synth mine` (synth/mine_api.py). Inputs are already grouped: one entry per unique query with
the corpus indices of all its positives, so identical queries share their positives (none of them
can be another copy's negative) and margins use the lowest positive score.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synth.embedders import Embedder
from synth.mining import MiningParams, finish, removal_totals, row_rng, search_windows, windows
from synth.rescore import FUSERS, Rescorer
from synth.vector_store import StreamingTopK, VectorFile, embed_to_file, faiss_top_k

STREAM_LIMIT = 32 << 20  # (queries x pool) entries kept while streaming; above it, search afterwards

Advance = Callable[[float], None]
TaskFn = Callable[[str, int], AbstractContextManager[Advance]]


@dataclass(frozen=True)
class Guards:
    """False-negative guards applied to each window before margins (None = off)."""

    near_duplicate_ratio: float | None = None  # rapidfuzz ratio (0-100) to any positive
    near_duplicate_cosine: float | None = None  # embedding cosine to any positive


@dataclass
class MinedQuery:
    """One unique query and what was mined for it; scores are the margin-driving scores."""

    query: int  # index into the queries
    positives: list[int]  # corpus indices
    positive_scores: list[float]
    negatives: list[int]
    negative_scores: list[float]
    removed: dict[str, int] = field(default_factory=dict)
    # teacher name -> scores of positives then negatives (soft labels); "embedder" always present
    teachers: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class MiningResult:
    queries: list[str]
    corpus: list[str]
    mined: list[MinedQuery]
    stats: dict[str, object]


def _no_task(description: str, total: int) -> AbstractContextManager[Advance]:
    return nullcontext(lambda n: None)


def _guard_masks(
    windows: list[tuple[np.ndarray, np.ndarray, int]],
    positives: Sequence[list[int]],
    corpus: Sequence[str],
    vectors: _Docs,
    guards: Guards,
) -> list[dict[str, np.ndarray]]:
    """Per row, per guard: which window candidates it removes (in window order)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in windows]
    if guards.near_duplicate_ratio is not None:
        from rapidfuzz import fuzz

        for i, (idx, _, _) in enumerate(windows):
            hits = [
                any(fuzz.ratio(corpus[c], corpus[p]) >= guards.near_duplicate_ratio for p in positives[i]) for c in idx
            ]
            out[i]["near_duplicate_text"] = np.asarray(hits, dtype=bool)
    if guards.near_duplicate_cosine is not None:
        wanted = np.unique(np.concatenate([w[0] for w in windows] + [np.asarray(p) for p in positives]))
        vecs = vectors.take(wanted) if len(wanted) else np.zeros((0, vectors.shape[1]), np.float32)
        row_of = {int(j): r for r, j in enumerate(wanted)}
        for i, (idx, _, _) in enumerate(windows):
            cand = vecs[[row_of[int(c)] for c in idx]] if len(idx) else np.zeros((0, vecs.shape[1]), np.float32)
            pos = vecs[[row_of[p] for p in positives[i]]]
            sims = cand @ pos.T if len(pos) else np.zeros((len(idx), 0))
            out[i]["near_duplicate_cosine"] = (
                (sims >= guards.near_duplicate_cosine).any(axis=1) if sims.size else np.zeros(len(idx), bool)
            )
    return out


def _rescore_windows(
    rescorer: Rescorer,
    queries: Sequence[str],
    corpus: Sequence[str],
    windows: list[tuple[np.ndarray, np.ndarray, int]],
    positives: Sequence[list[int]],
) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], list[np.ndarray]]:
    """One batched call for every (query, candidate) and (query, positive) pair; windows re-sorted."""
    pairs = [(queries[i], corpus[c]) for i, (idx, _, _) in enumerate(windows) for c in idx]
    pairs += [(queries[i], corpus[p]) for i, ps in enumerate(positives) for p in ps]
    scores = rescorer.score(pairs)
    at = 0
    new_windows = []
    for idx, _, excluded in windows:
        s = scores[at : at + len(idx)]
        at += len(idx)
        order = np.lexsort((idx, -s))
        new_windows.append((idx[order], s[order], excluded))
    pos_scores = []
    for ps in positives:
        pos_scores.append(scores[at : at + len(ps)])
        at += len(ps)
    return new_windows, pos_scores


class _Docs:
    """Vectors of every document: searchable ones on disk, positive-only ones (few) in memory."""

    def __init__(self, file: VectorFile, extra: np.ndarray) -> None:
        self.file, self.extra, self.n = file, extra, len(file)
        self.shape = (self.n + len(extra), file.shape[1] if self.n else extra.shape[1] if extra.ndim == 2 else 0)

    def take(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.zeros((len(idx), self.shape[1]), np.float32)
        on_disk = idx < self.n
        if on_disk.any():
            out[on_disk] = self.file.take(idx[on_disk])
        if (~on_disk).any():
            out[~on_disk] = self.extra[idx[~on_disk] - self.n]
        return out


def _search(
    query_emb: np.ndarray,
    corpus: Sequence[str],
    embedder: Embedder,
    path: Path,
    exclude: Sequence[set[int]],
    params: MiningParams,
    max_positives: int,
    task: TaskFn,
) -> tuple[VectorFile, list[tuple[np.ndarray, np.ndarray, int]]]:
    """Embed the corpus to disk and search each block while it is in memory; windows per query.

    When the pools would not fit (no range_max: the whole corpus is the pool) the file is searched
    afterwards in query chunks instead, which bounds memory at the cost of re-reading it.
    """
    m, n = len(corpus), len(query_emb)
    k = max((params.pool_size(m, len(e), max_positives) for e in exclude), default=0)
    stream = StreamingTopK(query_emb, k) if n * k <= STREAM_LIMIT and params.search == "exact" else None
    try:
        with task("embedding corpus + searching" if stream else "embedding corpus", m) as advance:
            vectors = embed_to_file(
                lambda t: embedder.embed(t, role="document"),
                list(corpus),
                path,
                progress=advance,
                on_block=stream.add if stream else None,
            )
    except BaseException:
        if stream is not None:
            stream.close(cancel=True)  # the search worker stops with a failed embedding
        raise
    if stream is not None:
        idx, scores = stream.result()
        return vectors, windows(idx, scores, exclude, params, max_positives)
    if params.search == "faiss":
        with task("searching (faiss)", n) as advance:
            idx, scores = faiss_top_k(query_emb, vectors, k, nprobe=params.nprobe)
            advance(n)
        return vectors, windows(idx, scores, exclude, params, max_positives)
    with task("searching", n) as advance:
        return vectors, search_windows(query_emb, vectors, exclude, params, max_positives, progress=advance)


def run_mining(
    queries: Sequence[str],
    positives: Sequence[list[int]],
    corpus: Sequence[str],
    embedder: Embedder,
    params: MiningParams,
    *,
    searchable: int | None = None,
    exclude_extra: Sequence[set[int]] | None = None,
    guards: Guards | None = None,
    rescorer: Rescorer | None = None,
    teachers: Sequence[Rescorer] = (),
    fuse: str | None = None,
    work_dir: str | Path | None = None,
    task: TaskFn = _no_task,
) -> MiningResult:
    """Mine every query; `positives[i]` are corpus indices (every one is excluded for query i).

    Only `corpus[:searchable]` (default: all) can be negatives; later entries are positives that
    are not documents (a recipe's corpus file need not hold them): embedded, never searched.
    """
    if fuse is not None and fuse not in FUSERS:
        raise ValueError(f"fuse must be one of {', '.join(FUSERS)}, got {fuse!r}")
    n_docs = len(corpus) if searchable is None else searchable
    # Corpus vectors live in a temporary .npy (under work_dir when given), removed at the end.
    tmp = tempfile.TemporaryDirectory(prefix="synth-mine-", dir=work_dir)
    try:
        with task("embedding queries", len(queries)) as advance:
            query_emb = embedder.embed(list(queries), role="query", progress=advance)
        max_positives = max((len(p) for p in positives), default=1)
        exclude = [set(ps) | (set(exclude_extra[i]) if exclude_extra else set()) for i, ps in enumerate(positives)]
        file, windows = _search(
            query_emb, corpus[:n_docs], embedder, Path(tmp.name) / "corpus.npy", exclude, params, max_positives, task
        )
        extra_texts = list(corpus[n_docs:])
        extra = (
            embedder.embed(extra_texts, role="document")
            if extra_texts
            else np.zeros((0, query_emb.shape[1]), np.float32)
        )
        vectors = _Docs(file, extra)
        flat = sorted({p for ps in positives for p in ps})
        pos_vecs = vectors.take(flat) if flat else np.zeros((0, query_emb.shape[1]), np.float32)
        row_of = {p: r for r, p in enumerate(flat)}
        emb_pos = [pos_vecs[[row_of[p] for p in ps]] @ query_emb[i] for i, ps in enumerate(positives)]
        del query_emb

        masks = _guard_masks(windows, positives, corpus, vectors, guards or Guards())
        removed: list[dict[str, int]] = []
        for i, (idx, scores, excluded) in enumerate(windows):
            counts = {"positive": excluded}
            keep = np.ones(len(idx), dtype=bool)
            for name, hit in masks[i].items():
                counts[name] = int((keep & hit).sum())
                keep &= ~hit
            windows[i] = (idx[keep], scores[keep], excluded)
            removed.append(counts)
        emb_window_scores = [dict(zip(w[0].tolist(), w[1].tolist(), strict=True)) for w in windows]
        margin_pos = emb_pos
        if rescorer is not None:
            with task(f"rescoring with {rescorer.name}", len(queries)) as advance:
                windows, margin_pos = _rescore_windows(rescorer, queries, corpus, windows, positives)
                advance(len(queries))

        mined = []
        for i, (idx, scores, _) in enumerate(windows):
            pos = float(np.min(margin_pos[i])) if len(margin_pos[i]) else 0.0
            row = finish(idx, scores, pos, params, row_rng(params, i), removed[i], max_positives)
            teacher = {"embedder": [float(s) for s in emb_pos[i]] + [emb_window_scores[i][j] for j in row.negatives]}
            if rescorer is not None:
                teacher[rescorer.name] = [float(s) for s in margin_pos[i]] + row.scores
            positive_scores = [float(s) for s in margin_pos[i]]
            mined.append(
                MinedQuery(i, list(positives[i]), positive_scores, row.negatives, row.scores, row.removed, teacher)
            )
        _add_teachers(mined, queries, corpus, teachers, fuse)
    finally:
        tmp.cleanup()
    totals = removal_totals(mined)  # type: ignore[arg-type]
    stats = {"queries": len(queries), "corpus_size": n_docs, "removed": totals}
    return MiningResult(list(queries), list(corpus), mined, stats)


def _add_teachers(
    mined: list[MinedQuery],
    queries: Sequence[str],
    corpus: Sequence[str],
    teachers: Sequence[Rescorer],
    fuse: str | None,
) -> None:
    """Soft labels of extra teachers on the final (query, positive/negative) pairs, then fusion."""
    for t in teachers:
        pairs = [(queries[m.query], corpus[d]) for m in mined for d in m.positives + m.negatives]
        scores = t.score(pairs)
        at = 0
        for m in mined:
            n = len(m.positives) + len(m.negatives)
            m.teachers[t.name] = [float(s) for s in scores[at : at + n]]
            at += n
    if fuse is not None and mined:
        names = list(mined[0].teachers)
        fused = FUSERS[fuse]({n: [np.asarray(m.teachers[n]) for m in mined] for n in names})
        for m, f in zip(mined, fused, strict=True):
            m.teachers["ensemble"] = [float(x) for x in f]
