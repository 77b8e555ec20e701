"""`--executor ray`: the recipe's embedders run in a Ray actor pool, the driver keeps the cache.

Why: corpus-aware steps (round-trip, mining) run on the driver, which need not have a GPU nor
many cores; their cost is embedding the corpus and the queries. A `PooledEmbedder` is an
`Embedder` whose calls are cut into blocks that a pool of `EmbedActor`s (each holding the model
once, on a GPU when the cluster has them) encode in parallel; the driver's `CachedEmbedder`
still looks every text up in the embedding cache first and stores what comes back (mining's
exact search over the stored vectors is a Ray Data stage of its own: ray_search.py).

The blocks are the ones `SentenceTransformerEmbedder.embed` makes itself (texts sorted by length,
`batch_size * 4` per block), so each actor encodes exactly the batches a local run encodes and
the vectors are the local ones. Actors are restarted and their calls retried by Ray when a
worker dies (`max_restarts`, `max_task_retries`). Knobs (environment): SYNTH_RAY_EMBED_ACTORS
(default: one per GPU on a GPU cluster, else one per CPU), SYNTH_RAY_EMBED_GPUS (GPUs per actor:
1 on a GPU cluster, else 0), SYNTH_RAY_EMBED_CPUS (1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from synth.embedders import Role, assemble, embedder_model_id, length_blocks, make_embedder


class EmbedActor:
    """One embedder, loaded once per actor; a block of texts in, its vectors out."""

    def __init__(self, spec: Any) -> None:
        self.embedder = make_embedder(spec)

    def embed(self, texts: list[str], role: Role) -> np.ndarray:
        return self.embedder.embed(texts, role=role)


def actor_count(resources: dict[str, float], cpus: float, gpus: float, knob: str | None) -> int:
    """Actors of one size the cluster holds (GPUs decide when an actor takes any), or the knob's count."""
    fits = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1) // max(cpus, 0.001))
    return max(1, int(knob) if knob else fits)


def pool_size(ray: Any) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) from the knobs and the cluster's resources."""
    resources = ray.cluster_resources()
    gpus_total = float(resources.get("GPU", 0))
    gpus = float(os.environ.get("SYNTH_RAY_EMBED_GPUS", 1.0 if gpus_total > 0 else 0.0))
    cpus = float(os.environ.get("SYNTH_RAY_EMBED_CPUS", 1))
    return actor_count(resources, cpus, gpus, os.environ.get("SYNTH_RAY_EMBED_ACTORS")), cpus, gpus


class PooledEmbedder:
    """An `Embedder` whose blocks are encoded by a pool of Ray actors, in order, several at once."""

    def __init__(self, spec: Any, ray: Any) -> None:
        from ray.util import ActorPool

        self.spec, self.ray = spec, ray
        self.model_id = embedder_model_id(spec)
        self.actors_count, cpus, gpus = pool_size(ray)
        actor = ray.remote(EmbedActor).options(num_cpus=cpus, num_gpus=gpus or None, max_restarts=3, max_task_retries=3)
        self.actors = [actor.remote(spec) for _ in range(self.actors_count)]
        self.pool = ActorPool(self.actors)

    def embed(self, texts: Sequence[str], *, role: Role, progress: Callable[[int], None] | None = None) -> np.ndarray:
        blocks = length_blocks(texts, self.spec.batch_size * 4)  # SentenceTransformerEmbedder's blocks
        encoded = self.pool.map(lambda actor, idx: actor.embed.remote([texts[i] for i in idx], role), blocks)
        return assemble(len(texts), blocks, encoded, progress)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
