"""Evaluation sets on a BEIR dataset: can users trust and afford them?

1. pooled: four retrievers (BM25, MiniLM zero-shot, MiniLM fine-tuned on synth's own
   beir-queries output, the hashing embedder) on the full test split and on pooled downsampled
   splits (`synth eval pool`, several sizes; a query sample is drawn with each of --pool-seeds):
   Spearman of their nDCG@10 ranking, eval speed-up. Pooling reuses the full runs' rankings of
   BM25 and MiniLM (what `synth eval pool` would compute again); every evaluation is a real one,
   timed, with no embedding cache. The speed-up comes three ways: summed seconds of the four,
   texts a dense model embeds (load-free), and MiniLM full vs one pooled split timed in
   alternating rounds (--timing-config, --timing-rounds) so both see the same machine load.
   --pooled-eval restricted (for a loaded machine): MiniLM/hashing scores on pooled splits read
   off their full rankings (exact, see restricted()), BM25 re-indexed; --timed-configs embed one.
   Results are kept per evaluation under <work>/evals/: a killed run resumes (delete that folder
   after changing the synthetic data or the fine-tune).
2. longembed: MiniLM (and BM25, which does not truncate) accuracy@1 on passkey and needle sets
   at 128/256/512/1024 MiniLM tokens, split by whether the inserted sentence starts within the
   256 tokens MiniLM reads.
3. limit: LIMIT small (1000 queries, k = 2, 46 documents): recall@2/@10 of MiniLM, BM25 and
   hashing; with --limit-reference, the same on the paper's released LIMIT-small.
4. shift: TTE depth of the synthetic queries vs the real test queries, and half vs half of the
   real queries as the control (plot: <work>/shift.png).

The synthetic data: --synthetic DIR (a `synth generate recipes/beir-queries.yaml` output on a
corpus sample), else generated here on --docs documents (starts a vLLM engine: on a shared
machine wrap the whole command in `flock /tmp/synth-engine.lock`). Prints tables, writes
<work>/results.json and prints it as the last line.

    python benchmarks/evalsets.py --data ../shared/data/nfcorpus --work /tmp/evalsets-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import bench as quality  # noqa: E402  (benchmarks/quality/bench.py: corpus sample, fine-tune)

LENGTHS = [128, 256, 512, 1024]


class Precomputed:
    """A retriever replaying another's full-corpus ranking (by query text): pooling without re-embedding."""

    def __init__(self, name: str, ranked: dict[str, list[str]], queries: dict[str, str]) -> None:
        self.name = name
        self.by_text = {queries[q]: run for q, run in ranked.items()}

    def rank(self, doc_ids: Any, doc_texts: Any, queries: list[str], k: int) -> list[list[str]]:
        return [self.by_text[q][:k] for q in queries]


