"""`--executor ray`: row-wise steps as Ray Data `map_batches` stages, one actor pool per stage.

What runs where:
- the driver (`synth generate`) runs the pipeline of synth/executors/pipeline.py: it reads the
  source into shards, runs the steps that need every row (dedup, round-trip, mining) itself, and
  writes the output; it also keeps the request cache and markers, so resume works as locally;
- an embedder a step asks for (round-trip, mining) is a pool of Ray actors encoding blocks of
  texts in parallel (synth/executors/ray_embed.py); the driver keeps its embedding cache;
- mining's exact search and the round-trip rule's scan are `map_batches` stages over the corpus
  vectors the driver stored, one task per chunk of queries (synth/executors/ray_search.py);
  faiss search stays on the driver;
- a row-wise step (generate, a filter's row-local rules, the judge) becomes a `map_batches`
  stage over the shards still to do: each actor of the pool holds the step and builds its LLM
  backend once (a vLLM engine with `num_gpus` per actor on GPU nodes; CPU works too);
- an actor asks a small cache-reader actor (on the driver's node, reading the driver's request
  cache) for replies already paid for, sends the rest, and returns each shard's rows, drop
  records and the fresh replies; the driver commits every reply to the request cache as the
  stream brings it in, so cache, resume, drops and the report behave exactly as locally.
  Per-request seeds make the replies, hence the output, independent of which actor sent what.

Shards reach the actors through the object store when an actor asks for one: a `ShardReader`
actor on the driver's node reads a shard from the work folder per request, so the store holds the
shards in flight, not the whole stage's input (nothing is `ray.put` up front). Knobs (environment): SYNTH_RAY_ACTORS (actors per stage; default: as many
as the cluster's CPUs, or GPUs when the LLM is a vLLM engine on a GPU cluster, allow),
SYNTH_RAY_CPUS_PER_ACTOR (1; a vLLM engine on a CPU cluster: a whole node's CPUs, since it
uses every core it gets, as locally), SYNTH_RAY_GPUS_PER_ACTOR (default: the engine's
tensor_parallel_size on a GPU cluster, else 0). Rows per batch: the shard size (4096).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from synth.backends import Completion
from synth.executors.ray_actor import StepActor, prompt_snapshot
from synth.executors.ray_embed import actor_count
from synth.faults import crash_point
from synth.llm import Usage
from synth.steps.base import Row, Step, StepContext, StepResult


class RayUnavailable(ValueError):
    """Ray is missing, or the cluster cannot be reached: one line for the user."""


def _check_reachable(address: str) -> None:
    """Fail in seconds with one line when nothing listens at a `host:port` address (ray.init would hang)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep:
        raise RayUnavailable(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {reason}") from None


class RayExecutor:
    name = "ray"

    def __init__(self, recipe: Any, recipe_dir: Path | None, *, address: str | None = None, progress: Any = None):
        try:
            import ray
        except ImportError:
            raise RayUnavailable("--executor ray needs Ray: pip install 'synth[ray]'") from None
        self.ray = ray
        self.recipe, self.recipe_dir, self.address = recipe, recipe_dir, address
        self.pool: Any = None
        self.reader: Any = None
        self.started_ray = False
        self.embedders: list[Any] = []

    def start(self, pool: Any) -> None:
        """Connect (or start a local cluster sized to this machine) once the run's caches exist."""
        ray = self.ray
        if self.address:
            _check_reachable(self.address)
        # Actors never crash on the driver's crash points (synth/faults.py): the driver commits.
        env = {"SYNTH_CRASH_AT": "", "TOKENIZERS_PARALLELISM": "false"}
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    runtime_env={"env_vars": env},
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                    configure_logging=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a local cluster"
                raise RayUnavailable(f"cannot start or reach Ray at {where}: {str(e).splitlines()[0]}") from None
            self.started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = False  # the driver shows its own bar
        for name in ("ray", "ray.data"):  # Ray Data's plan and progress lines: its log files keep them
            logging.getLogger(name).setLevel(logging.ERROR)
        self.pool = pool
        pool.build_embedder = self._pooled_embedder  # corpus-aware steps embed on the cluster
        cache = pool.request_cache
        if cache is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from synth.executors.ray_actor import CacheReader

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self.reader = ray.remote(CacheReader).options(num_cpus=0, scheduling_strategy=here).remote(str(cache.path))

    def _pooled_embedder(self, spec: Any) -> Any:
        from synth.executors.ray_embed import PooledEmbedder

        embedder = PooledEmbedder(spec, self.ray)
        self.embedders.append(embedder)
        return embedder

    def search(self, queries: Any, corpus: Any, k: int, corpus_chunk: int) -> Any:
        """Mining's exact search as a Ray Data stage over the stored corpus vectors (synth/executors/ray_search.py)."""
        from synth.executors.ray_search import ray_top_k

        return ray_top_k(self.ray, queries, corpus, k, corpus_chunk)

    def scan(self, queries: Any, targets: Any, corpus: Any) -> Any:
        """The round-trip rule's scan as a Ray Data stage over the stored corpus vectors (ray_search.py)."""
        from synth.executors.ray_search import ray_scan

        return ray_scan(self.ray, queries, targets, corpus)

    def _node_cpus(self) -> float:
        """CPUs of the smallest live node (so an actor that takes that many fits on every node)."""
        cpus = [float(n["Resources"].get("CPU", 0)) for n in self.ray.nodes() if n.get("Alive")]
        return min((c for c in cpus if c > 0), default=1.0)

    def _actors(self, gpu_llm: bool) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) from the knobs and the cluster's resources."""
        resources = self.ray.cluster_resources()
        gpus_total = float(resources.get("GPU", 0))
        tp = int(self.recipe.llm.engine_kwargs.get("tensor_parallel_size", 1)) if self.recipe is not None else 1
        default_gpus = float(tp) if gpu_llm and gpus_total > 0 else 0.0
        gpus = float(os.environ.get("SYNTH_RAY_GPUS_PER_ACTOR", default_gpus))
        # A vLLM engine on CPUs uses every core it is given (as it does locally): one per node, whole.
        default_cpus = self._node_cpus() if gpu_llm and gpus_total == 0 else 1.0
        cpus = float(os.environ.get("SYNTH_RAY_CPUS_PER_ACTOR", default_cpus))
        return actor_count(resources, cpus, gpus, os.environ.get("SYNTH_RAY_ACTORS")), cpus, gpus

    def map_batches(
        self, step: Step, ctx: StepContext, todo: Sequence[tuple[int, Path]], prepare: Callable[[list[Row]], list[Row]]
    ) -> Iterator[tuple[int, StepResult]]:
        """One `map_batches` stage over the shards to do; results in the order they come back."""
        if not todo:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from synth.executors.ray_actor import ShardReader

        ray = self.ray
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        reader = ray.remote(ShardReader).options(
            num_cpus=0, scheduling_strategy=here, max_restarts=3, max_task_retries=3
        )
        shards = reader.remote(prepare)  # stateless: a restarted reader serves the same shards
        items = ray.data.from_items([{"shard": i, "path": str(path)} for i, path in todo])
        gpu_llm = self.recipe is not None and self.recipe.llm.backend == "vllm"
        actors, cpus, gpus = self._actors(gpu_llm)
        stage = items.map_batches(
            StepActor,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))),
            num_cpus=cpus,
            num_gpus=gpus or None,
            fn_constructor_kwargs={
                "step": step,
                "recipe": self.recipe,
                "prompts": prompt_snapshot(ctx.prompts),
                "reader": self.reader,
                "shards": shards,
            },
        )
        cache = self.pool.request_cache if self.pool is not None else None
        try:
            yield from self._consume(stage, step, ctx, cache, len(todo), actors)
        finally:
            ray.kill(shards)

    def _consume(
        self, stage: Any, step: Step, ctx: StepContext, cache: Any, total: int, actors: int
    ) -> Iterator[tuple[int, StepResult]]:
        """Each shard's result as the stream brings it, its fresh replies committed to the cache first."""
        import numpy as np

        with ctx.progress.task(f"{step.name}: shards on Ray ({actors} actors)", total) as advance:
            for batch in stage.iter_batches(batch_size=1, batch_format="numpy"):
                for shard, payload in zip(np.asarray(batch["shard"]).tolist(), batch["result"], strict=True):
                    data = json.loads(payload)
                    if cache is not None:
                        for key, reply, model_id in data["replies"]:
                            cache.put(key, Completion(**reply), model_id)
                            crash_point("reply")
                    advance(1)
                    yield (
                        int(shard),
                        StepResult(rows=data["rows"], dropped=data["dropped"], usage=Usage(**data["usage"])),
                    )

    def close(self) -> None:
        for embedder in self.embedders:
            embedder.close()
        self.embedders = []
        if self.reader is not None:
            self.ray.kill(self.reader)
            self.reader = None
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
