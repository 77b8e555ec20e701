"""Mining on texts: embed to disk, search, guard against false negatives, rescore, select, teach.

Shared by the recipe step (synth/steps/mine.py) and `mine_dataset` / `synth mine`
(synth/mining/api.py). Inputs are grouped first (`group_pairs`): one entry per unique query with
the corpus indices of all its positives, so identical queries share their positives (none of them
can be another copy's negative) and margins use the lowest positive score. After rescoring and
before the margins, candidates scored as high as the positive (within `false_negative_margin`)
leave the window: dropped, or with `false_negatives: promote` made extra positives of the query.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.embedders import Embedder
from synth.mining.ivf import faiss_top_k
from synth.mining.rescore import FUSERS, Rescorer
from synth.mining.result import MinedQuery, MiningResult, removal_totals
from synth.mining.search import StreamingTopK, VectorFile, Vectors, embed_to_file, top_k
from synth.mining.select import finish, row_rng, windows
from synth.mining.spec import Guards, MiningParams
from synth.progress import Advance, Progress, SilentProgress

STREAM_LIMIT = 32 << 20  # (queries x pool) entries kept while streaming; above it, search afterwards
Window = tuple[np.ndarray, np.ndarray, int]  # candidate indices, their scores, how many exclusion removed


@dataclass
class Grouped:
    """(query, positive) pairs grouped once, the same way for the recipe step and `mine_dataset`."""

    queries: list[str]  # unique, in first-seen order
    positives: list[list[int]]  # corpus indices of each query's positives
    corpus: list[str]  # the documents, then positive-only texts (embedded, never searched)
    searchable: int  # corpus[:searchable] can be negatives
    pair_at: list[tuple[int, int]]  # per input pair: (its query, its positive's corpus index)


def group_pairs(
    anchors: Sequence[str], positives: Sequence[str], documents: Sequence[str], *, positives_are_documents: bool
) -> Grouped:
    """Identical anchors become one query with every positive they were paired with.

    `positives_are_documents` (sentence-transformers' way, `mine_dataset`): the corpus is the
    documents plus every positive, deduplicated, all searchable. Otherwise (a recipe): the
    documents stay as they are (their ids matter) and positives are found by exact text; a
    positive that is no document is appended after them and never searched.
    """
    texts = list(dict.fromkeys([*documents, *positives])) if positives_are_documents else list(documents)
    searchable = len(texts)
    index: dict[str, int] = {}
    for i, t in enumerate(texts):
        index.setdefault(t, i)
    groups: dict[str, int] = {}
    grouped: list[list[int]] = []
    pair_at = []
    for q, p in zip(anchors, positives, strict=True):
        if p not in index:
            index[p] = len(texts)
            texts.append(p)
        g = groups.setdefault(q, len(groups))
        if g == len(grouped):
            grouped.append([])
        if index[p] not in grouped[g]:
            grouped[g].append(index[p])
        pair_at.append((g, index[p]))
    return Grouped(list(groups), grouped, texts, searchable, pair_at)


def search_windows(
    query_emb: np.ndarray,
    corpus: Vectors,
    exclude: Sequence[set[int]],
    params: MiningParams,
    max_positives: int = 1,
    progress: Advance | None = None,
) -> list[Window]:
    """Candidates of every query read back from `corpus` in chunks: per row, its window.

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


def _embed_documents(embedder: Embedder, dim: int) -> Callable[[Sequence[str]], np.ndarray]:
    """The embedder's document role, checked against the queries' dimension (one clear error)."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = embedder.embed(list(texts), role="document")
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or (len(texts) and vectors.shape[1] != dim):
            raise ValueError(
                f"embedder {embedder.model_id!r} returned document vectors of shape {vectors.shape} for "
                f"{len(texts)} texts; the queries' vectors have dim {dim}"
            )
        return vectors

    return embed


def _search(
    query_emb: np.ndarray,
    corpus: Sequence[str],
    embedder: Embedder,
    path: Path,
    exclude: Sequence[set[int]],
    params: MiningParams,
    max_positives: int,
    progress: Progress,
) -> tuple[VectorFile, list[Window]]:
    """Embed the corpus to disk and search each block while it is in memory; windows per query.

    When the pools would not fit (no range_max: the whole corpus is the pool) the file is searched
    afterwards in query chunks instead, which bounds memory at the cost of re-reading it.
    """
    m, n = len(corpus), len(query_emb)
    k = max((params.pool_size(m, len(e), max_positives) for e in exclude), default=0)
    stream = StreamingTopK(query_emb, k) if n * k <= STREAM_LIMIT and params.search == "exact" else None
    try:
        with progress.task("embedding corpus + searching" if stream else "embedding corpus", m) as advance:
            vectors = embed_to_file(
                _embed_documents(embedder, query_emb.shape[1]),
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
        with progress.task("searching (faiss)", n) as advance:
            idx, scores = faiss_top_k(query_emb, vectors, k, nprobe=params.nprobe)
            advance(n)
        return vectors, windows(idx, scores, exclude, params, max_positives)
    with progress.task("searching", n) as advance:
        return vectors, search_windows(query_emb, vectors, exclude, params, max_positives, progress=advance)


def _guard_masks(
    found: list[Window], positives: Sequence[list[int]], corpus: Sequence[str], vectors: _Docs, guards: Guards
) -> list[dict[str, np.ndarray]]:
    """Per row, per guard: which window candidates it removes (in window order)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in found]
    if guards.near_duplicate_ratio is not None:
        from rapidfuzz import fuzz

        for i, (idx, _, _) in enumerate(found):
            hits = [
                any(fuzz.ratio(corpus[c], corpus[p]) >= guards.near_duplicate_ratio for p in positives[i]) for c in idx
            ]
            out[i]["near_duplicate_text"] = np.asarray(hits, dtype=bool)
    if guards.near_duplicate_cosine is not None:
        wanted = np.unique(np.concatenate([w[0] for w in found] + [np.asarray(p) for p in positives]))
        vecs = vectors.take(wanted) if len(wanted) else np.zeros((0, vectors.shape[1]), np.float32)
        row_of = {int(j): r for r, j in enumerate(wanted)}
        for i, (idx, _, _) in enumerate(found):
            cand = vecs[[row_of[int(c)] for c in idx]] if len(idx) else np.zeros((0, vecs.shape[1]), np.float32)
            pos = vecs[[row_of[p] for p in positives[i]]]
            sims = cand @ pos.T if len(pos) else np.zeros((len(idx), 0))
            out[i]["near_duplicate_cosine"] = (
                (sims >= guards.near_duplicate_cosine).any(axis=1) if sims.size else np.zeros(len(idx), bool)
            )
    return out


