"""Does synth's data train better retrievers? Generate from the corpus alone, fine-tune, evaluate.

The GPL / InPars / Promptagator protocol on a BEIR dataset:
1. zero-shot: the base embedder on the test queries (nDCG@10, Recall@100, MRR@10, exact search);
2. run a recipe on a document subset of the CORPUS ONLY (test queries and qrels never touch
   generation, filtering or mining);
3. fine-tune the base embedder on the output (MultipleNegativesRankingLoss with the negatives);
4. evaluate again; with train qrels, a supervised fine-tune on as many real train pairs is the
   upper bound. Same seed, same step cap and batch size for every fine-tune.
Ablations (--ablations) change one thing each. Prints a table and one JSON line at the end.

    python benchmarks/quality/bench.py --data ../shared/data/nfcorpus --docs 800
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def fine_tune(train_rows: list[dict[str, str]], args: argparse.Namespace, out: Path) -> Any:
    """MiniLM + MNRL on (anchor, positive, negative_1..k) rows; returns the trained model."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    from synth.models import resolve_model

    model = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    model.max_seq_length = args.max_seq_length
    ds = Dataset.from_list(train_rows)
    steps = min(args.max_steps, max(1, len(ds) // args.batch_size) * args.epochs)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # in-batch negatives must not be the positive
        save_strategy="no",
        logging_steps=max(1, steps // 5),
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=ds, loss=losses.MultipleNegativesRankingLoss(model)
    )
    trainer.train()
    return model


def evaluate_model(model: Any, data: Any) -> dict[str, float]:
    from synth.eval.beir import evaluate

    model.max_seq_length = 256
    return {k: round(v, 4) for k, v in evaluate(model, data, "test").items()}


def corpus_subset(data: Any, args: argparse.Namespace, folder: Path) -> Path:
    """The documents generation may see: a seeded sample of the corpus, nothing else."""
    ids = sorted(data.corpus)
    random.Random(args.seed).shuffle(ids)
    path = folder / "corpus_subset.jsonl"
    with path.open("w") as f:
        for doc_id in ids[: args.docs]:
            doc = data.corpus[doc_id]
            f.write(json.dumps({"id": doc_id, "title": doc["title"], "text": doc["text"]}) + "\n")
    return path


def run_synth(recipe_path: Path, overrides: list[str], out: Path, backend: Any, embedder: Any) -> list[dict[str, str]]:
    from datasets import load_from_disk

    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    recipe, recipe_dir = load_recipe(recipe_path, overrides)
    started = time.perf_counter()
    result = run_recipe(recipe, recipe_dir, output_dir=out, llm=backend, embedder=embedder)
    print(f"  recipe run: {len(result.rows)} rows in {time.perf_counter() - started:.0f} s", flush=True)
    for r in result.reports:
        print(f"    {r.name}: {r.rows_in} -> {r.rows_out} {r.dropped or ''} requests={r.requests}", flush=True)
    return load_from_disk(str(out)).to_list()


def supervised_rows(data: Any, n: int, seed: int) -> list[dict[str, str]]:
    pairs = [(q, d) for q, docs in data.qrels["train"].items() for d, r in docs.items() if r > 0 and q in data.queries]
    random.Random(seed).shuffle(pairs)
    return [{"anchor": data.queries[q], "positive": data.doc_text(d)} for q, d in pairs[:n]]


def without_negatives(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"anchor": r["anchor"], "positive": r["positive"]} for r in rows]


def ablation_recipes(recipe_path: Path, work: Path) -> dict[str, Path]:
    """One-change variants of the recipe, written beside the work files (the request cache makes
    the shared generation free). Each changes ONE thing against the recipe as given:
    no filter step; relative_margin 0; plus LLM-written negatives; plus the small-model failure
    rules (truncated, repetition, few-shot leakage, query-likeness); plus the best query per
    passage and style only (Promptagator-style consistency); the positive as the retriever sees
    the document ("title. text")."""
    import yaml

    base = yaml.safe_load(recipe_path.read_text())

    def variant(name: str, change) -> Path:  # type: ignore[no-untyped-def]
        data = json.loads(json.dumps(base))
        change(data)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def filter_rules(d: dict) -> list[dict]:
        return next(s["filter"]["rules"] for s in d["steps"] if "filter" in s)

    def no_filters(d: dict) -> None:
        d["steps"] = [s for s in d["steps"] if "filter" not in s]

    def margin_0(d: dict) -> None:
        for s in d["steps"]:
            if "mine_negatives" in s:
                s["mine_negatives"]["relative_margin"] = 0.0

    def llm_negatives(d: dict) -> None:
        mine_at = next(i for i, s in enumerate(d["steps"]) if "mine_negatives" in s)
        step = {"generate": {"name": "llm_negatives", "template": "hard_negative.j2", "output": "llm_negative"}}
        d["steps"].insert(mine_at, step)
        d.setdefault("output", {}).setdefault("columns", {})["negatives"] = ["llm_negative"]

    def failure_rules(d: dict) -> None:
        generate = next(s["generate"] for s in d["steps"] if "generate" in s)
        column = generate["output"]
        filter_rules(d)[0:0] = [
            {"rule": "truncated", "step": generate["name"], "column": column},
            {"rule": "repetition", "column": column},
            {"rule": "leakage", "column": column, "template": generate["template"], "source_column": "text"},
            {"rule": "querylike", "column": column, "source_column": "text"},
        ]

    def best_per_source(d: dict) -> None:
        for rule in filter_rules(d):
            if rule["rule"] == "roundtrip":
                rule["keep_best_per_source"] = 1

    def title_in_positive(d: dict) -> None:
        expression = "(title ~ '. ' ~ text) if title else text"
        d["steps"].insert(0, {"map": {"name": "document", "columns": {"document": expression}}})
        for s in d["steps"]:
            for rule in s.get("filter", {}).get("rules", []):
                if rule.get("positive_column") == "text":
                    rule["positive_column"] = "document"
            if "mine_negatives" in s:
                s["mine_negatives"]["positive_column"] = "document"
        d.setdefault("output", {}).setdefault("columns", {})["positive"] = "document"

    return {
        "no_filters": variant("no_filters", no_filters),
        "relative_margin_0": variant("relative_margin_0", margin_0),
        "with_llm_negatives": variant("with_llm_negatives", llm_negatives),
        "plus_failure_rules": variant("plus_failure_rules", failure_rules),
        "plus_best_per_source": variant("plus_best_per_source", best_per_source),
        "title_in_positive": variant("title_in_positive", title_in_positive),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder (corpus, queries, qrels_*.tsv[.gz])")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "beir-queries.yaml")
    parser.add_argument("--docs", type=int, default=800, help="corpus documents given to generation")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="also run the one-change ablations")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from sentence_transformers import SentenceTransformer

    from synth.backends.vllm import VLLMBackend
    from synth.embedders import SentenceTransformerEmbedder
    from synth.eval.beir import load_beir
    from synth.models import resolve_model
    from synth.recipe import load_recipe

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="synth-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.data)
    results: dict[str, Any] = {"docs": args.docs, "max_steps": args.max_steps, "seed": args.seed}

    print("zero-shot ...", flush=True)
    results["zero_shot"] = evaluate_model(SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu"), data)
    print(f"  {results['zero_shot']}", flush=True)

    subset = corpus_subset(data, args, work)
    recipe, _ = load_recipe(args.recipe, [f"source.path={subset}"])
    backend = VLLMBackend(recipe.llm)
    embedder = SentenceTransformerEmbedder(recipe.embedder)
    base = [f"source.path={subset}"]
    variants: dict[str, Path] = {"synthetic": args.recipe}
    if args.ablations:
        variants.update(ablation_recipes(args.recipe, work))
    try:
        for name, recipe_path in variants.items():
            print(f"{name}: generate + fine-tune ...", flush=True)
            rows = run_synth(recipe_path, base, work / name, backend, embedder)
            model = fine_tune(rows, args, work / f"{name}-ckpt")
            results[name] = {"rows": len(rows), **evaluate_model(model, data)}
            print(f"  {results[name]}", flush=True)
            if name == "synthetic" and args.ablations:
                print("in-batch negatives only ...", flush=True)
                model = fine_tune(without_negatives(rows), args, work / "inbatch-ckpt")
                results["no_mined_negatives"] = {"rows": len(rows), **evaluate_model(model, data)}
                print(f"  {results['no_mined_negatives']}", flush=True)
    finally:
        backend.close()

    if "train" in data.qrels:
        n = results["synthetic"]["rows"]
        print(f"supervised upper bound on {n} real train pairs ...", flush=True)
        model = fine_tune(supervised_rows(data, n, args.seed), args, work / "supervised-ckpt")
        results["supervised"] = {"rows": n, **evaluate_model(model, data)}

    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    print(f"\n{'run':<24}{'rows':>7}{'nDCG@10':>10}{'R@100':>9}{'MRR@10':>9}")
    for name, m in results.items():
        if isinstance(m, dict):
            print(f"{name:<24}{m.get('rows', '-')!s:>7}{m['ndcg@10']:>10.4f}{m['recall@100']:>9.4f}{m['mrr@10']:>9.4f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
