"""Scale benchmark: the beir-queries recipe on 10k / 100k / 1M synthetic documents, wall time and peak RSS.

Models cost almost nothing here (`llm.backend=dry-run`, `embedder.model=hashing`), so what shows is
the runner's own cost: reading the source, rows between steps, the global steps' inputs, export.
Each run is `synth generate` in a subprocess with an empty cache; peak RSS is the child's
ru_maxrss from wait4 (the same number as its VmHWM at exit).

Documents are built from NFCorpus (../shared/data/nfcorpus) by recombination: document i takes
3-6 sentences drawn (seeded by i) from the pool of all NFCorpus sentences, and the title of a
random NFCorpus document; ids are `d<i>`. Same size, same file, every time.

Variants:
- `full`: recipes/beir-queries.yaml as shipped (exact search in round-trip and mining: both are
  O(queries x documents), so 1M documents take hours on 2 cores whatever the runner does);
- `faiss`: the recipe as shipped with `search: faiss` in its round-trip rule and its mining step
  (IVF, nprobe 16 of ~4 sqrt(m) clusters: a query scans ~4 sqrt(m) documents, not m);
- `runner`: the same recipe without the round-trip rule and with `search: faiss` for mining
  (every remaining step is linear in time; mining still holds every query in memory);
- `stream`: generate + the filter's per-shard rules (length, copy, dedup per source), no
  corpus-aware step: what the streaming runner itself costs;
- `mine`: `stream`, then the recipe's mine_negatives step as shipped (exact search): what mining
  adds, without the round-trip rule's second full search.
- `roundtrip`: `stream` with the recipe's round-trip rule at the end of the filter (exact search,
  top_k 20), no mining: what the round-trip rule adds.
- `dedup`: `stream` with a `dedup` rule of `scope: all` (MinHash LSH, threshold 92) at the end of
  the filter: what a global near-duplicate pass adds.

Baseline: the committed code (`git archive HEAD` into --baseline-dir), on the sizes it survives.

  python benchmarks/scale.py --sizes 10000 100000 --variant full --code new head
  python benchmarks/scale.py --sizes 10000 100000 1000000 --variant runner --code new
  python benchmarks/scale.py --sizes 10000 100000 --variant mine --code head new
  python benchmarks/scale.py --sizes 10000 100000 --variant roundtrip --code head new
  python benchmarks/scale.py --sizes 10000 100000 --variant dedup --code head new
  python benchmarks/scale.py --sizes 100000 1000000 --variant faiss --code new
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NFCORPUS = REPO.parent / "shared" / "data" / "nfcorpus" / "corpus.jsonl.gz"
RECIPE = REPO / "recipes" / "beir-queries.yaml"
DOUBLES = ["llm.backend=dry-run", "embedder.model=hashing"]
RUNNER_ONLY = [
    "steps.1.filter.rules=[{rule: length, column: query, min_chars: 8, max_chars: 200},"
    " {rule: copy, column: query, source_column: text}, {rule: dedup, column: query, scope: source}]",
    "steps.2.mine_negatives.search=faiss",
]
STREAM_ONLY = [  # generate + the filter's per-shard rules, no corpus-aware step at all
    "steps=[{generate: {name: queries, template: query.j2, each: {style: [question, keywords]}, output: query}},"
    " {filter: {name: quality, rules: [{rule: length, column: query, min_chars: 8, max_chars: 200},"
    " {rule: copy, column: query, source_column: text}, {rule: dedup, column: query, scope: source}]}}]",
]
MINE_ONLY = [  # the `stream` steps, then the recipe's mine_negatives step as shipped (exact search)
    "steps=[{generate: {name: queries, template: query.j2, each: {style: [question, keywords]}, output: query}},"
    " {filter: {name: quality, rules: [{rule: length, column: query, min_chars: 8, max_chars: 200},"
    " {rule: copy, column: query, source_column: text}, {rule: dedup, column: query, scope: source}]}},"
    " {mine_negatives: {name: negatives, query_column: query, positive_column: text, num_negatives: 1,"
    " range_min: 3, range_max: 30, relative_margin: 0.05}}]",
]
ROUNDTRIP_ONLY = [  # the `stream` steps with the recipe's round-trip rule last in the filter (exact search)
    "steps=[{generate: {name: queries, template: query.j2, each: {style: [question, keywords]}, output: query}},"
    " {filter: {name: quality, rules: [{rule: length, column: query, min_chars: 8, max_chars: 200},"
    " {rule: copy, column: query, source_column: text}, {rule: dedup, column: query, scope: source},"
    " {rule: roundtrip, query_column: query, positive_column: text, top_k: 20}]}}]",
]
DEDUP_ALL = [  # the `stream` steps with a global near-duplicate rule last in the filter
    "steps=[{generate: {name: queries, template: query.j2, each: {style: [question, keywords]}, output: query}},"
    " {filter: {name: quality, rules: [{rule: length, column: query, min_chars: 8, max_chars: 200},"
    " {rule: copy, column: query, source_column: text}, {rule: dedup, column: query, scope: source},"
    " {rule: dedup, name: dedup_all, column: query, scope: all}]}}]",
]
FAISS = ["steps.1.filter.rules.7.search=faiss", "steps.2.mine_negatives.search=faiss"]  # rule 7: roundtrip
VARIANTS = {
    "full": [],
    "faiss": FAISS,
    "runner": RUNNER_ONLY,
    "stream": STREAM_ONLY,
    "mine": MINE_ONLY,
    "roundtrip": ROUNDTRIP_ONLY,
    "dedup": DEDUP_ALL,
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def build_corpus(n: int, folder: Path) -> Path:
    """`n` recombined NFCorpus documents as jsonl (id, title, text); reused when already built."""
    path = folder / f"nfcorpus-recombined-{n}.jsonl"
    if path.is_file():
        return path
    docs = [json.loads(line) for line in gzip.open(NFCORPUS, "rt", encoding="utf-8")]
    sentences = [s.strip() for d in docs for s in _SENTENCE.split(d["text"]) if len(s.strip()) > 20]
    titles = [d["title"] for d in docs if d["title"]]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(n):
            rng = random.Random(i)
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"id": f"d{i}", "title": rng.choice(titles), "text": text}, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


def baseline_code(folder: Path) -> Path:
    """The committed code, exported once (git archive: the working tree is not touched)."""
    if not (folder / "synth" / "__init__.py").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _phase(log: Path) -> str:
    """What the run is doing: the progress line's label (`queries`, `writing dataset`, ...)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 400))
            last = f.read().decode(errors="replace").strip().splitlines()[-1:]
    except OSError:
        return "?"
    return last[0].split(":")[0].strip()[:40] if last else "start"