def _score(scorer: Rescorer, pairs: list[tuple[str, str]], progress: Progress) -> np.ndarray:
    with progress.task(f"scoring with {scorer.name}", len(pairs)) as advance:
        return np.asarray(scorer.score(pairs, advance), dtype=np.float64)


def _rescore_windows(
    rescorer: Rescorer,
    queries: Sequence[str],
    corpus: Sequence[str],
    found: list[Window],
    positives: Sequence[list[int]],
    progress: Progress,
) -> tuple[list[Window], list[np.ndarray], list[int]]:
    """One batched call for every (query, candidate) and (query, positive) pair; windows re-sorted.

    A candidate the rescorer could not score (NaN) leaves the window: it is never a negative.
    Returns the new windows, the positives' scores, and per row how many candidates were unscored.
    """
    pairs = [(queries[i], corpus[c]) for i, (idx, _, _) in enumerate(found) for c in idx]
    pairs += [(queries[i], corpus[p]) for i, ps in enumerate(positives) for p in ps]
    scores = _score(rescorer, pairs, progress)
    at = 0
    new_windows, unscored = [], []
    for idx, _, excluded in found:
        s = scores[at : at + len(idx)]
        at += len(idx)
        scored = ~np.isnan(s)
        idx, s = idx[scored], s[scored]
        unscored.append(int((~scored).sum()))
        order = np.lexsort((idx, -s))
        new_windows.append((idx[order], s[order], excluded))
    pos_scores = []
    for ps in positives:
        pos_scores.append(scores[at : at + len(ps)])
        at += len(ps)
    return new_windows, pos_scores, unscored


