"""The recipe's mining in bounded memory: documents and rows streamed, only ids and scores kept.

Why: `run_mining` takes every query and every corpus text as lists and returns one object per
query (with a dict per window candidate); at 10^6 documents and 2x10^6 rows that is gigabytes
before the output rows are even built. Here (the recipe step's plain case: embedder scores, exact
or faiss search, no judge, guard or extra format; synth/steps/mine.py picks it) the documents go to disk
once (texts and ids into a `DocStore`, vectors into a `.npy`), the step's input rows are read three
times from its shards (group them; embed and mine the unique queries a batch at a time; build the
output rows), and what stays in memory is a few numbers per row, per query and per document:
64-bit text hashes, group ids, the chosen negatives' indices and scores, each rule's counts.

The result equals `run_mining`'s: the same grouping (identical queries share their positives,
first-seen order), the same global pool size, the same search (`StreamingTopK`, same query and
corpus chunks) and the same selection functions (select.py). Texts are matched by a 64-bit
blake2b hash instead of by the text itself (a collision, odds ~n^2 / 2^65, would merge two texts).
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synth.embedders import Embedder
from synth.mining.docstore import DocStore, StoreTexts, lookup, store_documents, text_hash
from synth.mining.engine import STREAM_LIMIT, _Docs, _embed_documents, _lowest, split_false_negatives
from synth.mining.ivf import FaissIndex
from synth.mining.search import StreamingTopK, VectorFile, embed_to_file, iter_chunks
from synth.mining.select import finish, row_rng, windows
from synth.mining.spec import MiningParams
from synth.progress import Progress

Row = dict[str, Any]
Batches = Callable[[], Iterator[list[Row]]]  # a fresh pass over the input rows, a batch at a time
# (queries, corpus file, k, corpus chunk) -> `search.top_k`'s (indices, scores), computed elsewhere
ExactSearch = Callable[[np.ndarray, VectorFile, int, int], tuple[np.ndarray, np.ndarray]]
QUERY_BATCH = 16384  # unique queries embedded and searched at once (16 MiB of vectors at dim 256)
CORPUS_BLOCK = 8192  # documents embedded at once (embed_to_file's block: the same search chunks)


def _csr(group: np.ndarray, value: np.ndarray, order_key: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (group, value) pairs as (starts, values): per group, values by their lowest `order_key`."""
    if not len(group):
        return np.zeros(n_groups + 1, np.int64), np.zeros(0, np.int64)
    span = int(value.max()) + 1
    _, first = np.unique(group * span + value, return_index=True)
    first = first[np.lexsort((order_key[first], group[first]))]
    starts = np.zeros(n_groups + 1, np.int64)
    starts[1:] = np.cumsum(np.bincount(group[first], minlength=n_groups))
    return starts, value[first].astype(np.int64)


@dataclass
class Plan:
    """What one pass over the rows learns: each row's query group and positive, each group's exclusions."""

    group: np.ndarray  # per row: its unique query's index (first-seen order)
    positive: np.ndarray  # per row: its positive's corpus index
    first: np.ndarray  # per row: the first row of its group (where the query is read from)
    pos_starts: np.ndarray  # group g's positives: pos_values[pos_starts[g]:pos_starts[g + 1]]
    pos_values: np.ndarray
    ex_starts: np.ndarray  # group g's rows' own documents that are none of its positives (by id)
    ex_values: np.ndarray
    extra_texts: list[str]  # positives that are no document (corpus indices n_docs, n_docs + 1, ...)

    @property
    def groups(self) -> int:
        return len(self.pos_starts) - 1

    def positives(self, g: int) -> list[int]:
        return self.pos_values[self.pos_starts[g] : self.pos_starts[g + 1]].tolist()

    def exclude(self, g: int) -> set[int]:
        """Every positive of the group and its rows' own documents (never a negative of it)."""
        own = self.ex_values[self.ex_starts[g] : self.ex_starts[g + 1]].tolist()
        return set(self.positives(g)).union(own)

    def exclude_sizes(self) -> np.ndarray:
        """len(exclude(g)) of every group, without building the sets of groups that have no extra."""
        sizes = np.diff(self.pos_starts)
        for g in np.flatnonzero(np.diff(self.ex_starts)):
            sizes[g] = len(self.exclude(int(g)))
        return sizes


