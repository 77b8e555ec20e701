"""The one path to an LLM: request cache first, then the backend, each reply committed as it arrives.

Why one path: generate, the LLM-judge filter and the mining rescorer all ask an LLM; doing it
through one object means every one of them is cached, resumable after a crash, counted in one
`Usage`, and builds its model only when some request is not already answered by the cache.
Nothing here renders prompts: callers pass finished conversations and sampling parameters.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from synth.backends import (
    PROMPT_TOO_LONG,
    Completion,
    LLMBackend,
    Messages,
    SamplingParams,
    backend_class,
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


CHUNK = 1024  # conversations rendered and looked up in the cache at a time


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that takes a lazy stream of conversations and reports each reply as it finishes."""

    def stream(self, conversations: Iterable[Messages], params: SamplingParams) -> Iterator[tuple[int, Completion]]:
        """(position in `conversations`, reply), in finishing order."""
        ...


def _replies(
    backend: LLMBackend, feed: Iterator[Messages], params: SamplingParams, arrived: Callable[[int, Completion], None]
) -> Iterator[None]:
    """Hand `arrived` every reply (position in `feed`, reply) the moment the backend has it; yield after each.

    A streaming backend gets the whole feed; any other backend gets it `CHUNK` conversations per
    `generate` call (its `on_result` still commits each reply as it arrives).
    """
    if isinstance(backend, StreamingBackend):
        with contextlib.closing(backend.stream(feed, params)) as replies:
            for j, completion in replies:
                arrived(j, completion)
                yield
        return
    offset = 0
    while batch := list(itertools.islice(feed, CHUNK)):
        reported: set[int] = set()

        def report(i: int, completion: Completion, start: int = offset, seen: set[int] = reported) -> None:
            seen.add(i)
            arrived(start + i, completion)

        replies = backend.generate(batch, params, on_result=report)
        for i, completion in enumerate(replies):  # a backend that skipped on_result for some
            if i not in reported:
                arrived(offset + i, completion)
        offset += len(batch)
        yield


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

    @property
    def streams(self) -> bool:
        """Whether the backend takes one lazy stream and reports each reply as it finishes (vLLM), so
        one `stream` call may span several shards without a drain; known without building it."""
        kind = type(self._backend) if self._backend is not None else backend_class(self.spec.backend)
        return callable(getattr(kind, "stream", None))

    def complete(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        usage: Usage,
        advance: Callable[[float], None] | None = None,
    ) -> list[Completion]:
        """One Completion per conversation, same order: cached replies first, the rest from the backend."""
        return list(self.stream(conversations, params, usage, advance))

    def stream(
        self,
        conversations: Iterable[Messages],
        params: SamplingParams,
        usage: Usage | Callable[[int], Usage],
        advance: Callable[[float], None] | None = None,
    ) -> Iterator[Completion]:
        """One Completion per conversation, in input order, each as soon as it and those before it are ready.

        `conversations` is read lazily, `CHUNK` at a time (one cache lookup each), and what the cache
        does not answer flows to the backend as one stream, so a backend that keeps a window of
        requests in flight (vLLM) is never drained between chunks. Each fresh reply is committed
        the moment the backend reports it, so a run killed mid-step pays for none of them again.
        Failed replies and replies without text are never stored. The backend is built only when
        some conversation is not cached. `usage` may be a function of a conversation's position in
        `conversations`, so one stream over several shards counts each shard's cost on its own.
        """
        step = advance or (lambda n: None)
        charge = usage if callable(usage) else (lambda position: usage)
        order: deque[list[Any]] = deque()  # [cache key, Completion or None, position], oldest first
        sent: dict[int, list[Any]] = {}  # position in the stream to the backend -> its entry

        def uncached() -> Iterator[tuple[list[Any], Messages]]:
            source = iter(conversations)
            read = 0
            while chunk := list(itertools.islice(source, CHUNK)):
                keys = [request_key(self.kind, self.model_id, c, params) for c in chunk]
                cached = self.cache.get_many(keys) if self.cache is not None else {}
                entries = [[k, cached.get(k), read + i] for i, k in enumerate(keys)]
                read += len(chunk)
                order.extend(entries)
                for entry in entries:
                    if entry[1] is not None:
                        charge(entry[2]).cache_hits += 1
                step(len(chunk) - sum(e[1] is None for e in entries))
                yield from ((e, c) for e, c in zip(entries, chunk, strict=True) if e[1] is None)

        def feed(todo: Iterator[tuple[list[Any], Messages]]) -> Iterator[Messages]:
            for j, (entry, conversation) in enumerate(todo):
                sent[j] = entry
                yield conversation

        def arrived(j: int, completion: Completion) -> None:
            entry = sent.pop(j)
            if self.cache is not None and completion.error is None:
                self.cache.put(entry[0], completion, self.model_id)
                crash_point("reply")
            charge(entry[2]).count(completion)
            step(1)
            count_tokens(step, completion.completion_tokens)
            entry[1] = completion

        def ready() -> Iterator[Completion]:
            while order and order[0][1] is not None:
                yield order.popleft()[1]

        todo = uncached()
        first = next(todo, None)  # reads past fully cached chunks without building the backend
        yield from ready()
        if first is None:
            return
        with contextlib.closing(
            _replies(self.backend(), feed(itertools.chain([first], todo)), params, arrived)
        ) as fresh:
            for _ in fresh:
                yield from ready()
        yield from ready()
        if order:
            raise RuntimeError(f"the {self.kind} backend returned no reply for {len(order)} requests")

    def close(self) -> None:
        if self._owned and self._backend is not None:
            self._backend.close()
            self._backend = None