def _lowest(scores: np.ndarray) -> float:
    """The margin-driving positive score: the lowest scored one; NaN when none could be scored."""
    scored = scores[~np.isnan(scores)]
    return float(scored.min()) if len(scored) else (float("nan") if len(scores) else 0.0)


def split_false_negatives(
    idx: np.ndarray, scores: np.ndarray, positive_score: float, params: MiningParams
) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """(window without false negatives, their scores, the false negatives, their scores).

    A candidate scoring at least `pos - |pos| * false_negative_margin` is one; a NaN positive
    score (no positive could be judged) finds none, as no bound can be trusted.
    """
    margin = params.false_negative_bound
    if margin is None or len(idx) == 0:
        return idx, scores, [], []
    hit = np.asarray(scores, dtype=np.float64) >= positive_score - abs(positive_score) * margin
    return idx[~hit], scores[~hit], [int(j) for j in idx[hit]], [float(s) for s in scores[hit]]


def false_negative_stats(mined: Sequence[MinedQuery], params: MiningParams) -> dict[str, object]:
    """What the summary and card report: how many candidates were false negatives, and what became of them."""
    found = sum(m.removed.get("false_negative", 0) for m in mined)
    promoted = sum(len(m.promoted) for m in mined)
    return {
        "mode": params.false_negatives,
        "margin": params.false_negative_bound,
        "found": found,
        "promoted": promoted,
        "queries_with_promoted": sum(bool(m.promoted) for m in mined),
    }


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
    progress: Progress | None = None,
) -> MiningResult:
    """Mine every query; `positives[i]` are corpus indices (every one is excluded for query i).

    Only `corpus[:searchable]` (default: all) can be negatives; later entries are positives that
    are not documents (a recipe's corpus file need not hold them): embedded, never searched.
    """
    progress = progress or SilentProgress()
    if params.false_negatives == "promote" and rescorer is None:
        raise ValueError(
            "false_negatives='promote' needs a rescorer (a judge) to decide which candidates are positives"
        )
    if fuse is not None and fuse not in FUSERS:
        raise ValueError(f"fuse must be one of {', '.join(FUSERS)}, got {fuse!r}")
    if len(positives) != len(queries) or (exclude_extra is not None and len(exclude_extra) != len(queries)):
        extra = "" if exclude_extra is None else f", len(exclude_extra) = {len(exclude_extra)}"
        raise ValueError(f"one entry per query: {len(queries)} queries, len(positives) = {len(positives)}{extra}")
    n_docs = len(corpus) if searchable is None else searchable
    # Corpus vectors live in a temporary .npy (under work_dir when given), removed at the end.
    tmp = tempfile.TemporaryDirectory(prefix="synth-mine-", dir=work_dir)
    try:
        with progress.task("embedding queries", len(queries)) as advance:
            query_emb = embedder.embed(list(queries), role="query", progress=advance)
        if query_emb.ndim != 2 or len(query_emb) != len(queries):
            raise ValueError(
                f"embedder {embedder.model_id!r} returned shape {query_emb.shape} for {len(queries)} queries; expected a 2-D array, one row per query"
            )
        max_positives = max((len(p) for p in positives), default=1)
        exclude = [set(ps) | (set(exclude_extra[i]) if exclude_extra else set()) for i, ps in enumerate(positives)]
        file, found = _search(
            query_emb,
            corpus[:n_docs],
            embedder,
            Path(tmp.name) / "corpus.npy",
            exclude,
            params,
            max_positives,
            progress,
        )
        extra_texts = list(corpus[n_docs:])
        dim = query_emb.shape[1]
        extra = _embed_documents(embedder, dim)(extra_texts) if extra_texts else np.zeros((0, dim), np.float32)
        vectors = _Docs(file, extra)
        flat = sorted({p for ps in positives for p in ps})
        pos_vecs = vectors.take(flat) if flat else np.zeros((0, dim), np.float32)
        row_of = {p: r for r, p in enumerate(flat)}
        emb_pos = [pos_vecs[[row_of[p] for p in ps]] @ query_emb[i] for i, ps in enumerate(positives)]
        del query_emb

        masks = _guard_masks(found, positives, corpus, vectors, guards or Guards())
        removed: list[dict[str, int]] = []
        for i, (idx, scores, excluded) in enumerate(found):
            counts = {"positive": excluded}
            keep = np.ones(len(idx), dtype=bool)
            for name, hit in masks[i].items():
                counts[name] = int((keep & hit).sum())
                keep &= ~hit
            found[i] = (idx[keep], scores[keep], excluded)
            removed.append(counts)
        emb_window_scores = [dict(zip(w[0].tolist(), w[1].tolist(), strict=True)) for w in found]
        margin_pos = emb_pos
        unscored = 0
        if rescorer is not None:
            found, margin_pos, lost = _rescore_windows(rescorer, queries, corpus, found, positives, progress)
            for counts, n in zip(removed, lost, strict=True):
                if n:
                    counts["unscored"] = n
            unscored += sum(lost) + sum(int(np.isnan(p).sum()) for p in margin_pos)

        mined = []
        for i, (idx, scores, _) in enumerate(found):
            pos = _lowest(np.asarray(margin_pos[i], dtype=np.float64))
            idx, scores, false_idx, false_scores = split_false_negatives(idx, scores, pos, params)
            if params.false_negative_bound is not None:
                removed[i]["false_negative"] = len(false_idx)
            negatives, neg_scores, counts = finish(
                idx, scores, pos, params, row_rng(params, i), removed[i], max_positives
            )
            promoted = false_idx if params.false_negatives == "promote" else []
            emb = [float(s) for s in emb_pos[i]] + [emb_window_scores[i][j] for j in promoted]
            teacher = {"embedder": emb + [emb_window_scores[i][j] for j in negatives]}
            positive_scores = [float(s) for s in margin_pos[i]] + (false_scores if promoted else [])
            if rescorer is not None:
                teacher[rescorer.name] = positive_scores + neg_scores
            mined.append(
                MinedQuery(
                    i, list(positives[i]) + promoted, positive_scores, negatives, neg_scores, counts, teacher, promoted
                )
            )
        unscored += _add_teachers(mined, queries, corpus, teachers, fuse, progress)
    finally:
        tmp.cleanup()
    stats: dict[str, object] = {"queries": len(queries), "corpus_size": n_docs, "removed": removal_totals(mined)}
    if params.false_negative_bound is not None:
        stats["false_negatives"] = false_negative_stats(mined, params)
    if rescorer is not None or teachers:
        stats["unscored"] = unscored  # pairs a judge could not score: never a negative, NaN as a label
    return MiningResult(list(queries), list(corpus), mined, stats)


def _add_teachers(
    mined: list[MinedQuery],
    queries: Sequence[str],
    corpus: Sequence[str],
    teachers: Sequence[Rescorer],
    fuse: str | None,
    progress: Progress,
) -> int:
    """Soft labels of extra teachers on the final (query, positive/negative) pairs, then fusion.

    Returns how many pairs the teachers could not score (NaN labels).
    """
    unscored = 0
    for t in teachers:
        pairs = [(queries[m.query], corpus[d]) for m in mined for d in m.positives + m.negatives]
        scores = _score(t, pairs, progress)
        unscored += int(np.isnan(scores).sum())
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
    return unscored