@dataclass
class Mined:
    """Per unique query: its negatives (padded with -1), their scores, its positives' scores, the counts."""

    negatives: np.ndarray  # (groups, num_negatives) corpus indices
    negative_scores: np.ndarray  # (groups, num_negatives) float64
    found: np.ndarray  # (groups,) how many negatives survived
    positive_scores: np.ndarray  # float64, aligned with Plan.pos_values
    removed_keys: list[str] = field(default_factory=list)  # every query's `removed` dict has these keys
    removed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # (groups, keys)

    def removed_dict(self, g: int) -> dict[str, int]:
        return {k: int(v) for k, v in zip(self.removed_keys, self.removed[g], strict=True)}

    def totals(self) -> dict[str, int]:
        return {k: int(v) for k, v in zip(self.removed_keys, self.removed.sum(axis=0), strict=True)}


class StreamedMining:
    """One recipe step's mining: `run()` does the search and selection; `rows()` then yields the output.

    Holds its temporary folder (document store, corpus vectors) until `close()`.
    """

    def __init__(
        self,
        params: MiningParams,
        embedder: Embedder,
        *,
        query_column: str,
        positive_column: str,
        positive_id_column: str | None,
        progress: Progress,
        query_batch: int = QUERY_BATCH,
        search: ExactSearch | None = None,
    ) -> None:
        self.params, self.embedder, self.progress = params, embedder, progress
        self.search = search  # exact top-k over the corpus file elsewhere (Ray); None: here, while embedding
        self.searched_elsewhere = 0  # query batches `search` answered (the step's stats say where it ran)
        self.query_batch = query_batch
        self.query_column, self.positive_column, self.positive_id_column = (
            query_column,
            positive_column,
            positive_id_column,
        )
        self.tmp = tempfile.TemporaryDirectory(prefix="synth-mine-")
        self.store = DocStore(Path(self.tmp.name))
        self.plan: Plan | None = None
        self.mined: Mined | None = None

    def close(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    # -- pass 0: documents -------------------------------------------------------------------

    def add_documents(self, documents: Iterable[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Documents into the store; (text hash keys, first index), (id hash keys, last index)."""
        return store_documents(self.store, documents)  # type: ignore[return-value]

    # -- pass 1: rows -> groups --------------------------------------------------------------

    def plan_rows(self, batches: Batches, documents: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> Plan:
        """Group the rows as `group_pairs` does (identical queries: one query, every positive)."""
        text_keys, text_first, id_keys, id_last = documents
        n_docs = len(self.store)
        query_h, positive_h, own_h, has_own = array("Q"), array("Q"), array("Q"), array("b")
        extra: dict[int, int] = {}  # positive text hash -> corpus index, for positives that are no document
        extra_texts: list[str] = []
        for batch in batches():
            for row in batch:
                query_h.append(text_hash(str(row[self.query_column])))
                positive_h.append(text_hash(str(row[self.positive_column])))
                own = row.get(self.positive_id_column) if self.positive_id_column else None
                has_own.append(own is not None)
                own_h.append(text_hash(str(own)) if own is not None else 0)
            # positives that are no document, in first-seen order (few: keep their texts)
            got = np.asarray(positive_h[len(positive_h) - len(batch) :], np.uint64)
            absent = lookup(text_keys, text_first, got) < 0
            for i in np.flatnonzero(absent):
                h = int(got[i])
                if h not in extra:
                    extra[h] = n_docs + len(extra_texts)
                    extra_texts.append(str(batch[i][self.positive_column]))
        n = len(query_h)
        _, first_row, inverse = np.unique(np.asarray(query_h, np.uint64), return_index=True, return_inverse=True)
        rank = np.empty(len(first_row), np.int64)
        rank[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
        group = rank[inverse.reshape(-1)]
        first = np.zeros(n, bool)
        first[first_row] = True

        ph = np.asarray(positive_h, np.uint64)
        positive = lookup(text_keys, text_first, ph)
        for i in np.flatnonzero(positive < 0):
            positive[i] = extra[int(ph[i])]
        rows = np.arange(n, dtype=np.int64)
        pos_starts, pos_values = _csr(group, positive, rows, len(first_row))

        # excluded: every positive of the group, and each row's own document (by id), as run_mining does
        own = lookup(id_keys, id_last, np.asarray(own_h, np.uint64))
        own[np.asarray(has_own, np.int8) == 0] = -1
        other = np.flatnonzero((own >= 0) & (own != positive))  # usually none: a row's own document is its positive
        ex_starts, ex_values = _csr(group[other], own[other], np.zeros(len(other), np.int64), len(first_row))
        self.plan = Plan(group, positive, first, pos_starts, pos_values, ex_starts, ex_values, extra_texts)
        return self.plan

    # -- pass 2: unique queries, a batch at a time -------------------------------------------

    def _queries(self, batches: Batches, size: int) -> Iterator[tuple[int, list[str]]]:
        """(first group, the queries of up to `size` groups), in group order (each group's first row)."""
        assert self.plan is not None
        first, at, start, texts = self.plan.first, 0, 0, []
        for batch in batches():
            for i, row in enumerate(batch):
                if first[at + i]:
                    texts.append(str(row[self.query_column]))
                    if len(texts) == size:
                        yield start, texts
                        start, texts = start + size, []
            at += len(batch)
        if texts:
            yield start, texts

    def run(self, batches: Batches) -> Mined:
        """Embed the corpus once (to disk) and mine every unique query, a batch at a time."""
        plan, params = self.plan, self.params
        assert plan is not None
        m, n_groups = len(self.store), plan.groups
        ex_sizes = plan.exclude_sizes()
        max_positives = int(np.diff(plan.pos_starts).max()) if n_groups else 1
        k = max((params.pool_size(m, int(e), max_positives) for e in np.unique(ex_sizes)), default=0)
        size = max(1, min(self.query_batch, STREAM_LIMIT // max(k, 1)))
        size = size - size % 1024 if size > 1024 else size  # whole search chunks (StreamingTopK's 1024)
        nneg = params.num_negatives
        out = Mined(
            negatives=np.full((n_groups, nneg), -1, np.int64),
            negative_scores=np.zeros((n_groups, nneg), np.float64),
            found=np.zeros(n_groups, np.int64),
            positive_scores=np.zeros(len(plan.pos_values), np.float64),
        )
        vectors: _Docs | None = None
        file: VectorFile | None = None
        index: FaissIndex | None = None
        try:
            with self.progress.task("embedding queries + searching", n_groups) as advance:
                for g0, texts in self._queries(batches, size):
                    query_emb = self.embedder.embed(texts, role="query")
                    if query_emb.ndim != 2 or len(query_emb) != len(texts):
                        raise ValueError(
                            f"embedder {self.embedder.model_id!r} returned shape {query_emb.shape} for {len(texts)} "
                            "queries; expected a 2-D array, one row per query"
                        )
                    if params.search == "faiss":  # the index is built once, over the whole corpus file
                        if file is None:
                            file, vectors = self._embed_corpus(query_emb.shape[1], None)
                            index = FaissIndex(file, nprobe=params.nprobe)
                        assert index is not None
                        idx, scores = index.search(query_emb, k)
                    elif self.search is not None:  # the executor's (Ray: a map_batches stage over the file)
                        if file is None:
                            file, vectors = self._embed_corpus(query_emb.shape[1], None)
                        idx, scores = self.search(query_emb, file, k, CORPUS_BLOCK)
                        self.searched_elsewhere += 1
                    elif file is None:  # the first batch is searched while the corpus is embedded
                        search = StreamingTopK(query_emb, k)
                        file, vectors = self._embed_corpus(query_emb.shape[1], search)
                        idx, scores = search.result()
                    else:  # later ones read the corpus vectors back, in the same blocks
                        search = StreamingTopK(query_emb, k, background=False)
                        for start, block in iter_chunks(file, CORPUS_BLOCK):
                            search.add(start, block)
                        idx, scores = search.result()
                    assert vectors is not None
                    self._select(g0, query_emb, idx, scores, vectors, max_positives, out)
                    advance(len(texts))
        finally:
            if index is not None:
                index.close()  # its by-cluster copy of the corpus vectors
        self.mined = out
        return out

    def _embed_corpus(self, dim: int, search: StreamingTopK | None) -> tuple[VectorFile, _Docs]:
        """Every document's vector into a `.npy`, each block searched by the first query batch (exact search)."""
        m = len(self.store)
        blocks = StoreTexts(self.store)
        try:
            with self.progress.task("embedding corpus" + (" + searching" if search else ""), m) as advance:
                file = embed_to_file(
                    _embed_documents(self.embedder, dim),
                    blocks,
                    Path(self.tmp.name) / "corpus.npy",
                    block=CORPUS_BLOCK,
                    progress=advance,
                    on_block=search.add if search else None,
                )
        except BaseException:
            if search is not None:
                search.close(cancel=True)
            raise
        assert self.plan is not None
        extra_texts = self.plan.extra_texts
        extra = _embed_documents(self.embedder, dim)(extra_texts) if extra_texts else np.zeros((0, dim), np.float32)
        return file, _Docs(file, extra)

    def _select(
        self,
        g0: int,
        query_emb: np.ndarray,
        idx: np.ndarray,
        scores: np.ndarray,
        vectors: _Docs,
        max_positives: int,
        out: Mined,
    ) -> None:
        """Windows, margins and sampling for groups g0, g0 + 1, ... (run_mining's loop, no judge)."""
        plan, params = self.plan, self.params
        assert plan is not None
        groups = range(g0, g0 + len(query_emb))
        found = windows(idx, scores, [plan.exclude(g) for g in groups], params, max_positives)
        lo, hi = plan.pos_starts[g0], plan.pos_starts[g0 + len(query_emb)]
        flat = sorted(set(plan.pos_values[lo:hi].tolist()))
        pos_vecs = vectors.take(flat) if flat else np.zeros((0, query_emb.shape[1]), np.float32)
        row_of = {p: r for r, p in enumerate(flat)}
        for i, g in enumerate(groups):
            ps = plan.positives(g)
            emb_pos = pos_vecs[[row_of[p] for p in ps]] @ query_emb[i]
            w_idx, w_scores, excluded = found[i]
            counts = {"positive": excluded}
            pos = _lowest(np.asarray(emb_pos, dtype=np.float64))
            w_idx, w_scores, false_idx, _ = split_false_negatives(w_idx, w_scores, pos, params)
            if params.false_negative_bound is not None:
                counts["false_negative"] = len(false_idx)
            negatives, neg_scores, counts = finish(
                w_idx, w_scores, pos, params, row_rng(params, g), counts, max_positives
            )
            if not out.removed_keys:  # the same keys for every query: the rules the params switch on
                out.removed_keys = list(counts)
                out.removed = np.zeros((len(out.found), len(counts)), np.int64)
            if list(counts) != out.removed_keys:
                raise AssertionError(f"removal counts {list(counts)} differ from {out.removed_keys}")
            out.removed[g] = list(counts.values())
            out.negatives[g, : len(negatives)] = negatives
            out.negative_scores[g, : len(neg_scores)] = neg_scores
            out.found[g] = len(negatives)
            s = plan.pos_starts[g]
            out.positive_scores[s : s + len(ps)] = [float(x) for x in emb_pos]

    # -- pass 3: output rows -----------------------------------------------------------------

    def rows(
        self, batches: Batches, need: int, drop: Callable[[Row, int, float, dict[str, int]], None]
    ) -> Iterator[Row]:
        """Each kept row with its negatives (texts and ids read back from the store), in input order;
        `drop(row, found, positive_score, removed)` for a row short of negatives."""
        plan, mined = self.plan, self.mined
        assert plan is not None and mined is not None
        at = 0
        for batch in batches():
            for i, row in enumerate(batch):
                g, p = int(plan.group[at + i]), int(plan.positive[at + i])
                s, e = int(plan.pos_starts[g]), int(plan.pos_starts[g + 1])
                slot = s + plan.pos_values[s:e].tolist().index(p)
                positive_score = float(mined.positive_scores[slot])
                found = int(mined.found[g])
                if found < need:
                    drop(row, found, positive_score, mined.removed_dict(g))
                    continue
                negs = mined.negatives[g, :found].tolist()
                new = dict(row)
                new["negatives"] = [self.store.text(j) for j in negs]
                new["negative_ids"] = [self.store.id(j) for j in negs]
                new["negative_scores"] = [round(float(x), 6) for x in mined.negative_scores[g, :found]]
                new["positive_score"] = round(positive_score, 6)
                yield new
            at += len(batch)
