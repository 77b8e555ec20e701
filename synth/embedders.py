"""Embedders: texts -> L2-normalised float32 vectors, with query/document prompts.

The sentence-transformers implementation is the only one for now; the protocol keeps the mining
code free of model details so other embedders (an API, an ONNX model) slot in later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from synth.models import resolve_model

Role = Literal["query", "document"]


class Embedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """L2-normalised float32 array (len(texts), dim); `progress` gets the count of texts done."""
        ...


class SentenceTransformerEmbedder:
    """sentence-transformers model; texts are sorted by length so batches pad little."""

    def __init__(self, spec: Any) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.model_id = spec.model
        self.model = SentenceTransformer(resolve_model(spec.model), device=spec.device)

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        prompt = self.spec.query_prompt if role == "query" else self.spec.document_prompt
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        size = self.spec.batch_size * 4
        for start in range(0, len(texts), size):
            idx = order[start : start + size]
            vectors = self.model.encode(
                [texts[i] for i in idx],
                batch_size=self.spec.batch_size,
                prompt=prompt,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
            if progress:
                progress(len(idx))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