def synthetic_output(args: argparse.Namespace, data: Any) -> Path:
    if args.synthetic:
        return args.synthetic
    out = args.work / "synthetic"
    if (out / ".synth-output").exists():
        return out
    subset = quality.corpus_subset(data, args, args.work)
    cmd = [sys.executable, "-m", "synth.cli", "generate", str(REPO / "recipes" / "beir-queries.yaml")]
    cmd += ["--set", f"source.path={subset}", "-o", str(out)]
    print("generating:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def fine_tuned(args: argparse.Namespace, rows: list[dict[str, str]]) -> Path:
    """MiniLM fine-tuned on the synthetic rows with the quality benchmark's recipe (MNRL, seeded)."""
    folder = args.work / "minilm-ft"
    if (folder / "config.json").exists():
        return folder
    started = time.perf_counter()
    model = quality.fine_tune(rows, args, args.work / "ft-ckpt")
    model.save(str(folder))
    print(f"  fine-tuned on {len(rows)} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def cached_eval(args: argparse.Namespace, label: str, run: Any) -> Any:
    """An evaluation's result, stored under <work>/evals/ so a killed benchmark resumes where it stopped."""
    from synth.eval.evaluate import EvalResult

    path = args.work / "evals" / f"{label}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return EvalResult(**saved)
    result = run()
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(vars(result)))
    return result


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def pooled_row(
    full: dict[str, Any], small: dict[str, Any], names: list[str], stats: Any, corpus: int
) -> dict[str, Any]:
    """One pooled split against the full one: its size, every nDCG@10, Spearman, speed-ups."""
    dense = ("minilm", "minilm-ft")
    return {
        "queries": stats.queries,
        "top_k": stats.top_k,
        "documents": stats.documents,
        "judged": stats.judged_documents,
        "ndcg@10": {n: round(small[n].metrics["ndcg@10"], 4) for n in names},
        "seconds": {n: round(small[n].seconds, 2) for n in names if small[n].seconds},
        "spearman": round(
            spearman([full[n].metrics["ndcg@10"] for n in names], [small[n].metrics["ndcg@10"] for n in names]), 3
        ),
        # texts a dense model embeds, full / pooled: the speed-up free of machine load
        "texts_ratio": round((corpus + full["minilm"].queries) / (stats.documents + stats.queries), 2),
        **(
            {
                "speedup": round(sum(full[n].seconds for n in names) / sum(small[n].seconds for n in names), 2),
                "speedup_dense": round(sum(full[n].seconds for n in dense) / sum(small[n].seconds for n in dense), 2),
            }
            if all(small[n].seconds for n in names)
            else {}
        ),
    }


def pooled_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration over its seeds: Spearman mean/min, how many seeds reach 0.9, median speed-ups."""
    from statistics import mean, median

    out: dict[str, Any] = {}
    for spec in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == spec]
        rho = [r["spearman"] for r in group]
        out[spec] = {
            "seeds": len(group),
            "spearman_mean": round(mean(rho), 3),
            "spearman_min": min(rho),
            "seeds_at_0.9": sum(x >= 0.9 for x in rho),
            "documents_median": median(r["documents"] for r in group),
            "texts_ratio_median": median(r["texts_ratio"] for r in group),
        }
        for key in ("speedup", "speedup_dense", "speedup_minilm"):
            if all(key in r for r in group):
                out[spec][f"{key}_median"] = median(r[key] for r in group)
    return out


def restricted(full: Any, folder: Path) -> Any:
    """A static-embedding retriever's result on a pooled split, read off its full-corpus ranking.

    With exact search and document vectors that do not depend on the rest of the corpus (MiniLM,
    the hashing embedder; not BM25, whose IDF does), the ranking over a sub-corpus is the full
    ranking with the other documents left out, wherever the full top-250 holds 10 pooled
    documents (`short` counts the queries where it does not). Exact for the hashing embedder; for
    MiniLM up to float noise (batches pad differently; measured: 0.3541 read off vs 0.3514
    re-embedded on one 30-query split). For a machine too loaded to embed every pooled split.
    """
    from synth.eval.beir import load_beir
    from synth.eval.evaluate import EvalResult
    from synth.eval.metrics import retrieval_metrics

    pooled = load_beir(folder)
    qrels, keep = pooled.qrels["test"], set(pooled.corpus)
    ranked = {q: [d for d in full.ranked[q] if d in keep][:10] for q in qrels}
    metrics = {k: v for k, v in retrieval_metrics(ranked, qrels).items() if k in ("ndcg@10", "mrr@10")}
    metrics["short"] = sum(len(r) < 10 for r in ranked.values())
    return EvalResult(str(folder), "test", full.model, len(qrels), len(keep), metrics, 0.0, ranked)


def pooled_part(args: argparse.Namespace, data: Any, retrievers: dict[str, Any]) -> dict[str, Any]:
    from synth.eval.evaluate import evaluate_data, evaluate_folder
    from synth.eval.pooled import build_pooled

    full = {}
    for name, r in retrievers.items():
        full[name] = cached_eval(
            args, f"full-{name}", lambda r=r: evaluate_data(r, data, "test", folder=args.data, recall_cutoffs=[250])
        )
        print(f"  full {name}: nDCG@10 {full[name].metrics['ndcg@10']:.4f} in {full[name].seconds:.1f} s", flush=True)
    queries = data.queries
    pool_with = [
        Precomputed("bm25", full["bm25"].ranked, queries),
        Precomputed("minilm", full["minilm"].ranked, queries),
    ]
    out: dict[str, Any] = {"full": {n: {**r.as_dict(), "dataset": "full"} for n, r in full.items()}, "configs": []}
    names = list(retrievers)
    seeds = [int(x) for x in args.pool_seeds.split(",")]
    for spec in args.pool_configs.split(","):
        q_text, k_text = spec.split(":")
        max_queries = None if q_text == "all" else int(q_text)
        for seed in seeds if max_queries else [args.seed]:  # a query sample is one draw: several seeds
            label = f"pool-{q_text}-{k_text}" + (f"-s{seed}" if max_queries else "")
            folder = args.work / label
            stats = build_pooled(args.data, folder, pool_with, top_k=int(k_text), max_queries=max_queries, seed=seed)
            # (a resumed run rebuilds the same folder: pooling is deterministic given the stored rankings)
            small = {
                n: restricted(full[n], folder)
                if args.pooled_eval == "restricted" and n != "bm25"
                else cached_eval(args, f"{label}-{n}", lambda r=r, f=folder: evaluate_folder(f, r))
                for n, r in retrievers.items()
            }
            row = pooled_row(full, small, names, stats, len(data.corpus))
            if args.pooled_eval == "restricted":
                row["short"] = {n: small[n].metrics["short"] for n in names if n != "bm25"}
                if seed == seeds[0] and spec in args.timed_configs.split(","):  # one real, timed MiniLM run
                    real = cached_eval(
                        args, f"{label}-minilm", lambda f=folder: evaluate_folder(f, retrievers["minilm"])
                    )
                    row["minilm_real_ndcg@10"] = round(real.metrics["ndcg@10"], 4)
                    row["seconds"] = {"minilm": round(real.seconds, 2)}
                    row["speedup_minilm"] = round(full["minilm"].seconds / real.seconds, 2)
            out["configs"].append({"config": spec, "seed": seed, **row})
            print(f"  {label}: {row}", flush=True)
    out["summary"] = pooled_summary(out["configs"])
    for spec, s in out["summary"].items():
        print(f"  {spec}: {s}", flush=True)
    if args.timing_rounds:
        out["timing"] = interleaved_timing(args, data, retrievers["minilm"], seeds[0])
        print(f"  timing: {out['timing']}", flush=True)
    return out


def interleaved_timing(args: argparse.Namespace, data: Any, retriever: Any, seed: int) -> dict[str, Any]:
    """MiniLM on the full split and on one pooled split, alternating, so both see the same machine load."""
    from statistics import median

    from synth.eval.evaluate import evaluate_data, evaluate_folder

    q_text, k_text = args.timing_config.split(":")
    folder = args.work / (f"pool-{q_text}-{k_text}" + ("" if q_text == "all" else f"-s{seed}"))
    path = args.work / "evals" / f"timing-{folder.name}-{args.timing_rounds}.json"
    if path.exists():
        return json.loads(path.read_text())
    full, small = [], []
    for _ in range(args.timing_rounds):
        full.append(round(evaluate_data(retriever, data, "test", folder=args.data).seconds, 2))
        small.append(round(evaluate_folder(folder, retriever).seconds, 2))
    out = {
        "model": "minilm",
        "pooled": folder.name,
        "full_seconds": full,
        "pooled_seconds": small,
        "speedup_median": round(median(f / s for f, s in zip(full, small, strict=True)), 2),
    }
    path.write_text(json.dumps(out))
    return out


def longembed_part(args: argparse.Namespace, minilm: Any, bm25: Any) -> dict[str, Any]:
    from synth.eval.beir import load_beir
    from synth.eval.evaluate import evaluate_folder
    from synth.eval.longembed import build_longembed

    out: dict[str, Any] = {}
    for task in ("passkey", "needle"):
        folder = args.work / task
        build_longembed(
            task, args.data, folder, tokenizer="all-minilm-l6-v2", lengths=LENGTHS, queries=50, seed=args.seed
        )  # type: ignore[arg-type]
        for length in LENGTHS:
            sub = folder / f"tokens-{length}"
            rows = [json.loads(line) for line in (sub / "corpus.jsonl").read_text().splitlines()]
            start = {r["_id"]: r["metadata"]["insert_start"] for r in rows}
            qrels = load_beir(sub).qrels["test"]
            entry: dict[str, Any] = {}
            for name, retriever in (("minilm", minilm), ("bm25", bm25)):
                result = evaluate_folder(sub, retriever)
                hits = {q: result.ranked[q][0] in docs for q, docs in qrels.items()}
                gold = {q: next(iter(docs)) for q, docs in qrels.items()}
                seen = [hits[q] for q in qrels if start[gold[q]] < 256]
                unseen = [hits[q] for q in qrels if start[gold[q]] >= 256]
                entry[name] = {
                    "accuracy@1": round(result.metrics["accuracy@1"], 3),
                    "starts_within_256": [sum(seen), len(seen)],
                    "starts_past_256": [sum(unseen), len(unseen)],
                }
            out[f"{task}-{length}"] = entry
            print(f"  {task} {length}: {entry}", flush=True)
    return out


def reference_limit(path: Path, work: Path) -> Path:
    """The paper's LIMIT-small (corpus/queries/qrels .jsonl) copied into a BEIR folder in the work dir."""
    from synth.eval.beir import write_beir_files

    corpus = [json.loads(line) for line in (path / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = {r["_id"]: r["text"] for r in map(json.loads, (path / "queries.jsonl").read_text().splitlines()) if r}
    qrels: dict[str, dict[str, int]] = {}
    for line in (path / "qrels.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            qrels.setdefault(r["query-id"], {})[r["corpus-id"]] = int(r["score"])
    folder = work / "limit-reference"
    write_beir_files(folder, corpus, queries, qrels)
    return folder


def limit_part(args: argparse.Namespace, retrievers: dict[str, Any]) -> dict[str, Any]:
    from synth.eval.evaluate import evaluate_folder
    from synth.eval.limit import build_limit

    folders = {"synth": args.work / "limit-small"}
    build_limit(folders["synth"], queries=1000, k=2, size="small", seed=args.seed)
    if args.limit_reference:
        folders["paper"] = reference_limit(args.limit_reference, args.work)
    out: dict[str, Any] = {}
    for label, folder in folders.items():
        for name, r in retrievers.items():
            m = evaluate_folder(folder, r, recall_cutoffs=[2, 10, 20]).metrics
            out[f"{label}/{name}"] = {k: round(m[k], 4) for k in ("recall@2", "recall@10", "recall@20", "ndcg@10")}
            print(f"  LIMIT small ({label}) {name}: {out[f'{label}/{name}']}", flush=True)
    return out


def shift_part(args: argparse.Namespace, synthetic: Path, minilm: Any) -> dict[str, Any]:
    from synth.eval.shift import depth_rank_test, read_texts, shift_check, shift_plot

    generated = read_texts(synthetic, "anchor")
    real = read_texts(args.data, split="test")
    train = read_texts(args.data, split="train")
    tests = shift_check(generated, real, minilm.embedder, seed=args.seed)
    # real train queries vs real test queries: how far another sample of real queries sits
    vectors = minilm.embedder.embed(real + train[:2000], role="query")
    tests.append(depth_rank_test(vectors[: len(real)], vectors[len(real) :], "real train vs real test"))
    shift_plot(tests, args.work / "shift.png")
    for t in tests:
        print(f"  shift {t.as_dict()}", flush=True)
    return {t.label: t.as_dict() for t in tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder (e.g. ../shared/data/nfcorpus)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/synth-evalsets"))
    parser.add_argument("--synthetic", type=Path, default=None, help="a beir-queries output (else generated here)")
    parser.add_argument("--docs", type=int, default=300, help="corpus documents given to generation")
    parser.add_argument("--parts", default="pooled,longembed,limit,shift")
    parser.add_argument("--pool-configs", default="all:250,100:10,50:10,30:10", help="max queries:top k, ...")
    parser.add_argument("--pool-seeds", default="0,1,2", help="query-sample seeds for configs that sample queries")
    parser.add_argument(
        "--pooled-eval",
        choices=["real", "restricted"],
        default="real",
        help="restricted: dense/hashing scores on pooled splits read off their full ranking (see restricted())",
    )
    parser.add_argument("--timed-configs", default="", help="restricted mode: configs whose first seed MiniLM embeds")
    parser.add_argument("--timing-config", default="30:10", help="the pooled config timed against the full split")
    parser.add_argument("--timing-rounds", type=int, default=3, help="interleaved full/pooled MiniLM rounds (0: off)")
    parser.add_argument("--limit-reference", type=Path, default=None, help="the paper's LIMIT-small folder")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-seq-length", type=int, default=192, help="fine-tune only; evaluation uses 256")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args.work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))

    from synth.eval.beir import load_beir
    from synth.eval.evaluate import DenseRetriever, make_retriever
    from synth.eval.shift import read_texts

    started = time.perf_counter()
    data = load_beir(args.data)
    results: dict[str, Any] = {"data": str(args.data), "seed": args.seed}
    bm25, minilm, hashing = make_retriever("bm25"), make_retriever("all-minilm-l6-v2"), make_retriever("hashing")
    if parts & {"pooled", "shift"}:
        synthetic = synthetic_output(args, data)
        results["synthetic_rows"] = len(read_texts(synthetic, "anchor"))
    if "pooled" in parts:
        from datasets import load_from_disk

        rows = load_from_disk(str(synthetic)).to_list()
        print(f"fine-tuning MiniLM on {len(rows)} synthetic rows ...", flush=True)
        tuned = make_retriever(str(fine_tuned(args, rows)), max_seq_length=256)
        named = {
            "bm25": bm25,
            "minilm": DenseRetriever(minilm.embedder, "minilm"),  # type: ignore[attr-defined]
            "minilm-ft": DenseRetriever(tuned.embedder, "minilm-ft"),  # type: ignore[attr-defined]
            "hashing": hashing,
        }
        print("pooled vs full ...", flush=True)
        results["pooled"] = pooled_part(args, data, named)
    if "longembed" in parts:
        print("passkey / needle ...", flush=True)
        results["longembed"] = longembed_part(args, minilm, bm25)
    if "limit" in parts:
        print("LIMIT small ...", flush=True)
        results["limit"] = limit_part(args, {"minilm": minilm, "bm25": bm25, "hashing": hashing})
    if "shift" in parts:
        print("shift check ...", flush=True)
        results["shift"] = shift_part(args, synthetic, minilm)
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
