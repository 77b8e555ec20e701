"""Inverted-file (IVF) search with the corpus vectors on disk: `search: faiss` in a recipe.

Why a module of its own: exact search (search.py) scans every document per query; on very large
corpora only the clusters nearest each query should be scanned, and the index must not hold the
vectors in memory (the corpus may be larger than RAM). faiss trains and assigns the clusters;
the vectors stay in a file sorted by cluster, read back one probed cluster at a time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from synth.mining.search import VectorFile, _chunk_top_k, _sort_rows, _top_k_numpy, iter_chunks


def faiss_top_k(
    queries: np.ndarray,
    corpus: VectorFile,
    k: int,
    *,
    nprobe: int = 16,
    nlist: int | None = None,
    block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverted-file search: only the `nprobe` of `nlist` clusters nearest each query are scanned.

    Why: on very large corpora a full scan per query is the cost. Candidates may miss a true top-k
    document (one in a cluster not probed), but every score returned is the exact dot product and
    the order is the exact one (score desc, index asc), so margins mean the same as in exact search.
    Needs `faiss-cpu` for the clustering (`pip install synth[faiss]`).
    """
    index = FaissIndex(corpus, nprobe=nprobe, nlist=nlist, block=block)
    try:
        return index.search(queries, k)
    finally:
        index.close()


CANDIDATE_LIMIT = 1 << 22  # (query, candidate) slots held at once by a cluster search: 48 MiB


class FaissIndex:
    """`faiss_top_k`'s index: clusters trained by faiss, the vectors themselves in a file sorted by cluster.

    Why not a faiss IVF index: it holds every vector in memory (1 GiB for 10^6 documents at dim 256,
    more with its lists' growth slack), which set the peak of a whole mining run. Here faiss only
    trains the `nlist` centroids (IVF-Flat's own training, so the clusters are the ones faiss would
    use) and assigns each document to one; the corpus is rewritten once, cluster after cluster, and a
    search reads each probed cluster back from that file: what stays in memory is the centroids and
    one int64 per document. Scores are exact dot products (no codes, nothing to re-score), order is
    score descending then index ascending, and probing every cluster is exact search. Each query's
    answer is its own: batches give what one call gives.
    """

    def __init__(self, corpus: VectorFile, *, nprobe: int = 16, nlist: int | None = None, block: int = 65536) -> None:
        try:
            import faiss
        except ImportError as e:
            raise ImportError("search='faiss' needs faiss-cpu: pip install 'synth[faiss]'") from e
        m, dim = len(corpus), corpus.shape[1]
        nlist = nlist or max(1, min(int(4 * np.sqrt(m)), m // 39 or 1))
        self.quantizer = faiss.IndexFlatIP(dim)
        trainer = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(m, size=min(m, max(nlist * 39, 1)), replace=False))
        trainer.train(corpus.take(sample))  # trains the quantizer: its vectors are the centroids
        del trainer
        labels = np.empty(m, np.int64)
        for start, rows in iter_chunks(corpus, block):
            labels[start : start + len(rows)] = self.quantizer.search(np.ascontiguousarray(rows), 1)[1][:, 0]
        self.order = np.argsort(labels, kind="stable")  # file row -> corpus index
        self.starts = np.zeros(nlist + 1, np.int64)  # cluster c: file rows starts[c]:starts[c + 1]
        self.starts[1:] = np.cumsum(np.bincount(labels, minlength=nlist))
        del labels
        # The sorted copy lives in a folder of its own beside the corpus file, removed with the index.
        self._tmp = tempfile.TemporaryDirectory(prefix="synth-ivf-", dir=corpus.path.parent)
        path = Path(self._tmp.name) / "by-cluster.npy"
        with path.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (m, dim)})
            for start in range(0, m, block):
                f.write(corpus.take(self.order[start : start + block]).tobytes())
        self.file = VectorFile(path)
        self.nlist, self.nprobe = nlist, min(nprobe, nlist)

    def close(self) -> None:
        self._tmp.cleanup()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(q)
        out_idx = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if not n or not k or not len(self.order):
            return out_idx, out_scores
        probes = self.quantizer.search(q, self.nprobe)[1]
        size = max(1, CANDIDATE_LIMIT // (self.nprobe * k))
        for qs in range(0, n, size):
            idx, scores = self._search_batch(q[qs : qs + size], probes[qs : qs + size], k)
            out_idx[qs : qs + size], out_scores[qs : qs + size] = _top_k_of_candidates(idx, scores, k)
        return out_idx, out_scores

    def _search_batch(self, q: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every query's candidates: slot j holds the top-k of the j-th cluster it probes."""
        n, nprobe = probes.shape
        cand_idx = np.full((n, nprobe * k), -1, dtype=np.int64)
        cand_scores = np.full((n, nprobe * k), -np.inf, dtype=np.float32)
        flat = probes.ravel()
        by_cluster = np.argsort(flat, kind="stable")
        clusters, first = np.unique(flat[by_cluster], return_index=True)
        bounds = np.append(first, len(flat))
        dim = self.file.shape[1]
        with self.file.path.open("rb") as f:
            for c, lo, hi in zip(clusters.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                a, b = (int(self.starts[c]), int(self.starts[c + 1])) if c >= 0 else (0, 0)
                if a == b:
                    continue
                f.seek(self.file.offset + a * dim * 4)
                vectors = np.fromfile(f, dtype=np.float32, count=(b - a) * dim).reshape(-1, dim)
                rows, slot = np.divmod(by_cluster[lo:hi], nprobe)
                scores = q[rows] @ vectors.T
                # A cluster's rows are in corpus order (a stable sort): the lowest column wins a tie.
                kk = min(k, b - a)
                cols, vals = _chunk_top_k(scores, 0, kk, ordered=False, top_k=_top_k_numpy)
                where = slot[:, None] * k + np.arange(kk)
                cand_idx[rows[:, None], where] = self.order[a + cols]
                cand_scores[rows[:, None], where] = vals
        return cand_idx, cand_scores


def _top_k_of_candidates(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score desc, index asc) of distinct candidates padded with -1 / -inf."""
    width = idx.shape[1]
    if width <= k:
        pad = k - width
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return _sort_rows(idx, scores, k)
    cols, top, after = _top_k_numpy(scores, k)
    tied = np.flatnonzero(after >= top[:, k - 1])  # a tie at the cut: the lower index must win
    picked = np.take_along_axis(idx, cols, axis=1)
    if len(tied):
        full_idx, full_scores = _sort_rows(idx[tied], scores[tied], k)
        picked, top = picked.copy(), top.copy()
        picked[tied], top[tied] = full_idx, full_scores
    return _sort_rows(picked, top, k)
