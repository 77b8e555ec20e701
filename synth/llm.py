"""The one path to an LLM: request cache first, then the backend, each reply committed as it arrives.

Why one path: generate, the LLM-judge filter and the mining rescorer all ask an LLM; doing it
through one object means every one of them is cached, resumable after a crash, counted in one
`Usage`, and builds its model only when some request is not already answered by the cache.
Nothing here renders prompts: callers pass finished conversations and sampling parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from synth.backends import (
    PROMPT_TOO_LONG,
    Completion,
    LLMBackend,
    Messages,
    SamplingParams,
    backend_identity,
    make_backend,
)
from synth.cache import RequestCache, request_key
from synth.faults import crash_point
from synth.progress import Progress, SilentProgress, count_tokens


@dataclass
class Usage:
    """What a step cost: requests really sent, their retries and tokens, cache hits, failures."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failed: int = 0  # sent requests that ended in an error (server down, broken replies)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def count(self, completion: Completion) -> None:
        """Count one reply that was really requested (not served from the cache)."""
        self.requests += 1
        self.retries += completion.retries
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        if completion.error is not None and not completion.error.startswith(PROMPT_TOO_LONG):
            self.failed += 1


class CachedLLM:
    """A named LLM of a recipe. Its identity is known without building it; the backend is built once, lazily."""

    def __init__(
        self,
        name: str,
        spec: Any,
        cache: RequestCache | None = None,
        progress: Progress | None = None,
        backend: LLMBackend | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.sampling = spec.sampling
        self.cache = cache
        self.progress = progress or SilentProgress()
        self._backend = backend
        self._owned = backend is None  # close only what we built
        self.kind, self.model_id = (backend.kind, backend.model_id) if backend is not None else backend_identity(spec)

    def backend(self) -> LLMBackend:
        if self._backend is None:
            with self.progress.task(f"loading LLM {self.name}: {self.spec.model}", 1) as advance:
                self._backend = make_backend(self.spec)
                advance(1)
        return self._backend

    def complete(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        usage: Usage,
        advance: Callable[[float], None] | None = None,
    ) -> list[Completion]:
        """One Completion per conversation, same order: cached replies first, the rest from the backend.

        Each fresh reply is committed the moment the backend reports it, so a run killed mid-step
        pays for none of them again. Failed replies and replies without text are never stored.
        """
        step = advance or (lambda n: None)
        keys = [request_key(self.kind, self.model_id, c, params) for c in conversations]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        missing = [i for i, k in enumerate(keys) if k not in cached]
        usage.cache_hits += len(conversations) - len(missing)
        step(len(conversations) - len(missing))

        def arrived(j: int, completion: Completion) -> None:
            if self.cache is not None and completion.error is None:
                self.cache.put(keys[missing[j]], completion, self.model_id)
                crash_point("reply")
            step(1)
            count_tokens(step, completion.completion_tokens)

        fresh: dict[int, Completion] = {}
        if missing:
            replies = self.backend().generate([conversations[i] for i in missing], params, on_result=arrived)
            fresh = dict(zip(missing, replies, strict=True))
            for completion in replies:
                usage.count(completion)
        return [fresh[i] if i in fresh else cached[keys[i]] for i in range(len(conversations))]

    def close(self) -> None:
        if self._owned and self._backend is not None:
            self._backend.close()
            self._backend = None
