"""What synth's vLLM path costs over the raw engine: the same prompts through `LLM.chat` and through synth.

One engine is built once in this process (synth's own engine settings: `VLLMBackend`), and every
mode runs on it, interleaved round by round, so model load is never measured and machine noise
hits every mode alike. Modes (comma list, `name` or `name@window` to set the in-flight window,
i.e. `llm.batch_size`, for that mode):

- `raw`          `LLM.chat` on all prompts at once: the limit.
- `synth`        synth's generate step (rendering, parsing, rows), request cache off.
- `synth-cache`  the same with the request cache on and empty (a fresh sqlite file per round):
                 the cost of committing every reply as it arrives.
- `head`         synth's generate step on the loop of git HEAD before the in-flight window
                 (`batch_size` prompts queued, engine drained, next batch): the "before".
- `exec`         the step as `synth generate` runs it: the local executor over shards of
                 `--shard-rows` source rows (shard files, outputs, drops and markers written),
                 one request stream across the shards.
- `exec-pershard` the same, one stream per shard: the engine drains at every shard boundary
                 (the executor before the cross-shard stream).

Prompts: the quickstart corpus rendered with the quickstart template (question and keyword
styles), fanned out to `--prompts` by prefixing each copy's passage with its copy number (so no
two prompts are equal; the few-shot prefix stays shared). Every request carries the same seed, so
every mode must return the same replies: the benchmark checks that too.

`--settings` compares engine settings instead (environment and engine kwargs, one child process
per setting, each building its own engine; settings cycled `--cycles` times), e.g.:

    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/vllm_overhead.py --prompts 196
    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/vllm_overhead.py --prompts 196 \\
        --modes raw,head@32,synth@32
    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/vllm_overhead.py --prompts 64 --shard-rows 8 \\
        --modes raw,synth,synth-cache,exec-pershard@8,exec@8
    .venv/bin/python benchmarks/vllm_overhead.py --frontend-gap     # a shard boundary's frontend work, no engine
    flock /tmp/synth-engine.lock .venv/bin/python benchmarks/vllm_overhead.py --prompts 98 --modes raw \\
        --settings "vllm-default:VLLM_CPU_NUM_OF_RESERVED_CPU=1,VLLM_CPU_OMP_THREADS_BIND=auto" "synth-default:"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@dataclass
class Figures:
    seconds: float
    requests: int
    completion_tokens: int
    texts: list[str]
    underfull: float = 0.0  # seconds with fewer requests in the engine than the window (drain, tail)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


class Occupancy:
    """Samples the engine's unfinished requests every 20 ms in a thread: the seconds it ran with
    fewer than `window` requests (not fed) while the mode ran. Every mode has the same final tail;
    what one mode has more of is drain at boundaries (or a slow feed)."""

    def __init__(self, engine: Any, window: int) -> None:
        import threading

        self.engine, self.window, self.underfull = engine, window, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        last = time.perf_counter()
        while not self.stop.wait(0.02):
            now = time.perf_counter()
            if self.engine.get_num_unfinished_requests() < self.window:
                self.underfull += now - last
            last = now

    def __enter__(self) -> Occupancy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class HeadLoopBackend:
    """The LLMBackend protocol on git HEAD's loop (before the in-flight window): queue `batch_size`
    prompts, step the engine until it is empty, queue the next batch. Copied from HEAD's
    synth/backends/vllm.py so the "before" runs on the same engine in the same process."""

    kind = "vllm"

    def __init__(self, backend: Any) -> None:
        self.inner = backend
        self.model_id = backend.model_id

    def generate(self, conversations: Sequence[Any], params: Any, on_result: Any = None) -> list[Any]:
        from synth.backends import Completion
        from synth.backends.vllm import _completion

        inner = self.inner
        sampling = inner._sampling(params)
        results: list[Any] = [None] * len(conversations)
        engine = inner.llm.llm_engine
        size = inner.spec.batch_size
        limit = inner.max_model_len - params.max_tokens
        for start in range(0, len(conversations), size):
            positions = []
            for offset, length in enumerate(inner.prompt_lengths(conversations[start : start + size])):
                if length <= limit:
                    positions.append(start + offset)
                    continue
                results[start + offset] = Completion(texts=[], error="prompt_too_long")
                if on_result:
                    on_result(start + offset, results[start + offset])
            if not positions:
                continue
            request_ids = inner.llm.enqueue_chat([conversations[i] for i in positions], sampling, use_tqdm=False)
            index: dict[str, int] = {}
            for i, rid in zip(positions, request_ids, strict=True):
                index[rid] = index[rid.rsplit("-", 1)[0]] = i
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    completion = _completion(out, params)
                    i = index[out.request_id]
                    results[i] = completion
                    if on_result:
                        on_result(i, completion)
        return results

    def close(self) -> None:
        pass


def quickstart_rows(count: int) -> list[dict[str, Any]]:
    """`count` source rows (x2 styles = prompts) from the quickstart corpus, copies numbered."""
    path = REPO / "recipes" / "data" / "python_stdlib.jsonl"
    base = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for k in range(count):
        doc = base[k % len(base)]
        copy = k // len(base)
        text = doc["text"] if copy == 0 else f"[{copy}] {doc['text']}"
        rows.append({"id": f"{doc['id']}-{copy}", "text": text})
    return rows


def build(args: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]], Any]:
    """The engine (synth's settings), the quickstart generate step, its rows and sampling params."""
    from synth.backends.vllm import VLLMBackend
    from synth.recipe import load_recipe
    from synth.specs import LLMSpec, SamplingSpec
    from synth.steps.generate import GenerateStep

    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml")
    sampling = SamplingSpec(**{**recipe.llm.sampling.model_dump(), "max_tokens": args.max_tokens})
    spec = LLMSpec(model=recipe.llm.model, sampling=sampling, engine_kwargs=dict(args.engine_kwargs))
    started = time.perf_counter()
    backend = VLLMBackend(spec)
    cores = backend._cores.cores if backend._cores is not None else None
    binding = {k: os.environ.get(k) for k in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND")}
    print(f"engine ready in {time.perf_counter() - started:.0f} s; synth claimed cores {cores}; user env {binding}")
    config = backend.llm.llm_engine.vllm_config
    print(
        f"engine kwargs {spec.engine_kwargs or '(synth defaults)'}; prefix caching"
        f" {config.cache_config.enable_prefix_caching}, chunked prefill {config.scheduler_config.enable_chunked_prefill},"
        f" max_num_seqs {config.scheduler_config.max_num_seqs}",
        flush=True,
    )
    step = GenerateStep(recipe.steps[0].spec)
    return backend, step, quickstart_rows(-(-args.prompts // 2)), sampling


def frontend_gap(shard_rows: int, window: int = 512, repeats: int = 5) -> None:
    """What the engine waited for at a shard boundary before the cross-shard stream, besides the
    drain, timed without an engine: write the finished shard's rows (2 styles, generated columns),
    read the next shard, render and key the first 1024 prompts (one cache chunk), and measure the
    first `window` with the model's tokenizer and chat template (as `VLLMBackend.stream` does)."""
    import itertools

    from transformers import AutoTokenizer

    from synth.backends import SamplingParams
    from synth.cache import request_key
    from synth.executors.shards import ShardSet, read_rows, write_json_atomic
    from synth.models import resolve_model
    from synth.prompts import PromptLibrary
    from synth.recipe import load_recipe
    from synth.steps.base import StepContext
    from synth.steps.generate import GenerateStep

    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml")
    step = GenerateStep(recipe.steps[0].spec)
    ctx = StepContext(PromptLibrary(REPO / "recipes"), [], None, None)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(recipe.llm.model))
    rows = [dict(r, source_id=r["id"]) for r in quickstart_rows(shard_rows)]
    generated = {"query": "a generated query of about ten words for this passage", "queries_sample": 0}
    generated |= {f"queries_{k}": "x" * 16 for k in ("finish_reason", "template", "model", "sampling", "parse")}
    done = [dict(r, style=style, **generated) for r in rows for style in ("question", "keywords")]
    params = SamplingParams(max_tokens=48, temperature=0.7, seed=0)
    parts: dict[str, list[float]] = {"write": [], "read": [], "render+keys": [], "tokenizer": [], "total": []}
    with tempfile.TemporaryDirectory(prefix="vllm-overhead-gap-") as work:
        source, out = ShardSet(Path(work) / "source"), ShardSet(Path(work) / "out")
        source.write(0, rows)
        for r in range(repeats):
            t0 = time.perf_counter()
            out.write(r, done)
            write_json_atomic(Path(work) / f"{r}.json", {"rows": len(done)})
            t1 = time.perf_counter()
            following = read_rows(source.path(0))
            t2 = time.perf_counter()
            jobs = [m for _, _, m in itertools.islice(step._jobs(following, ctx), 1024)]
            [request_key("vllm", "model", m, params) for m in jobs]
            t3 = time.perf_counter()
            texts = tokenizer.apply_chat_template(jobs[:window], tokenize=False, add_generation_prompt=True)
            tokenizer(list(texts), add_special_tokens=False)
            t4 = time.perf_counter()
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                parts[key].append(value)
    medians = ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in parts.items())
    print(
        f"shard boundary frontend work ({shard_rows} rows, window {window}; load {os.getloadavg()[0]:.1f}): {medians}"
    )


def run_executor(name: str, step: Any, ctx: Any, rows: list[dict[str, Any]], shard_rows: int, work: Path) -> Figures:
    """The generate step through the local executor's shard loop (synth/executors/pipeline.py
    `run_step`: shards of `shard_rows` rows in, shard outputs, drops and markers written), as
    `synth generate` runs it; `exec-pershard` drains the engine at every shard boundary."""
    from synth.executors import pipeline
    from synth.executors.local import LocalExecutor
    from synth.executors.shards import ShardSet, read_rows

    folder = work / f"exec-{time.time_ns()}"
    shards = ShardSet(folder / "source")
    counts = [shards.write(i, rows[s : s + shard_rows]) for i, s in enumerate(range(0, len(rows), shard_rows))]
    stage = pipeline.Stage([shards.path(i) for i in range(len(counts))], counts, add_source_id=True)
    executor = LocalExecutor(across_shards=name == "exec")
    started = time.perf_counter()
    out = pipeline.run_step(step, ctx, stage, folder / "step", executor, lambda *a: None, 1.0, shard_rows)
    seconds = time.perf_counter() - started
    texts = [r["query"] for p in out.stage.paths for r in read_rows(p)]
    texts += [f"<dropped {d}>" for d in read_rows(out.drops)] if out.drops.is_file() else []
    return Figures(seconds, out.usage.requests, out.usage.completion_tokens, texts)


def run_mode(
    mode: str, backend: Any, step: Any, rows: list[dict[str, Any]], sampling: Any, work: Path, shard_rows: int = 0
) -> Figures:
    from synth.cache import RequestCache
    from synth.llm import CachedLLM
    from synth.progress import SilentProgress
    from synth.prompts import PromptLibrary
    from synth.steps.base import StepContext

    name, _, window = mode.partition("@")
    default = getattr(backend, "default_window", backend.spec.batch_size)
    backend.default_window = default  # a mode without @window runs on synth's own window, whatever ran before
    spec = backend.spec.model_copy(update={"batch_size": int(window) if window else default})
    backend.spec = spec
    prompts = PromptLibrary(REPO / "recipes")
    cache = RequestCache(work / f"cache-{time.time_ns()}.sqlite") if name == "synth-cache" else None
    model = HeadLoopBackend(backend) if name == "head" else backend
    llm = CachedLLM("default", spec, cache, backend=model)  # type: ignore[arg-type]
    ctx = StepContext(prompts=prompts, documents=[], llm=lambda n=None: llm, embedder=None)  # type: ignore[arg-type]
    ctx.progress = SilentProgress()
    # Every run starts without cached prefixes: the modes run the same prompts, and a run must not
    # find the previous run's whole prompts in vLLM's prefix cache (its own shared prefixes it may).
    backend.llm.reset_prefix_cache()
    if name == "raw":
        conversations = [m for _, _, m in step._jobs(rows, ctx)]
        params = step.params(ctx)
        started = time.perf_counter()
        outputs = backend.llm.chat(conversations, backend._sampling(params), use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return Figures(seconds, len(outputs), tokens, [o.outputs[0].text for o in outputs])
    if name in ("exec", "exec-pershard"):
        with Occupancy(backend.llm.llm_engine, min(spec.batch_size, len(rows) * 2)) as occupancy:
            figures = run_executor(name, step, ctx, rows, shard_rows, work)
        figures.underfull = occupancy.underfull
        return figures
    if name not in ("synth", "synth-cache", "head"):
        raise SystemExit(f"unknown mode {mode!r}")
    with Occupancy(backend.llm.llm_engine, min(spec.batch_size, len(rows) * 2)) as occupancy:
        started = time.perf_counter()
        result = step(rows, ctx)
        seconds = time.perf_counter() - started
    if cache is not None:
        cache.close()
    texts = [r["query"] for r in result.rows] + [f"<dropped {d}>" for d in result.dropped]
    return Figures(seconds, result.usage.requests, result.usage.completion_tokens, texts, occupancy.underfull)


def run_here(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    backend, step, rows, sampling = build(args)
    modes = args.modes.split(",")
    figures: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    texts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="vllm-overhead-") as work:
        run_mode("raw", backend, step, rows[:4], sampling, Path(work))  # warm-up, not measured
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]  # interleaved, alternating order
            for mode in order:
                f = run_mode(mode, backend, step, rows, sampling, Path(work), args.shard_rows)
                figures[mode].append(
                    {"s": f.seconds, "req": f.requests, "tok": f.completion_tokens, "underfull": f.underfull}
                )
                texts.setdefault(mode, f.texts)
                print(
                    f"round {r + 1} {mode:>14}: {f.requests} req {f.completion_tokens} tok in {f.seconds:6.1f} s"
                    f" = {f.tokens_per_s:6.1f} tok/s {f.requests_per_s:5.2f} req/s;"
                    f" engine under-fed {f.underfull:5.1f} s; load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    reference = texts[modes[0]]
    for mode in modes[1:]:
        same = sorted(texts[mode]) == sorted(reference)
        print(f"replies of {mode} == replies of {modes[0]}: {same}")
    backend.close()
    return figures


def summarise(figures: dict[str, list[dict[str, float]]], baseline: str, label: str = "mode") -> None:
    print(
        f"\n{label:>30} {'tok/s':>8} {'req/s':>7} {'ratio':>6} {'s':>7} {'underfed s':>10}"
        f"   (medians over rounds; baseline {baseline})"
    )
    base = statistics.median(x["tok"] / x["s"] for x in figures[baseline])
    for name, rounds in figures.items():
        tok = statistics.median(x["tok"] / x["s"] for x in rounds)
        req = statistics.median(x["req"] / x["s"] for x in rounds)
        seconds = statistics.median(x["s"] for x in rounds)
        underfull = statistics.median(x.get("underfull", 0.0) for x in rounds)
        print(f"{name:>30} {tok:8.1f} {req:7.2f} {tok / base:6.3f} {seconds:7.1f} {underfull:10.1f}")


def run_settings(args: argparse.Namespace) -> None:
    """One child process (own engine) per setting, cycled; medians per (setting, mode)."""
    figures: dict[str, list[dict[str, float]]] = {}
    for cycle in range(args.cycles):
        for setting in args.settings if cycle % 2 == 0 else args.settings[::-1]:
            name, _, assignments = setting.partition(":")
            env = dict(os.environ)
            kwargs = []
            for item in filter(None, assignments.split(",")):
                key, _, value = item.partition("=")
                if key.startswith("engine."):
                    kwargs += ["--engine-kwarg", f"{key[7:]}={value}"]
                else:
                    env[key] = value
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, __file__, "--child-json", out.name, "--prompts", str(args.prompts)]
                command += ["--modes", args.modes, "--rounds", str(args.rounds), "--max-tokens", str(args.max_tokens)]
                command += ["--shard-rows", str(args.shard_rows)]
                print(f"cycle {cycle + 1} setting {name}: {assignments or '(synth defaults)'}", flush=True)
                subprocess.run(command + kwargs, env=env, check=True)
                for mode, rounds in json.loads(Path(out.name).read_text()).items():
                    figures.setdefault(f"{name} {mode}", []).extend(rounds)
    summarise(figures, next(iter(figures)), "setting mode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompts", type=int, default=196, help="prompts per mode and round (a few thousand on request)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--shard-rows", type=int, default=4096, help="exec modes: source rows per shard (synth's default 4096)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="raw,synth,synth-cache")
    parser.add_argument(
        "--engine-kwarg", action="append", default=[], help="KEY=JSON value, e.g. enable_prefix_caching=true"
    )
    parser.add_argument("--settings", nargs="*", help="NAME:K=V,... (env vars, or engine.KEY=JSON): one engine each")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument(
        "--frontend-gap", action="store_true", help="time the per-boundary frontend work at --shard-rows (no engine)"
    )
    args = parser.parse_args()
    args.engine_kwargs = {k: json.loads(v) for k, _, v in (e.partition("=") for e in args.engine_kwarg)}
    if args.frontend_gap:
        frontend_gap(args.shard_rows)
        return
    if args.settings:
        run_settings(args)
        return
    figures = run_here(args)
    if args.child_json:
        Path(args.child_json).write_text(json.dumps(figures))
        return
    summarise(figures, args.modes.split(",")[0])


if __name__ == "__main__":
    main()
