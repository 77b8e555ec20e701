"""Shared fixtures: the test doubles and the real bundled models, each built once per test session.

Step, filter, cache, resume-bookkeeping and CLI plumbing tests use the doubles: the `dry-run` LLM
backend and the `hashing` embedder (real implementations of the protocols, instant, deterministic).
Tests about what the real models do, and the end-to-end runs, use the real ones: one vLLM engine
serves every such test in this process (engine start-up is about a minute on CPU); the one test
that kills a `synth generate` subprocess starts its own engine, as a user's command would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# Every test session starts with an empty request/embedding cache of its own, so request counts
# are real and no test is served replies that a user's earlier runs paid for.
os.environ["SYNTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="synth-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="session")
def dry_backend() -> object:
    """The `dry-run` LLM backend: same request, same reply, no model."""
    from synth.backends.dry_run import DryRunBackend
    from synth.specs import LLMSpec

    return DryRunBackend(LLMSpec(backend="dry-run"))


@pytest.fixture(scope="session")
def hashing_embedder() -> object:
    """The `hashing` embedder: texts sharing words score higher, no model."""
    from synth.embedders import HashingEmbedder
    from synth.specs import EmbedderSpec

    return HashingEmbedder(EmbedderSpec(model="hashing"))


@pytest.fixture(scope="session")
def vllm_backend() -> Iterator[object]:
    from synth.backends.vllm import VLLMBackend
    from synth.recipe import LLMSpec

    backend = VLLMBackend(LLMSpec())
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def embedder() -> object:
    from synth.embedders import SentenceTransformerEmbedder
    from synth.recipe import EmbedderSpec

    return SentenceTransformerEmbedder(EmbedderSpec())


@pytest.fixture(scope="session")
def quickstart_run(vllm_backend: object, embedder: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """The shipped quickstart recipe, run once through the real engine and embedder."""
    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    recipe, recipe_dir = load_recipe(QUICKSTART)
    out = tmp_path_factory.mktemp("quickstart") / "quickstart"
    return run_recipe(recipe, recipe_dir, output_dir=out, llm=vllm_backend, embedder=embedder)  # type: ignore[arg-type]


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def make_ctx(
    documents: list[dict] | None = None,
    *,
    llm: object = None,
    embedder: object = None,
    sampling: object = None,
    cache: object = None,
    prompts: object = None,
) -> object:
    """A StepContext whose default LLM/embedder are the given, already-built models (any name maps to them)."""
    from synth.llm import CachedLLM
    from synth.prompts import PromptLibrary
    from synth.recipe import LLMSpec, SamplingSpec
    from synth.steps.base import StepContext

    def no_model(name: str | None = None) -> object:
        raise AssertionError("this test must not need a model")

    spec = LLMSpec(sampling=sampling or SamplingSpec())
    cached = CachedLLM("default", spec, cache, backend=llm) if llm is not None else None  # type: ignore[arg-type]
    return StepContext(
        prompts=prompts or PromptLibrary(None),  # type: ignore[arg-type]
        documents=documents or [],
        llm=(lambda name=None: cached) if cached is not None else no_model,  # type: ignore[arg-type,misc]
        embedder=(lambda name=None: embedder) if embedder is not None else no_model,  # type: ignore[arg-type,misc]
    )
