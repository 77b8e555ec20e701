"""Embeddings on disk and exact top-k search over corpus chunks, so memory stays bounded.

Why: sentence-transformers' `mine_hard_negatives` holds a (queries x corpus) score matrix per
query batch and every embedding in RAM, which is what runs out of memory on large corpora.
Here the corpus vectors are written to a `.npy` file block by block as they are computed, and
the search reads them back in chunks; per query chunk only a running top-K is kept, merged with
each corpus chunk's top-K. Memory is O(query_chunk x corpus_chunk + query_chunk x K), whatever
the corpus size.

Order is exact and deterministic: score descending, then corpus index ascending, so results do
not depend on chunk sizes (ties at a chunk's cut are resolved by a full sort of that row).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class VectorFile:
    """A float32 (n, dim) `.npy` file, read back in chunks (plain reads: no mapping stays resident)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{self.path}: expected a C-order float32 2-D array, got {dtype} {shape}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a fresh in-memory array."""
        stop = min(stop, self.shape[0])
        dim = self.shape[1]
        with self.path.open("rb") as f:
            f.seek(self.offset + start * dim * 4)
            return np.fromfile(f, dtype=np.float32, count=max(stop - start, 0) * dim).reshape(-1, dim)

    def take(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows by index, one positioned read per row (~2 us each from the page cache).

        Why not a memory mapping: every page a mapping faults in (and the kernel maps 64 KiB around
        each fault) counts in the process's RSS until it is unmapped, so a random gather of a few
        thousand rows held hundreds of MiB of the file resident (1M rows of a 1 GiB file: +1 GiB
        peak, even in slices of 512 indices); reads put only the rows asked for in memory.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n, dim = self.shape
        out = np.empty((len(idx), dim), dtype=np.float32)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= n:
            raise IndexError(f"{self.path}: row index out of range 0..{n - 1}")
        row_bytes = dim * 4
        view = memoryview(out).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, i in enumerate(idx.tolist()):
                got = os.preadv(fd, [view[j * row_bytes : (j + 1) * row_bytes]], self.offset + i * row_bytes)
                if got != row_bytes:
                    raise OSError(f"{self.path}: short read at row {i} (the file was cut?)")
        finally:
            os.close(fd)
        return out

    def head(self, n: int) -> VectorFile:
        """The first n rows as a VectorFile (searchable documents before positive-only ones)."""
        view = VectorFile.__new__(VectorFile)
        view.path, view.offset, view.shape = self.path, self.offset, (min(n, self.shape[0]), self.shape[1])
        return view


Vectors = np.ndarray | VectorFile


def embed_to_file(
    embed: EmbedFn,
    texts: Sequence[str],
    path: str | Path,
    *,
    block: int = 8192,
    progress: Callable[[int], None] | None = None,
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> VectorFile:
    """Embed `texts` block by block, appending each block to a `.npy` file as soon as it is done.

    Blocks are consecutive, so the file is written sequentially; the embedder sorts each block by
    length itself, which pads as little as a global sort once blocks hold thousands of texts.
    `on_block(start, vectors)` sees each block while it is in memory (search it without re-reading).
    """
    path = Path(path)
    with path.open("wb") as f:
        header_written = False
        for start in range(0, len(texts), block):
            vectors = np.ascontiguousarray(embed(texts[start : start + block]), dtype=np.float32)
            if not header_written:
                header = {"descr": "<f4", "fortran_order": False, "shape": (len(texts), vectors.shape[1])}
                np.lib.format.write_array_header_1_0(f, header)
                header_written = True
            f.write(vectors.tobytes())
            if on_block is not None:
                on_block(start, vectors)
            if progress:
                progress(len(vectors))
        if not header_written:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (0, 0)})
    return VectorFile(path)


def iter_chunks(vectors: Vectors, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) chunks of an in-memory array or a VectorFile."""
    n = len(vectors)
    for start in range(0, n, size):
        if isinstance(vectors, VectorFile):
            yield start, vectors.read(start, start + size)
        else:
            yield start, vectors[start : start + size]


