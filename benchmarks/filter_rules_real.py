"""What the language-model-free quality rules drop on real data: their hits and their false positives.

Two measurements, no retrieval score (that is benchmarks/quality/bench.py's job):
1. hits: the shipped `recipes/beir-queries.yaml` generate step (same template, styles, sampling)
   on `--docs` random NFCorpus passages with the bundled SmolLM2-135M on the real vLLM engine,
   then each rule alone, and the chain length -> copy -> truncated -> repetition -> leakage ->
   querylike, with every row the new rules drop printed for a reader to judge;
2. false positives: `repetition`, `leakage` (both query.j2 styles) and `querylike` on every real
   NFCorpus query, each paired with a passage its qrels mark relevant. A real query dropped is a
   false positive.

    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/filter_rules_real.py /work/shared/data/nfcorpus
    .venv/bin/python benchmarks/filter_rules_real.py /work/shared/data/nfcorpus --details WORK/out/details

The second form reuses the replies of an earlier run (no engine).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from synth.prompts import PromptLibrary
from synth.steps.base import StepContext
from synth.steps.filter import FilterStep
from synth.steps.filter_spec import FilterSpec

RECIPE = """# the shipped beir-queries generate step (same template, styles, sampling); no filter: the raw replies
source: {path: docs.jsonl, text_column: text, id_column: id}
llm:
  model: smollm2-135m-instruct
  sampling: {temperature: 0.7, top_p: 0.95, max_tokens: 40, stop: ["\\n"], seed: 0}
steps:
  - generate: {name: queries, template: query.j2, each: {style: [question, keywords]}, output: query}
output: {columns: {anchor: query, positive: text}}
"""
NEW_RULES: dict[str, dict[str, Any]] = {
    "truncated": {"rule": "truncated", "step": "queries"},
    "repetition": {"rule": "repetition"},
    "leakage": {"rule": "leakage", "template": "query.j2"},
    "querylike": {"rule": "querylike"},
}
CHAIN = [
    {"rule": "length", "min_chars": 8, "max_chars": 200},
    {"rule": "copy"},
    *NEW_RULES.values(),
]


def context() -> StepContext:
    def no_model(name: str | None = None) -> Any:
        raise AssertionError("these rules need no model")

    return StepContext(prompts=PromptLibrary(None), documents=[], llm=no_model, embedder=no_model)


def apply(rules: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Any:
    return FilterStep(FilterSpec.model_validate({"name": "f", "rules": rules}))(rows, context())


def generate(data: Path, work: Path, docs: int, seed: int) -> Path:
    """Replies of the real engine for `docs` random passages; returns the run's details/ folder."""
    with gzip.open(data / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    picked = random.Random(seed).sample(corpus, docs)
    work.mkdir(parents=True, exist_ok=True)
    with (work / "docs.jsonl").open("w", encoding="utf-8") as f:
        for d in picked:
            f.write(json.dumps({"id": d["_id"], "title": d.get("title", ""), "text": d["text"]}) + "\n")
    (work / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    synth = Path(sys.executable).with_name("synth")
    subprocess.run([str(synth), "generate", str(work / "recipe.yaml"), "-o", str(work / "out"), "--quiet"], check=True)
    return work / "out" / "details"


def hits(details: Path) -> None:
    from datasets import load_from_disk

    rows = [dict(r) for r in load_from_disk(str(details))]
    reasons = Counter(r["queries_finish_reason"] for r in rows)
    print(f"hits on {len(rows)} real replies ({details}); finish reasons {dict(reasons)}")
    dropped: dict[str, set[tuple[str, str]]] = {}
    for name, rule in NEW_RULES.items():
        result = apply([rule], rows)
        dropped[name] = {(d["source_id"], d["value"]) for d in result.dropped}
        by_style = Counter(r["style"] for r in rows if (r["source_id"], r["query"]) in dropped[name])
        print(f"  {name:10s} alone drops {len(result.dropped):3d}", dict(Counter(d["reason"] for d in result.dropped)),
              "by style", dict(by_style))  # fmt: skip
    for name in ("repetition", "leakage", "querylike"):
        print(f"  {name} drops that truncated drops too: {len(dropped[name] & dropped['truncated'])}")
    chain = apply(CHAIN, rows)
    print(f"  chain {' -> '.join(r['rule'] for r in CHAIN)}: kept {len(chain.rows)}",
          dict(Counter(d["reason"] for d in chain.dropped)))  # fmt: skip
    for d in chain.dropped:
        if d["rule"] in ("leakage", "querylike"):
            print(f"    {d['reason']:15s} {d['value'][:110]!r}")


def false_positives(data: Path) -> None:
    with gzip.open(data / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = {d["_id"]: d["text"] for d in map(json.loads, f)}
    relevant: dict[str, str] = {}
    for part in ("train", "dev", "test"):
        with gzip.open(data / f"qrels_{part}.tsv.gz", "rt", encoding="utf-8") as f:
            for line in f:
                query, doc, *_ = line.rstrip("\n").split("\t")
                if doc in docs:
                    relevant.setdefault(query, doc)
    with gzip.open(data / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
        queries = [q for q in map(json.loads, f) if q["_id"] in relevant]
    rows = [
        {"source_id": q["_id"], "query": q["text"], "text": docs[relevant[q["_id"]]], "style": style}
        for q in queries
        for style in ("question", "keywords")
    ]
    print(f"false positives on {len(queries)} real queries, each with a relevant passage")
    for name in ("repetition", "leakage", "querylike"):
        sample = rows if name == "leakage" else rows[::2]  # leakage: against both styles' examples
        result = apply([NEW_RULES[name]], sample)
        print(f"  {name:10s} drops {len(result.dropped)}/{len(sample)}", [d["value"] for d in result.dropped][:10])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="BEIR NFCorpus folder (corpus/queries/qrels .gz)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/filter-rules-real"))
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--details", type=Path, help="details/ of an earlier run: skip generation")
    args = parser.parse_args()
    details = args.details or generate(args.data, args.work, args.docs, args.seed)
    hits(details)
    false_positives(args.data)


if __name__ == "__main__":
    main()
