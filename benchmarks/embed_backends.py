"""Embedder backends (torch, onnx, onnx-int8) on NFCorpus: docs/s and nDCG@10, same model and texts.

    .venv/bin/python benchmarks/embed_backends.py --data ../shared/data/nfcorpus [--rounds 3] [--speed-docs 400]

Baseline: the torch backend (sentence-transformers' default path). For each backend:
1. quality: synth's evaluator (synth/eval) on the test split, exact search over the whole
   corpus, no embedding cache: nDCG@10, Recall@100, and the texts/s of that whole run;
2. speed: `--rounds` interleaved rounds (the backend order rotates each round, so every backend
   sees the same machine load) embedding the first `--speed-docs` corpus documents; median docs/s
   and the ratio to torch.
The ONNX exports go to synth's model cache (SYNTH_HOME) and are made once: the first load's
export time is printed apart. Prints a table and, as the last line, a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from synth.embedders import SentenceTransformerEmbedder
from synth.eval.beir import load_beir
from synth.eval.evaluate import DenseRetriever, evaluate_data
from synth.specs import EmbedderSpec

BACKENDS = ("torch", "onnx", "onnx-int8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nfcorpus"))
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--speed-docs", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    backends = args.backends.split(",")
    data = load_beir(args.data)
    embedders, load_seconds = {}, {}
    for b in backends:
        started = time.perf_counter()
        embedders[b] = SentenceTransformerEmbedder(
            EmbedderSpec(model=args.model, backend=b, batch_size=args.batch_size)
        )
        load_seconds[b] = time.perf_counter() - started
        print(f"{b}: loaded in {load_seconds[b]:.1f} s (exported now: {embedders[b].exported})", flush=True)

    docs = [data.doc_text(d) for d in list(data.corpus)[: args.speed_docs]]
    rates: dict[str, list[float]] = {b: [] for b in backends}
    for r in range(args.rounds):
        order = backends[r % len(backends) :] + backends[: r % len(backends)]
        for b in order:
            started = time.perf_counter()
            embedders[b].embed(docs, role="document")
            rates[b].append(len(docs) / (time.perf_counter() - started))
        print(f"round {r + 1}: " + ", ".join(f"{b} {rates[b][-1]:.1f}" for b in backends) + " docs/s", flush=True)

    quality = {}
    if not args.skip_quality:
        for b in backends:
            res = evaluate_data(DenseRetriever(embedders[b], b), data, "test", folder=args.data)
            texts = res.documents + res.queries
            quality[b] = {
                "ndcg@10": res.metrics["ndcg@10"],
                "recall@100": res.metrics.get("recall@100"),
                "texts_per_s": texts / res.seconds,
                "seconds": res.seconds,
            }
            print(f"{b}: nDCG@10 {res.metrics['ndcg@10']:.4f}, {texts / res.seconds:.1f} texts/s full run", flush=True)

    base = statistics.median(rates[backends[0]]) if args.rounds else float("nan")
    print(f"\n| backend | docs/s (median of {args.rounds}) | x {backends[0]} | nDCG@10 | delta | full-run texts/s |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for b in backends:
        med = statistics.median(rates[b]) if args.rounds else float("nan")
        q = quality.get(b, {})
        delta = q["ndcg@10"] - quality[backends[0]]["ndcg@10"] if q else float("nan")
        summary[b] = {"docs_per_s": med, "rounds": rates[b], "ratio": med / base, "load_s": load_seconds[b], **q}
        nd = f"{q['ndcg@10']:.4f}" if q else "-"
        tps = f"{q['texts_per_s']:.1f}" if q else "-"
        print(f"| {b} | {med:.1f} | {med / base:.2f} | {nd} | {delta:+.4f} | {tps} |")
    print(json.dumps({"model": args.model, "speed_docs": len(docs), "backends": summary}))


if __name__ == "__main__":
    main()
