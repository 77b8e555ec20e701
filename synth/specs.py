"""Specs of the models and sources a user names: shared by recipes and the `synth mine` command.

Why a module of their own: step kinds, backends and `synth mine` need these specs, while the
recipe (which builds its `steps:` schema from the step registry) must be importable after them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synth.backends import BACKEND_NAMES
from synth.models import DEFAULT_EMBEDDER, DEFAULT_LLM


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    """Where the input texts come from: a file (paths are relative to the recipe file) or inline seeds."""

    path: Path | None = None
    seeds: list[str | dict[str, Any]] | None = None  # task families, topics, personas (synth/sources.py)
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text", "dataset", "yaml"] = "auto"
    text_column: str = "text"
    id_column: str | None = "id"
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> SourceSpec:
        if (self.path is None) == (self.seeds is None):
            raise ValueError("give exactly one of `path` (a file) or `seeds` (a list given inline)")
        if self.seeds is not None and not self.seeds:
            raise ValueError("seeds: needs at least one seed")
        return self


class SamplingSpec(Strict):
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=96, ge=1)
    n: int = Field(default=1, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


API_ONLY_FIELDS = (
    "base_url",
    "api_key_env",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout",
    "max_retries",
)


class LLMSpec(Strict):
    backend: str = "vllm"  # a registered backend: vllm, openai, dry-run (synth/backends/__init__.py)
    model: str = DEFAULT_LLM  # backend openai: the server's model name
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=2048, ge=128)
    batch_size: int = Field(default=512, ge=1)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # backend openai (any OpenAI-compatible server); see synth/backends/openai.py
    base_url: str | None = None  # default https://api.openai.com/v1
    api_key_env: str | None = None  # NAME of the env var holding the key (default OPENAI_API_KEY)
    max_concurrency: int = Field(default=32, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=120.0, gt=0)  # seconds per request
    max_retries: int = Field(default=6, ge=0)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # Never echo the value: a pasted key must not end up in an error message.
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the NAME of an environment variable holding the key, not the key")
        return v

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {v!r} (known: {', '.join(BACKEND_NAMES)})")
        return v

    @model_validator(mode="after")
    def _api_fields(self) -> LLMSpec:
        if self.backend != "openai":
            misplaced = [f for f in API_ONLY_FIELDS if f in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: only used with backend: openai")
        return self


class EmbedderSpec(Strict):
    model: str = DEFAULT_EMBEDDER
    # torch; or ONNX Runtime on the CPU, exported once into synth's model cache (synth/embed_onnx.py):
    # onnx (fp32, same vectors) or onnx-int8 (dynamic int8 weights: faster, vectors differ slightly)
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    batch_size: int = Field(default=64, ge=1)
    device: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None

    @model_validator(mode="after")
    def _onnx_on_cpu(self) -> EmbedderSpec:
        if self.backend != "torch" and self.device not in (None, "cpu"):
            raise ValueError(f"backend {self.backend} runs on the CPU; use backend: torch for device {self.device!r}")
        return self
