"""Steps: one module per kind, each a callable taking rows and returning rows plus drops.

Rows are plain dicts. A step never loses a row silently: every row it removes is returned as a
drop record with the step name, a reason slug and the evidence (raw reply, scores, ...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from synth.backends import LLMBackend
from synth.cache import RequestCache
from synth.embedders import Embedder
from synth.prompts import PromptLibrary

Row = dict[str, Any]
Advance = Callable[[float], None]


class Progress(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]: ...


class SilentProgress:
    """Progress that shows nothing (tests, libraries)."""

    def task(self, description: str, total: int) -> AbstractContextManager[Advance]:
        from contextlib import contextmanager

        @contextmanager
        def _noop() -> Iterator[Advance]:
            yield lambda n: None

        return _noop()


@dataclass
class StepContext:
    """What a step may use. Models are built lazily, once per run, on first use."""

    prompts: PromptLibrary
    documents: list[Row]
    llm: Callable[[], LLMBackend]
    embedder: Callable[[], Embedder]
    progress: Progress = field(default_factory=SilentProgress)
    cache: RequestCache | None = None
    llm_identity: tuple[str, str] = ("", "")  # (backend kind, model id) for cache keys, known before loading


@dataclass
class StepResult:
    rows: list[Row]
    dropped: list[Row] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


class Step(Protocol):
    name: str

    def fingerprint(self, ctx: StepContext) -> str: ...

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult: ...


def stable_hash(value: Any) -> str:
    """Short canonical hash of JSON-able data (sorted keys), for fingerprints and provenance."""
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drop(step: str, reason: str, row: Row, **evidence: Any) -> Row:
    return {"step": step, "reason": reason, "source_id": str(row.get("source_id", row.get("id", ""))), **evidence}
