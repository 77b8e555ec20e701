"""The round-trip rule's corpus on disk, and its rank scan: bounded memory at any corpus size.

Why: the rule used to hold every corpus vector and every query vector at once (10^6 documents
at dim 384: 1.5 GB, before the queries). Here, as streamed mining keeps its corpus
(synth/mining/stream.py), documents' texts and ids go into a `DocStore`, their vectors into a
`.npy` file, and a row's own passage is found through sorted 64-bit hashes of ids and texts.
Queries come a batch at a time and are scored against the corpus one block at a time; what a
query keeps is its own passage's score, how many documents beat it, and the best other document.

Ties: a document beats the own passage when its score is more than `TIE` above it. The own score
is a row-wise dot product, the others come from a block's matrix product; the two may differ in
the last float32 bit for the same pair of vectors, so an exact duplicate of the passage (same
vector) must count as a tie, as it did when both came from one matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.mining.docstore import DocStore, StoreTexts, lookup, store_documents, text_hash
from synth.mining.ivf import FaissIndex
from synth.mining.search import VectorFile, embed_to_file, iter_chunks
from synth.progress import Advance
from synth.steps.base import Row
from synth.steps.filter_common import text_of

TIE = 1e-6  # a score within this of the own passage's does not outrank it
BLOCK = 8192  # documents scored at once (and embedded at once)
QUERY_CHUNK = 1024  # queries per matrix product: (1024 x 8192) float32 = 32 MiB
Batches = Callable[[], Iterator[list[Row]]]
Embed = Callable[[Sequence[str]], np.ndarray]


class RoundTripCorpus:
    """The documents a query must find its passage among: texts and ids on disk, vectors in a file."""

    def __init__(self, folder: Path, by_id: bool) -> None:
        self.folder = Path(folder)
        self.store = DocStore(self.folder)
        self.by_id = by_id  # the source corpus: a row names its passage by id first, then by text
        self.keys: tuple[np.ndarray, ...] = ()
        self.vectors: VectorFile | None = None

    @classmethod
    def of_documents(cls, documents: Iterable[Row], folder: Path, embed: Embed, progress: Advance) -> RoundTripCorpus:
        """The source documents (`id`, `text`), in their order."""
        corpus = cls(folder, by_id=True)
        corpus.keys = store_documents(corpus.store, documents)
        corpus._embed(embed, progress)
        return corpus

    @classmethod
    def of_positives(
        cls, batches: Batches, column: str, folder: Path, embed: Embed, progress: Advance
    ) -> RoundTripCorpus:
        """The rows' distinct `column` texts, in first-seen order (one pass over the rows)."""
        corpus = cls(folder, by_id=False)
        seen: dict[int, int] = {}  # text hash -> corpus index: one entry per distinct passage
        for batch in batches():
            for row in batch:
                text = text_of(row, column)
                h = text_hash(text)
                if h not in seen:
                    seen[h] = len(seen)
                    corpus.store.add(text, "")
        keys = np.fromiter(seen, np.uint64, len(seen))
        order = np.argsort(keys)
        corpus.keys = (keys[order], np.fromiter(seen.values(), np.int64, len(seen))[order])
        del seen
        corpus._embed(embed, progress)
        return corpus

    def _embed(self, embed: Embed, progress: Advance) -> None:
        if len(self.store):
            self.vectors = embed_to_file(
                embed, StoreTexts(self.store), self.folder / "corpus.npy", block=BLOCK, progress=progress
            )

    def __len__(self) -> int:
        return len(self.store)

    def targets(self, rows: Sequence[Row], id_column: str, text_column: str) -> np.ndarray:
        """Each row's own passage: by its `id_column` (source corpus), else by its passage text; -1: absent."""
        texts = np.fromiter((text_hash(text_of(r, text_column)) for r in rows), np.uint64, len(rows))
        if not self.by_id:
            return lookup(self.keys[0], self.keys[1], texts)
        text_keys, text_first, id_keys, id_last = self.keys
        ids = np.fromiter((text_hash(text_of(r, id_column)) for r in rows), np.uint64, len(rows))
        found = lookup(id_keys, id_last, ids)
        return np.where(found >= 0, found, lookup(text_keys, text_first, texts))

    def name(self, j: int) -> str:
        """How a drop record names document `j`: its id, or the first 200 characters of a positive."""
        return self.store.id(j) if self.by_id else self.store.text(j)[:200]

    def close(self) -> None:
        self.store.close()


@dataclass
class Scan:
    """Per query: its own passage's score, its rank (1 = best), the best other document and its score."""

    own: np.ndarray
    rank: np.ndarray
    best_other: np.ndarray  # -inf when the corpus holds one document
    best_other_index: np.ndarray  # -1 when the corpus holds one document

    @property
    def margin(self) -> np.ndarray:
        """Own score minus the best other document's; the own score alone when there is no other."""
        return np.where(self.best_other_index >= 0, self.own - self.best_other, self.own)


def scan(queries: np.ndarray, targets: np.ndarray, vectors: VectorFile) -> Scan:
    """Score `queries` (each with its own passage `targets[i]` >= 0) against every stored document.

    The corpus is read once, a block at a time; each block is scored for every query chunk.
    Ties for the best other document go to the lower corpus index.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(queries)
    own = np.einsum("ij,ij->i", queries, vectors.take(targets))
    above = np.zeros(n, np.int64)
    best = np.full(n, -np.inf, np.float32)
    best_at = np.full(n, -1, np.int64)
    for start, block in iter_chunks(vectors, BLOCK) if n else ():
        block_t = np.ascontiguousarray(block.T)
        for qs in range(0, n, QUERY_CHUNK):
            part = slice(qs, qs + QUERY_CHUNK)
            scores = queries[part] @ block_t
            local = targets[part] - start
            inside = np.flatnonzero((local >= 0) & (local < len(block)))
            scores[inside, local[inside]] = -np.inf  # the own passage is no competitor
            above[part] += np.count_nonzero(scores > (own[part] + TIE)[:, None], axis=1)
            arg = scores.argmax(axis=1)
            top = scores[np.arange(len(arg)), arg]
            better = top > best[part]
            best[part] = np.where(better, top, best[part])
            best_at[part] = np.where(better, arg + start, best_at[part])
    return Scan(own=own, rank=above + 1, best_other=best, best_other_index=best_at)


def ivf_scan(index: FaissIndex, queries: np.ndarray, targets: np.ndarray, vectors: VectorFile, top_k: int) -> Scan:
    """`scan` through an IVF index (`search: faiss`): only the top_k + 1 documents the index finds are
    compared with the own passage, which is all the rule's decision needs (rank <= top_k or not).

    Probing every cluster gives `scan`'s answer for every query within top_k; a miss's rank is then a
    lower bound (top_k + 1 or more). With fewer probes a document in a cluster not probed is never
    counted, so a query may pass that exact search would drop (the approximation faiss mining makes).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    own = np.einsum("ij,ij->i", queries, vectors.take(targets)) if len(queries) else np.zeros(0, np.float32)
    idx, scores = index.search(queries, top_k + 1)  # score descending, then index ascending
    others = np.where((idx == targets[:, None]) | (idx < 0), -np.inf, scores)
    above = np.count_nonzero(others > (own + TIE)[:, None], axis=1)
    best_col = others.argmax(axis=1) if len(queries) else np.zeros(0, np.int64)
    rows = np.arange(len(queries))
    best = others[rows, best_col]
    best_at = np.where(np.isfinite(best), idx[rows, best_col], -1)
    return Scan(own=own, rank=above + 1, best_other=best.astype(np.float32), best_other_index=best_at)