def run_once(
    code: Path, corpus: Path, variant: str, work: Path, timeout: float, max_rss_mib: int | None = None
) -> dict[str, object]:
    """One `synth generate` with an empty cache: wall seconds, peak RSS (MiB), rows written, and the
    highest RSS sampled (every 0.5 s) in each phase the progress output names."""
    out, cache, log = work / "out", work / "cache", work / "log.txt"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [f"source.path={corpus}", *DOUBLES, *VARIANTS[variant]]
    command = [sys.executable, "-m", "synth.cli", "generate", str(code / RECIPE.relative_to(REPO)), "-o", str(out)]
    for item in sets:
        command += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(code), SYNTH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(command, cwd=code, env=env, stdout=f, stderr=subprocess.STDOUT)
        status, rusage = None, None
        phases: dict[str, int] = {}
        while status is None:
            pid, status_code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = status_code, usage
                break
            rss = _rss_mib(proc.pid)
            phase = _phase(log)
            phases[phase] = max(phases.get(phase, 0), rss)
            over = max_rss_mib is not None and rss > max_rss_mib
            if time.perf_counter() - started > timeout or over:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                why = f"over {max_rss_mib} MiB" if over else f"timeout after {timeout:.0f} s"
                where = log.read_text()[-300:].strip().splitlines()[-1:] or ["?"]
                return {
                    "ok": False,
                    "why": f"{why}, stopped at {time.perf_counter() - started:.0f} s in: {where[0][:120]}",
                    "rss_mib": rusage.ru_maxrss // 1024,
                }
            time.sleep(0.5)
    seconds = time.perf_counter() - started
    ok = os.waitstatus_to_exitcode(status) == 0
    result: dict[str, object] = {"ok": ok, "seconds": round(seconds, 1), "rss_mib": rusage.ru_maxrss // 1024}
    result["rss_by_phase"] = phases
    if ok:
        summary = json.loads((out / "summary.json").read_text())
        result["rows"] = summary["rows"]
        result["steps"] = {s["name"]: s["seconds"] for s in summary["steps"]}
    else:
        result["why"] = log.read_text()[-600:].strip().splitlines()[-1:] or ["?"]
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--variant", choices=list(VARIANTS), default="runner")
    parser.add_argument("--code", nargs="+", choices=["new", "head"], default=["new", "head"])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "synth-scale")
    parser.add_argument("--baseline-dir", type=Path, default=Path(tempfile.gettempdir()) / "synth-scale" / "head")
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    parser.add_argument(
        "--max-rss-mib", type=int, default=None, help="stop a run whose RSS passes this (shared machines)"
    )
    parser.add_argument("--results", type=Path, default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    codes = {"new": REPO, "head": baseline_code(args.baseline_dir) if "head" in args.code else REPO}
    print(f"{'code':5} {'variant':7} {'docs':>9} {'rows':>9} {'seconds':>9} {'peak RSS MiB':>13}", flush=True)
    for size in args.sizes:
        corpus = build_corpus(size, args.data_dir)
        for code in args.code:
            work = args.data_dir / f"run-{code}-{size}"
            got = run_once(codes[code], corpus, args.variant, work, args.timeout, args.max_rss_mib)
            shown = got.get("seconds", "-") if got["ok"] else f"FAILED: {got.get('why')}"
            print(
                f"{code:5} {args.variant:7} {size:>9} {got.get('rows', '-')!s:>9} {shown!s:>9} {got['rss_mib']:>13}",
                flush=True,
            )
            print(f"      RSS MiB sampled by phase: {got.get('rss_by_phase', {})}", flush=True)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps({"code": code, "variant": args.variant, "docs": size, **got}) + "\n")


if __name__ == "__main__":
    main()
