"""`--executor ray`: exact top-k over the stored corpus vectors (mining) and the round-trip rule's
scan (each query's own passage's rank and margin) as Ray Data `map_batches` stages.

Why: mining's search is O(queries x documents); on the driver it runs on one machine's cores
whatever the cluster holds. Here the driver writes a batch of query vectors next to the corpus
vectors (`.npy` files mining already keeps on disk) and each task of one `map_batches` stage reads
one chunk of queries and streams the corpus file through `top_k`, the same function, chunk sizes
and tie order as the local search (score descending, then corpus index), so the result equals the
local one. Every worker must read the driver's files: on one machine they do; on a multi-node
cluster put the run's temporary folder on shared storage (TMPDIR=/mnt/shared/tmp).

Resources: mining alternates between embedding a batch of queries and searching it, so while the
search runs the embedding actors, which reserve the cluster's CPUs, are idle. Search tasks
therefore reserve no CPU by default (a task reserving one would wait forever behind them) and at
most as many run at once as the cluster has CPUs. Knobs: SYNTH_RAY_SEARCH_CPUS (CPUs each task
reserves, default 0), SYNTH_RAY_SEARCH_TASKS (tasks at once, default the cluster's CPUs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from synth.mining.search import VectorFile, top_k

QUERY_CHUNK = 1024  # queries per task: StreamingTopK's own query chunk, so the products are the same


def search_chunks(
    batch: dict[str, np.ndarray], *, queries: str, corpus: str, rows: int, k: int, corpus_chunk: int
) -> dict[str, np.ndarray]:
    """One Ray Data batch of chunk starts -> (query row, its top-k ids and scores) for every query in them."""
    query_file, corpus_file = VectorFile(queries), VectorFile(corpus).head(rows)
    out_rows, out_idx, out_scores = [], [], []
    for start in batch["start"].tolist():
        q = query_file.read(start, start + QUERY_CHUNK)
        idx, scores = top_k(q, corpus_file, k, query_chunk=QUERY_CHUNK, corpus_chunk=corpus_chunk)
        out_rows.append(np.arange(start, start + len(q), dtype=np.int64))
        out_idx.append(idx)
        out_scores.append(scores)
    return {"row": np.concatenate(out_rows), "idx": np.concatenate(out_idx), "scores": np.concatenate(out_scores)}


def _chunk_stage(ray: Any, fn: Any, n: int, **fn_kwargs: Any) -> Any:
    """A Ray Data stage calling `fn` on each chunk of QUERY_CHUNK of `n` queries (one task per chunk)."""
    tasks = int(os.environ.get("SYNTH_RAY_SEARCH_TASKS", 0)) or int(ray.cluster_resources().get("CPU", 1))
    starts = ray.data.from_items([{"start": s} for s in range(0, n, QUERY_CHUNK)])
    return starts.map_batches(
        fn,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=max(1, tasks)),
        num_cpus=float(os.environ.get("SYNTH_RAY_SEARCH_CPUS", 0)),
        fn_kwargs=fn_kwargs,
    )


def ray_top_k(
    ray: Any, queries: np.ndarray, corpus: VectorFile, k: int, corpus_chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k(queries, corpus, k)` computed by a Ray Data stage, one task per chunk of queries."""
    n = len(queries)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or k == 0 or len(corpus) == 0:
        return out_idx, out_scores
    folder = Path(corpus.path).parent
    with tempfile.NamedTemporaryFile(dir=folder, prefix="queries-", suffix=".npy", delete=False) as f:
        np.save(f, np.ascontiguousarray(queries, dtype=np.float32))
        query_path = f.name
    try:
        found = _chunk_stage(
            ray, search_chunks, n, queries=query_path, corpus=str(corpus.path), rows=len(corpus), k=k,
            corpus_chunk=corpus_chunk,
        )  # fmt: skip
        for batch in found.iter_batches(batch_size=None, batch_format="numpy"):
            rows = batch["row"]
            out_idx[rows, : batch["idx"].shape[1]] = batch["idx"]
            out_scores[rows, : batch["scores"].shape[1]] = batch["scores"]
    finally:
        os.unlink(query_path)
    return out_idx, out_scores


def scan_chunks(
    batch: dict[str, np.ndarray], *, queries: str, targets: str, corpus: str, rows: int
) -> dict[str, np.ndarray]:
    """One Ray Data batch of chunk starts -> the round-trip `scan` of every query in them."""
    from synth.steps.roundtrip_corpus import scan

    query_file, corpus_file = VectorFile(queries), VectorFile(corpus).head(rows)
    own_passages = np.load(targets, mmap_mode="r")
    parts = []
    for start in batch["start"].tolist():
        q = query_file.read(start, start + QUERY_CHUNK)
        got = scan(q, np.asarray(own_passages[start : start + len(q)]), corpus_file)
        parts.append((np.arange(start, start + len(q), dtype=np.int64), got))
    return {
        "row": np.concatenate([r for r, _ in parts]),
        **{name: np.concatenate([getattr(g, name) for _, g in parts]) for name in _SCAN_FIELDS},
    }


_SCAN_FIELDS = ("own", "rank", "best_other", "best_other_index")


def ray_scan(ray: Any, queries: np.ndarray, targets: np.ndarray, corpus: VectorFile) -> Any:
    """The round-trip rule's `scan(queries, targets, corpus)` computed by a Ray Data stage, one task
    per chunk of queries: each task scores its chunk exactly as the local scan does (same query
    chunks, same corpus blocks), so ranks, margins and the best other documents are equal."""
    from synth.steps.roundtrip_corpus import Scan, scan

    n = len(queries)
    if n == 0 or len(corpus) == 0:
        return scan(queries, targets, corpus)
    folder = Path(corpus.path).parent
    paths = []
    try:
        for array in (np.ascontiguousarray(queries, dtype=np.float32), np.asarray(targets, np.int64)):
            with tempfile.NamedTemporaryFile(dir=folder, prefix="scan-", suffix=".npy", delete=False) as f:
                np.save(f, array)
                paths.append(f.name)
        found = _chunk_stage(
            ray, scan_chunks, n, queries=paths[0], targets=paths[1], corpus=str(corpus.path), rows=len(corpus)
        )
        out = {
            "own": np.zeros(n, np.float32),
            "rank": np.zeros(n, np.int64),
            "best_other": np.full(n, -np.inf, np.float32),
            "best_other_index": np.full(n, -1, np.int64),
        }
        for batch in found.iter_batches(batch_size=None, batch_format="numpy"):
            for name in _SCAN_FIELDS:
                out[name][batch["row"]] = batch[name]
    finally:
        for path in paths:
            os.unlink(path)
    return Scan(**out)
