"""Embedders: texts -> L2-normalised float32 vectors, with query/document prompts.

The protocol keeps the mining code free of model details. The embedder's model name picks the
class (`EMBEDDERS`): `hashing` / `hashing-<dim>` is `HashingEmbedder`, a tiny deterministic
feature-hashing embedder with no model to load, so users can check a recipe's mining plumbing
for free and unit tests run in milliseconds; every other name is a sentence-transformers model.
Adding an embedder = a class with `identity(spec)` and `embed(...)`, and one line in `EMBEDDERS`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from synth.cache import EmbeddingCache
from synth.embed_onnx import EXPORT_VERSION
from synth.faults import crash_point
from synth.models import folder_fingerprint, resolve_model

Role = Literal["query", "document"]


class Embedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """L2-normalised float32 array (len(texts), dim); `progress` gets the count of texts done."""
        ...


class SentenceTransformerEmbedder:
    """sentence-transformers model, run by torch or (backend onnx / onnx-int8) by ONNX Runtime.

    Texts are sorted by length over the whole call, then encoded in blocks: sentence-transformers
    sorts within each `encode` call only, so the global sort is what keeps blocks' padding low.
    """

    @staticmethod
    def identity(spec: Any) -> str:
        """Model name plus a content fingerprint for local folders, so caches notice retrained weights;
        plus the backend when it is not torch (ONNX and int8 vectors differ slightly from torch's)."""
        local = Path(resolve_model(spec.model))
        backend = getattr(spec, "backend", "torch")
        suffix = "" if backend == "torch" else f"+{backend}-v{EXPORT_VERSION}"
        return spec.model + (f"@{folder_fingerprint(local)}" if local.is_dir() else "") + suffix

    def __init__(self, spec: Any) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.model_id = self.identity(spec)
        source = resolve_model(spec.model)
        self.exported = False  # True when this load exported the ONNX model (the first use only)
        if getattr(spec, "backend", "torch") == "torch":
            self.model = SentenceTransformer(source, device=spec.device)
            return
        from synth.embed_onnx import attach, ensure_export, session

        def load(**options: Any) -> Any:
            return SentenceTransformer(source, device="cpu", **options)

        self.onnx_path, self.exported = ensure_export(spec.model, Path(source), spec.backend, load)
        self.model = load()
        attach(self.model, session(self.onnx_path))

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        prompt = self.spec.query_prompt if role == "query" else self.spec.document_prompt
        blocks = length_blocks(texts, self.spec.batch_size * 4)
        encoded = (
            self.model.encode(
                [texts[i] for i in idx],
                batch_size=self.spec.batch_size,
                prompt=prompt,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            for idx in blocks
        )
        return assemble(len(texts), blocks, encoded, progress)


def length_blocks(texts: Sequence[str], size: int) -> list[np.ndarray]:
    """Indices of `texts`, longest first, cut into blocks of `size`: each block pads little."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[start : start + size] for start in range(0, len(texts), size)]


def assemble(
    n: int, blocks: Sequence[np.ndarray], vectors: Iterable[np.ndarray], progress: Callable[[int], None] | None
) -> np.ndarray:
    """The (n, dim) array of every block's vectors put back at its texts' places."""
    out: np.ndarray | None = None
    for idx, block in zip(blocks, vectors, strict=True):
        if out is None:
            out = np.zeros((n, block.shape[1]), dtype=np.float32)
        out[idx] = block
        if progress:
            progress(len(idx))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


HASHING_NAME = re.compile(r"hashing(?:-(\d+))?")
HASHING_DEFAULT_DIM = 256
HASHING_VERSION = "1"  # bump when the features change: it is part of the model id (embedding cache keys)


@lru_cache(maxsize=1 << 16)
def _feature_hash(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")


class HashingEmbedder:
    """Feature hashing of word unigrams and bigrams into `dim` signed buckets, L2-normalised.

    Deterministic across processes and machines (blake2b, not Python's salted hash), nothing to
    load, ~10k short texts a second. Texts sharing words score higher than unrelated texts, which
    is all mining needs to exercise its windows, margins and formats. The role's prompt is put
    before the text, as sentence-transformers does, so prompts change the vectors here too.
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.dim = self.dimension(spec.model)
        self.model_id = self.identity(spec)

    @staticmethod
    def dimension(model: str) -> int:
        match = HASHING_NAME.fullmatch(model)
        dim = int(match.group(1)) if match and match.group(1) else HASHING_DEFAULT_DIM
        if not match or not 8 <= dim <= 65536:
            raise ValueError(
                f"hashing embedder name must be hashing or hashing-<dim>, 8 <= dim <= 65536; got {model!r}"
            )
        return dim

    @staticmethod
    def identity(spec: Any) -> str:
        if getattr(spec, "backend", "torch") != "torch":
            raise ValueError(
                f"embedder {spec.model!r}: backend {spec.backend!r} applies to sentence-transformers models only"
            )
        return f"hashing-{HashingEmbedder.dimension(spec.model)}@v{HASHING_VERSION}"

    def vector(self, text: str) -> np.ndarray:
        words = re.findall(r"\w+", text.casefold())
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] or ["\0empty"]
        out = np.zeros(self.dim, dtype=np.float32)
        for feature in features:
            h = _feature_hash(feature)
            out[h % self.dim] += 1.0 if h >> 63 else -1.0
        norm = float(np.linalg.norm(out))
        if norm == 0.0:  # every feature cancelled out: fall back to one fixed direction
            out[_feature_hash(text) % self.dim] = 1.0
            return out
        return out / norm

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        prompt = (self.spec.query_prompt if role == "query" else self.spec.document_prompt) or ""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        size = max(1, getattr(self.spec, "batch_size", 64))
        for start in range(0, len(texts), size):
            for i in range(start, min(start + size, len(texts))):
                out[i] = self.vector(prompt + texts[i])
            if progress:
                progress(min(size, len(texts) - start))
        return out


# The one place an embedder is registered: model-name pattern -> class; any other name is
# a sentence-transformers model (alias, local folder or hub id).
EMBEDDERS: tuple[tuple[re.Pattern[str], type[Any]], ...] = ((HASHING_NAME, HashingEmbedder),)


def embedder_class(model: str) -> type[Any]:
    """The class that serves the embedder model name `model`."""
    return next((cls for pattern, cls in EMBEDDERS if pattern.fullmatch(model)), SentenceTransformerEmbedder)


def embedder_model_id(spec: Any) -> str:
    """Id of the embedder a recipe names (embedding-cache keys), without loading any model."""
    return embedder_class(spec.model).identity(spec)


def make_embedder(spec: Any) -> Embedder:
    """Build the embedder a recipe's `embedder` section names (loads the model)."""
    return embedder_class(spec.model)(spec)


class CachedEmbedder:
    """Looks every text up in the cache and embeds only the misses; the model loads only if needed."""

    def __init__(
        self, load: Callable[[], Embedder], model_id: str, cache: EmbeddingCache, prompts: dict[str, str | None]
    ) -> None:
        self.load = load
        self.cache = cache
        self.prompts = prompts
        self.model_id = model_id
        self.commit_every = 2048

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [EmbeddingCache.key(self.model_id, self.prompts.get(role), t) for t in texts]
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if progress and len(texts) - len(missing):
            progress(len(texts) - len(missing))
        fresh: dict[str, np.ndarray] = {}
        # Longest first, stored every `commit_every` texts: a crash loses at most one chunk of work.
        missing.sort(key=lambda i: -len(texts[i]))
        for start in range(0, len(missing), self.commit_every):
            chunk = missing[start : start + self.commit_every]
            vectors = self.load().embed([texts[i] for i in chunk], role=role, progress=progress)
            batch = {keys[i]: vectors[j] for j, i in enumerate(chunk)}
            self.cache.put_many(list(batch.items()))
            fresh.update(batch)
            crash_point("embedded")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] if k in found else fresh[k] for k in keys]).astype(np.float32, copy=False)