def _sort_rows(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sort by score descending, then index ascending; keep k."""
    order = np.lexsort((idx, -scores), axis=-1)[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(scores, order, axis=1)


TopK = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _top_k_unordered(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(columns, scores, kth-next) of each row's k+1 best, k+1 <= columns; any order among ties.

    Why torch: `torch.topk` is several times faster than `np.argpartition` on (queries x block)
    rows and uses every core (torch is a dependency anyway: the embedders run on it).
    """
    import torch

    vals, cols = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k + 1, dim=1, sorted=True)
    vals, cols = vals.numpy(), cols.numpy()
    return cols[:, :k], vals[:, :k], vals[:, k]


def _top_k_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_top_k_unordered`'s contract (the k-th and (k+1)-th best at their places, the rest in any
    order) by numpy's partition: for the faiss path's small blocks, where torch gains little and
    importing it would add ~150 MiB to a run whose embedder does not need torch."""
    part = np.argpartition(-scores, (k - 1, k), axis=1)[:, : k + 1]
    vals = np.take_along_axis(scores, part, axis=1)
    return part[:, :k], vals[:, :k], vals[:, k]


def _chunk_top_k(
    scores: np.ndarray, start: int, k: int, ordered: bool = True, top_k: TopK = _top_k_unordered
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (global index, score) of each row of one (queries x chunk) score block, exact ties;
    `ordered=False` returns the same set in any order (for a caller that sorts a union later)."""
    q, c = scores.shape
    if k >= c:
        idx = np.broadcast_to(np.arange(start, start + c), (q, c))
        return _sort_rows(idx.copy(), scores, k) if ordered else (idx, scores)
    part, top, after = top_k(scores, k)
    # Only when the (k+1)-th best equals the k-th can a tie outside the pick have the lower index:
    # redo those (rare) rows in full; otherwise the pick is the exact set, ordered by _sort_rows.
    tied = np.flatnonzero(after >= top[:, k - 1])
    if len(tied):
        part, top = part.copy(), top.copy()
    for r in tied:
        cand = np.flatnonzero(scores[r] >= top[r, k - 1])
        order = np.lexsort((cand, -scores[r, cand]))[:k]
        part[r], top[r] = cand[order], scores[r, cand[order]]
    return _sort_rows(part + start, top, k) if ordered else (part + start, top)


def merge_block(
    best_idx: np.ndarray, best_scores: np.ndarray, scores: np.ndarray, start: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k lists (sorted, length <= k) merged with a (queries x block) score block.

    Why the threshold: once a row holds k candidates, only scores strictly above its k-th best
    can enter (this block's indices are all higher, so a tie loses), and after the first blocks
    few do: one comparison pass and a gather replace a top-k of the whole row. Rows where more
    than k pass take the block's exact top-k instead.
    """
    if best_idx.shape[1] < k:
        idx, top = _chunk_top_k(scores, start, k)
        if not best_idx.shape[1]:
            return idx, top
    else:
        mask = scores > best_scores[:, k - 1 : k]
        counts = np.count_nonzero(mask, axis=1)
        over = np.flatnonzero(counts > k)
        if len(over):
            mask[over] = False
            counts[over] = 0  # gathered below: the rows that fit
        width = max(int(counts.max()) if len(counts) else 0, k if len(over) else 0)
        if width == 0:
            return best_idx, best_scores
        rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])  # 2-D nonzero is ~6x slower
        pos = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.full((len(scores), width), -1, dtype=np.int64)
        top = np.full((len(scores), width), -np.inf, dtype=np.float32)
        idx[rows, pos] = cols + start
        top[rows, pos] = scores[rows, cols]
        if len(over):
            idx[over, :k], top[over, :k] = _chunk_top_k(scores[over], start, k)
    # Bounded merge: the union of two sorted top-k lists holds the top-k of both.
    return _sort_rows(np.concatenate([best_idx, idx], axis=1), np.concatenate([best_scores, top], axis=1), k)


class StreamingTopK:
    """Exact top-k of every query over corpus blocks fed in order (search while embedding).

    Why a worker thread: the embedder keeps about one core busy (tokenising, small torch ops)
    while BLAS and numpy's partition release the GIL, so searching block i while block i+1 is
    embedded hides most of the search. One worker takes blocks in order, so results are the same
    as searching inline (`background=False`). A block must not be modified after `add`.
    """

    def __init__(self, queries: np.ndarray, k: int, query_chunk: int = 1024, *, background: bool = True) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.query_chunk = query_chunk
        n = len(self.queries)
        self.idx = [np.full((min(query_chunk, n - s), 0), -1, np.int64) for s in range(0, n, query_chunk)]
        self.scores = [np.full((len(i), 0), -np.inf, np.float32) for i in self.idx]
        self.background = background
        # At most two blocks wait: bounded memory, and the embedder never waits on a short stall.
        self._queue: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cancelled = False

    def _search(self, start: int, block: np.ndarray) -> None:
        block_t = np.ascontiguousarray(block, dtype=np.float32).T
        for c, qs in enumerate(range(0, len(self.queries), self.query_chunk)):
            scores = self.queries[qs : qs + self.query_chunk] @ block_t
            self.idx[c], self.scores[c] = merge_block(self.idx[c], self.scores[c], scores, start, self.k)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._cancelled:  # else drain, so `add` never blocks
                try:
                    self._search(*item)
                except BaseException as e:  # re-raised in the caller's thread by add/result
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, start: int, block: np.ndarray) -> None:
        self._raise()
        if self.k == 0 or not len(block):
            return
        if not self.background:
            self._search(start, block)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="synth-topk", daemon=True)
            self._thread.start()
        self._queue.put((start, block))

    def close(self, cancel: bool = False) -> None:
        """Stop the worker after the queued blocks (or skipping them: `cancel`); idempotent."""
        self._cancelled = self._cancelled or cancel
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores), each (n_queries, k), best first, padded with -1 / -inf."""
        self.close()
        self._raise()
        n = len(self.queries)
        out_idx = np.full((n, self.k), -1, dtype=np.int64)
        out_scores = np.full((n, self.k), -np.inf, dtype=np.float32)
        for c, qs in enumerate(range(0, n, self.query_chunk)):
            w = self.idx[c].shape[1]
            out_idx[qs : qs + len(self.idx[c]), :w] = self.idx[c]
            out_scores[qs : qs + len(self.idx[c]), :w] = self.scores[c]
        return out_idx, out_scores


def top_k(
    queries: np.ndarray,
    corpus: Vectors,
    k: int,
    *,
    query_chunk: int = 1024,
    corpus_chunk: int = 16384,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product: (indices, scores), each (n_queries, k), best first.

    Rows are padded with index -1 and score -inf when the corpus has fewer than k documents.
    The corpus is streamed once per query chunk; a VectorFile is read chunk by chunk.
    """
    n = len(queries)
    m = len(corpus)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    if k == 0 or m == 0:
        return out_idx, out_scores
    for qs in range(0, n, query_chunk):
        q = np.ascontiguousarray(queries[qs : qs + query_chunk], dtype=np.float32)
        best_idx = np.full((len(q), 0), -1, dtype=np.int64)
        best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
        for start, block in iter_chunks(corpus, corpus_chunk):
            best_idx, best_scores = merge_block(best_idx, best_scores, q @ block.T, start, k)
        out_idx[qs : qs + len(q), : best_idx.shape[1]] = best_idx
        out_scores[qs : qs + len(q), : best_idx.shape[1]] = best_scores
        if progress:
            progress(len(q))
    return out_idx, out_scores
