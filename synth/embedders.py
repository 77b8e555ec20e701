"""Embedders: texts -> L2-normalised float32 vectors, with query/document prompts.

The sentence-transformers implementation is the only one for now; the protocol keeps the mining
code free of model details so other embedders (an API, an ONNX model) slot in later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from synth.cache import open_sqlite
from synth.faults import crash_point
from synth.models import folder_fingerprint, resolve_model

Role = Literal["query", "document"]


class Embedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """L2-normalised float32 array (len(texts), dim); `progress` gets the count of texts done."""
        ...


def embedder_model_id(spec: Any) -> str:
    """Model name plus a content fingerprint for local folders, so caches notice retrained weights."""
    local = Path(resolve_model(spec.model))
    return spec.model + (f"@{folder_fingerprint(local)}" if local.is_dir() else "")


class SentenceTransformerEmbedder:
    """sentence-transformers model; texts are sorted by length so batches pad little."""

    def __init__(self, spec: Any) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.model_id = embedder_model_id(spec)
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


class EmbeddingCache:
    """Vectors on disk (sqlite, float32 blobs) keyed by model + prompt + normalisation + text hash.

    Re-mining with new margins, or resuming after a crash, re-embeds nothing already embedded.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.conn = open_sqlite(
            self.path,
            "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL)",
            "embedding cache",
        )

    @staticmethod
    def key(model_id: str, prompt: str | None, text: str) -> str:
        payload = json.dumps([model_id, prompt, "l2", text], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, dim, data in self.conn.execute(
                f"SELECT key, dim, data FROM vectors WHERE key IN ({marks})", chunk
            ):
                if len(data) == 4 * dim:  # a damaged row is a miss and gets redone
                    found[key] = np.frombuffer(data, dtype=np.float32)
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [(k, int(v.shape[0]), np.asarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("INSERT OR REPLACE INTO vectors (key, dim, data) VALUES (?, ?, ?)", rows)

    def stats(self) -> dict[str, Any]:
        count, size = self.conn.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM vectors").fetchone()
        return {"path": str(self.path), "vectors": count, "bytes": size}

    def clear(self) -> int:
        removed = self.conn.execute("DELETE FROM vectors").rowcount
        self.conn.execute("VACUUM")
        return removed


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
