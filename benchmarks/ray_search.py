"""Mining's exact search on the driver vs as a Ray Data stage (synth/executors/ray_search.py), one machine.

The same query batch (mining's 16,384) against the same stored corpus vectors (a `.npy` of
`--docs` x `--dim` float32, random, normalised), searched by `top_k` in this process (the local
search reads the corpus file the same way) and by `ray_top_k` on a local cluster started here
(`ray.init(num_cpus=...)`, not counted). Rounds alternate; results must be equal. On a 2-core
machine the stage cannot win (the driver's BLAS already uses both cores); the figure is its
overhead, and on a cluster the stage's tasks spread over every node's cores.

    .venv/bin/python benchmarks/ray_search.py --docs 200000 --queries 16384 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from synth.executors.ray_search import ray_top_k
from synth.mining.search import VectorFile, top_k
from synth.mining.stream import CORPUS_BLOCK


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=16_384)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=33)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import ray

    folder = Path(tempfile.mkdtemp(prefix="synth-ray-search-"))
    np.save(folder / "corpus.npy", vectors(args.docs, args.dim, 0))
    corpus, queries = VectorFile(folder / "corpus.npy"), vectors(args.queries, args.dim, 1)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict[str, list[float]] = {"driver": [], "ray": []}
    try:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            want = top_k(queries, corpus, args.k, corpus_chunk=CORPUS_BLOCK)
            times["driver"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = ray_top_k(ray, queries, corpus, args.k, CORPUS_BLOCK)
            times["ray"].append(time.perf_counter() - t0)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), "results differ"
    finally:
        ray.shutdown()
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    print(f"{args.queries} queries x {args.docs} docs, dim {args.dim}, k {args.k}, {args.cpus} CPUs, results equal")
    for name, ts in times.items():
        print(f"{name:7} min {min(ts):7.2f} s  median {statistics.median(ts):7.2f} s  max {max(ts):7.2f} s")
    ratio = statistics.median(times["ray"]) / statistics.median(times["driver"])
    print(f"ray / driver (median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
