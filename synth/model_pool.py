"""The recipe's models by name: LLMs and embedders, each built lazily, once per run, only if needed.

Why lazy: a step whose requests are all in the cache never starts an engine, and a recipe that
judges with a second LLM pays for loading it only when a judge request is not cached.
`None` and "default" name the recipe's top-level `llm:` / `embedder:`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synth.backends import LLMBackend
from synth.cache import EmbeddingCache, RequestCache, default_cache_dir, open_caches
from synth.embedders import CachedEmbedder, Embedder, embedder_model_id, make_embedder
from synth.llm import CachedLLM
from synth.progress import Progress, SilentProgress

if TYPE_CHECKING:
    from synth.recipe import Recipe

DEFAULT = "default"


class ModelPool:
    """Hands steps their named models (`ctx.llm(name)`, `ctx.embedder(name)`); closes what it built."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        progress: Progress | None = None,
        use_cache: bool = True,
        cache_dir: Path | None = None,
        llm: LLMBackend | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.recipe = recipe
        self.progress = progress or SilentProgress()
        self.request_cache: RequestCache | None = None
        self.embedding_cache: EmbeddingCache | None = None
        if use_cache:
            self.request_cache, self.embedding_cache = open_caches(cache_dir or default_cache_dir())
        self._given_llm = llm  # already-built default models (tests, notebooks) are reused, never closed
        self._given_embedder = embedder
        self._llms: dict[str, CachedLLM] = {}
        self._embedders: dict[str, Embedder] = {}
        # How an embedder is built when a step needs one: the executor may swap it (Ray: an actor pool).
        self.build_embedder: Callable[[Any], Embedder] = make_embedder

    def llm(self, name: str | None = None) -> CachedLLM:
        key = name or DEFAULT
        if key not in self._llms:
            given = self._given_llm if key == DEFAULT else None
            spec = self.recipe.llm_spec(key)
            self._llms[key] = CachedLLM(key, spec, self.request_cache, self.progress, backend=given)
        return self._llms[key]

    def embedder(self, name: str | None = None) -> Embedder:
        key = name or DEFAULT
        if key not in self._embedders:
            spec = self.recipe.embedder_spec(key)
            given = self._given_embedder if key == DEFAULT else None
            loaded: list[Embedder] = [given] if given is not None else []

            def load() -> Embedder:
                if not loaded:
                    with self.progress.task(f"loading embedder {key}: {spec.model}", 1) as advance:
                        loaded.append(self.build_embedder(spec))
                        advance(1)
                return loaded[0]

            if self.embedding_cache is None:
                self._embedders[key] = load()
            else:
                model_id = given.model_id if given is not None else embedder_model_id(spec)
                prompts = {"query": spec.query_prompt, "document": spec.document_prompt}
                self._embedders[key] = CachedEmbedder(load, model_id, self.embedding_cache, prompts)
        return self._embedders[key]

    def identities(self) -> dict[str, str]:
        """Model ids for the summary: the defaults as `llm`/`embedder`, named ones as `llm:NAME`."""
        out = {"llm": self.llm().model_id}
        default_embedder = self._given_embedder
        out["embedder"] = (
            default_embedder.model_id if default_embedder is not None else embedder_model_id(self.recipe.embedder)
        )
        for key, cached in self._llms.items():
            if key != DEFAULT:
                out[f"llm:{key}"] = cached.model_id
        for key in self._embedders:
            if key != DEFAULT:
                out[f"embedder:{key}"] = embedder_model_id(self.recipe.embedder_spec(key))
        return out

    def close(self) -> None:
        for cached in self._llms.values():
            cached.close()
        if self.request_cache is not None:
            self.request_cache.close()
