"""Throughput of synth's `openai` backend vs a plain asyncio `openai.AsyncOpenAI` client.

Same server, same prompts (the quickstart corpus), same request bodies (fixed seed, so both
clients get the same replies and token counts). First the plain client finds the saturating
concurrency (where doubling it adds < 5% tokens/s); then both clients run at that concurrency,
interleaved, `--rounds` times each; the medians and their ratio (goal >= 0.9) are printed.

    .venv/bin/python benchmarks/api_throughput.py                 # starts vllm serve (SmolLM2, CPU)
    .venv/bin/python benchmarks/api_throughput.py --base-url http://127.0.0.1:8000/v1 --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ALIAS = "smollm2-135m-instruct"


@dataclass
class Figures:
    seconds: float
    requests: int
    completion_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def load_prompts(count: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in (REPO / "recipes/data/python_stdlib.jsonl").read_text().splitlines() if line]
    texts = [r["text"] for r in rows]
    return [
        [
            {
                "role": "user",
                "content": f"Write one search query (variant {i}) for this passage:\n{texts[i % len(texts)]}",
            }
        ]
        for i in range(count)
    ]


def body(messages: list[dict[str, str]], model: str, max_tokens: int) -> dict[str, object]:
    """What synth's backend sends for SamplingParams(max_tokens=..., seed=0) and n=1."""
    return {
        "model": model,
        "messages": messages,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": max_tokens,
        "seed": 0,
    }


async def plain_client(
    prompts: list, base_url: str, key: str, model: str, max_tokens: int, concurrency: int
) -> Figures:
    """The baseline a user would write: AsyncOpenAI + a semaphore + gather."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(messages: list) -> int:
        async with gate:
            reply = await client.chat.completions.create(**body(messages, model, max_tokens))
            return reply.usage.completion_tokens

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(m) for m in prompts))
    seconds = time.perf_counter() - started
    await client.close()
    return Figures(seconds, len(prompts), sum(tokens))


def run_plain(prompts: list, args: argparse.Namespace, key: str, concurrency: int) -> Figures:
    return asyncio.run(plain_client(prompts, args.base_url, key, args.model, args.max_tokens, concurrency))


def run_synth(prompts: list, args: argparse.Namespace, concurrency: int) -> Figures:
    from synth.backends import SamplingParams
    from synth.backends.openai import OpenAIBackend
    from synth.recipe import LLMSpec

    spec = LLMSpec(
        backend="openai",
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_concurrency=concurrency,
        timeout=600,
    )
    llm = OpenAIBackend(spec)
    started = time.perf_counter()
    results = llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, seed=0))
    seconds = time.perf_counter() - started
    failed = [c.error for c in results if c.error]
    if failed:
        raise RuntimeError(f"{len(failed)} synth requests failed, e.g. {failed[0]}")
    return Figures(seconds, len(results), sum(c.completion_tokens for c in results))


def saturating_concurrency(prompts: list, args: argparse.Namespace, key: str) -> int:
    """Double the concurrency until tokens/s stops growing by 5%: the server's limit."""
    best_c, best = 0, 0.0
    for c in args.levels:
        f = run_plain(prompts, args, key, c)
        print(f"  plain client, concurrency {c:4d}: {f.tokens_per_s:8.1f} tok/s {f.requests_per_s:7.2f} req/s")
        if f.tokens_per_s < best * 1.05:
            break
        best_c, best = c, f.tokens_per_s
    return best_c


def compare(prompts: list, args: argparse.Namespace, key: str, concurrency: int) -> None:
    plain: list[Figures] = []
    ours: list[Figures] = []
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
        plain.append(run_plain(prompts, args, key, concurrency))
        ours.append(run_synth(prompts, args, concurrency))
    print(f"\nconcurrency {concurrency}, {len(prompts)} prompts, max_tokens {args.max_tokens}, {args.rounds} rounds")
    for name, runs in (("plain AsyncOpenAI", plain), ("synth openai backend", ours)):
        tps = statistics.median(f.tokens_per_s for f in runs)
        rps = statistics.median(f.requests_per_s for f in runs)
        tokens = {f.completion_tokens for f in runs}
        print(f"  {name:22s} {tps:8.1f} tok/s {rps:7.2f} req/s   (completion tokens per round: {sorted(tokens)})")
    ratio_t = statistics.median(f.tokens_per_s for f in ours) / statistics.median(f.tokens_per_s for f in plain)
    ratio_r = statistics.median(f.requests_per_s for f in ours) / statistics.median(f.requests_per_s for f in plain)
    print(f"  ratio synth/plain: tokens/s {ratio_t:.3f}, requests/s {ratio_r:.3f} (goal >= 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an already running server; default: start vllm serve with SmolLM2")
    parser.add_argument("--model", default=ALIAS, help="the server's model name")
    parser.add_argument("--api-key-env", default="SYNTH_BENCH_API_KEY", help="env var with the key, if any")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16, 32, 64])
    parser.add_argument("--concurrency", type=int, help="skip the search and use this concurrency")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault(args.api_key_env, "bench-key")
    key = os.environ[args.api_key_env]
    prompts = load_prompts(args.prompts)

    server = None
    if args.base_url is None:
        from synth.models import resolve_model
        from tests.servers import VLLMServer

        print("starting vllm serve (CPU settings) ...", flush=True)
        server = VLLMServer(resolve_model(ALIAS), ALIAS, api_key=key).start()
        args.base_url = server.base_url
    try:
        run_plain(prompts[:8], args, key, 8)  # warm-up: first requests pay one-off costs
        concurrency = args.concurrency or saturating_concurrency(prompts, args, key)
        compare(prompts, args, key, concurrency)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
