"""Gemma 3 270M (base, InPars few-shot) next to SmolLM2-135M-Instruct (query.j2): load, speed, replies.

Each arm builds synth's own engine (`VLLMBackend`, synth's CPU settings: fp32, eager, 1 GiB KV
cache, every free core) in a child process, renders the same NFCorpus passages with its template,
and generates once with the same sampling (temperature 0 unless --temperature, top_p 0.95 when
sampling, 40 tokens, stop at a newline, engine seed 0). Baseline:
`smollm2` on query.j2 (what synth ships). `smollm2-inpars` sends SmolLM2 the very prompts Gemma
gets, so tokens/s compares the two models on identical text. Prints one JSON line per arm and a
side-by-side table of the replies. Conversion time is measured separately (first resolve_model).

    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/gemma_vs_smollm2.py \\
        ../shared/data/nfcorpus/corpus.jsonl.gz --passages 20

On a shared machine, take the engine lock per arm and collect the arms in one file (`--out`); the
table shows every arm in that file:

    for arm in smollm2 smollm2-inpars gemma3; do flock /tmp/synth-engine.lock .venv/bin/python \\
        benchmarks/gemma_vs_smollm2.py ../shared/data/nfcorpus/corpus.jsonl.gz --arms $arm --out g.jsonl; done
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

ARMS = {  # name -> (model alias, template)
    "smollm2": ("smollm2-135m-instruct", "query.j2"),
    "smollm2-inpars": ("smollm2-135m-instruct", "query_inpars.j2"),
    "gemma3": ("gemma3-270m", "query_inpars.j2"),
}


def passages(path: Path, n: int) -> list[dict]:
    """The first `n` corpus rows with text (a fixed slice, so every arm gets the same passages)."""
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row.get("text"):
                rows.append(row)
            if len(rows) == n:
                break
    return rows


def run_arm(arm: str, corpus: Path, n: int, temperature: float) -> dict:
    """One engine, one generate call; runs in its own process (one engine per process)."""
    from synth.backends import SamplingParams
    from synth.backends.vllm import VLLMBackend
    from synth.models import resolve_model
    from synth.prompts import PromptLibrary
    from synth.specs import LLMSpec

    model, template = ARMS[arm]
    rows = passages(corpus, n)
    prompts = PromptLibrary(None)
    conversations = [prompts.render(template, {"text": r["text"], "title": r.get("title", "")}) for r in rows]
    t0 = time.perf_counter()
    resolve_model(model)  # converted already: this is the cached-folder lookup
    backend = VLLMBackend(LLMSpec(model=model))
    load_s = time.perf_counter() - t0
    top_p = 0.95 if temperature > 0 else 1.0
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=40, stop=("\n",), seed=0)
    try:
        t1 = time.perf_counter()
        replies = backend.generate(conversations, params)
        gen_s = time.perf_counter() - t1
    finally:
        backend.close()
    prompt_tokens = sum(c.prompt_tokens for c in replies)
    completion_tokens = sum(c.completion_tokens for c in replies)
    return {
        "arm": arm,
        "model": model,
        "template": template,
        "prompts": len(conversations),
        "temperature": temperature,
        "load_s": round(load_s, 1),
        "generate_s": round(gen_s, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "completion_tok_s": round(completion_tokens / gen_s, 1),
        "total_tok_s": round((prompt_tokens + completion_tokens) / gen_s, 1),
        "finish": [c.finish_reasons[0] if c.finish_reasons else c.error for c in replies],
        "replies": [c.texts[0].strip() if c.texts else "" for c in replies],
        "ids": [r.get("_id") or r.get("id") for r in rows],
        "load_avg": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--passages", type=int, default=20)
    ap.add_argument("--arms", default="smollm2,smollm2-inpars,gemma3")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--out", type=Path, help="append each arm's result here; the table shows all arms in it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_arm(args.child, args.corpus, args.passages, args.temperature)), flush=True)
        return
    results = []
    for arm in args.arms.split(","):
        cmd = [sys.executable, __file__, str(args.corpus), "--passages", str(args.passages)]
        cmd += ["--temperature", str(args.temperature), "--child", arm]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{arm}: failed (rc {out.returncode})\n{out.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("replies", "finish", "ids")}), flush=True)
    if args.out and args.out.exists():
        results = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    if results:
        print()
        for i, doc_id in enumerate(results[0]["ids"]):
            print(f"{doc_id}")
            for r in results:
                print(f"  {r['arm']:15} t={r.get('temperature', 0.0)} [{r['finish'][i]}] {r['replies'][i]}")


if __name__ == "__main__":
    main()
