"""LLM backends behind one small protocol.

A backend takes a batch of conversations and returns one Completion per conversation in the
same order; batching, concurrency and the engine stay inside the backend module, which is the
only place its engine library is imported. Adding a backend = one module (a class with `kind`,
`model_id`, `generate`, `close`, plus a function giving the model id without building anything)
and one line in `BACKENDS` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 96
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0
    json_schema: dict[str, Any] | None = None
    logprobs: int | None = None  # top-k log-probabilities per generated token (LLM-judge scores)


@dataclass
class Completion:
    """The reply to one conversation: n sample texts, or an error after all retries failed."""

    texts: list[str]  # n samples; empty when `error` is set
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Per sample, per generated token: {token text: logprob} of the top `logprobs` candidates.
    logprobs: list[list[dict[str, float]]] | None = None
    retries: int = 0  # attempts beyond the first (API backends)
    error: str | None = None  # why the request finally failed; the row is recorded as a drop


# The finish reason of a sample whose backend or cache entry did not say (replies cached before synth kept
# finish reasons, a server that sends none): never read as truncated.
UNKNOWN_FINISH = "unknown"


def finish_reason(completion: Completion, sample: int) -> str:
    """Why sample `sample` of a reply ended ("stop", "length" = cut at max_tokens, ...), else UNKNOWN_FINISH."""
    reasons = completion.finish_reasons or []
    reason = reasons[sample] if sample < len(reasons) else None
    return UNKNOWN_FINISH if reason in (None, "", "None") else str(reason)


# Error prefix of a request refused for its length before it was sent: the row's fault, not the server's,
# so it is a `prompt_too_long` drop and does not count towards a step's failed share.
PROMPT_TOO_LONG = "prompt_too_long"


class BackendError(RuntimeError):
    """A server refused a request for good (bad key, unknown model): one line for the user, no key."""


# Called once per conversation as soon as its Completion is ready: (index into the input, completion).
# Lets callers commit results as they arrive (cache, progress) instead of after the whole batch.
ResultCallback = Callable[[int, Completion], None]


class LLMBackend(Protocol):
    kind: str  # its BACKENDS name ("vllm", "openai", "dry-run"): part of every request-cache key
    model_id: str  # includes a content fingerprint for local folders / the endpoint for APIs

    def generate(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        """One Completion per conversation, same order as the input; `on_result` fires as each is ready."""
        ...

    def close(self) -> None: ...


# The one place a backend is registered: recipe name -> ("module:Class", "module:model-id function").
# Modules are imported only when a recipe names them, so vllm/openai load only for the runs that use them.
BACKENDS: dict[str, tuple[str, str]] = {
    "vllm": ("synth.backends.vllm:VLLMBackend", "synth.backends.vllm:vllm_model_id"),
    "openai": ("synth.backends.openai:OpenAIBackend", "synth.backends.openai_endpoint:openai_model_id"),
    "dry-run": ("synth.backends.dry_run:DryRunBackend", "synth.backends.dry_run:dry_run_model_id"),
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str) -> tuple[str, str]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown llm backend {name!r}; known backends: {', '.join(BACKEND_NAMES)}") from None


def backend_class(name: str) -> type[LLMBackend]:
    """The class registered under `name` (imports its module)."""
    return _load(_entry(name)[0])


def backend_identity(spec: Any) -> tuple[str, str]:
    """(kind, model id) of the backend a recipe names, without building it (no engine start).

    Lets a fully cached step skip loading the LLM at all. The kind is the registry name, which is
    also every backend class's `kind` (a test holds them equal).
    """
    return spec.backend, _load(_entry(spec.backend)[1])(spec)


def make_backend(spec: Any) -> LLMBackend:
    """Build the backend a recipe's `llm` section names (imports the engine lazily)."""
    return backend_class(spec.backend)(spec)  # type: ignore[call-arg]
