"""What runs inside Ray: the actor that holds a row-wise step and its LLMs, and the cache reader.

The actor never writes the request cache (it may be on another machine, and the cache is one
sqlite file on the driver's): it reads replies already paid for through `CacheReader`, an actor
pinned to the driver's node, and hands every fresh reply back with the shard's result so that
the driver commits it. Templates travel as a snapshot of the recipe's prompt folders, since a
worker node may not have the recipe's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synth.backends import Completion
from synth.cache import RequestCache, usable_reply
from synth.llm import CachedLLM
from synth.prompts import PromptLibrary
from synth.steps.base import Row, Step, StepContext

TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2")
MAX_TEMPLATE_BYTES = 1 << 20


def prompt_snapshot(prompts: PromptLibrary) -> dict[str, str]:
    """Every template the library can load, by name, first folder first (as its loader finds them)."""
    found: dict[str, str] = {}
    for folder in prompts.env.loader.searchpath:  # type: ignore[union-attr]
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.suffix in TEMPLATE_SUFFIXES and path.is_file() and path.stat().st_size <= MAX_TEMPLATE_BYTES:
                found.setdefault(name, path.read_text(encoding="utf-8"))
    return found


class CacheReader:
    """Answers `get_many` from the driver's request cache (read-only; the driver writes)."""

    def __init__(self, path: str) -> None:
        self.cache = RequestCache(Path(path), read_only=True)

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        return {k: asdict(c) for k, c in self.cache.get_many(keys).items()}


class ShardReader:
    """Hands out one shard's rows (prepared, as JSON) on request: actors pull shards as they go, so
    the object store holds the shards in flight, never the whole stage's input at once."""

    def __init__(self, prepare: Any) -> None:
        self.prepare = prepare

    def read(self, path: str) -> str:
        from synth.executors.shards import read_rows

        return json.dumps(self.prepare(read_rows(Path(path))), ensure_ascii=False)


class _Replies:
    """The request-cache protocol CachedLLM uses, inside an actor: reads via the reader, keeps fresh replies."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.fresh: list[tuple[str, dict[str, Any], str]] = []

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        if self.reader is None:
            return {}
        import ray

        return {k: Completion(**v) for k, v in ray.get(self.reader.get_many.remote(list(keys))).items()}

    def put(self, key: str, completion: Completion, model_id: str) -> bool:
        if not usable_reply(completion):
            return False
        self.fresh.append((key, asdict(completion), model_id))
        return True


class StepActor:
    """A Ray Data map_batches class: one row-wise step, its LLMs built once per actor, shard in, result out."""

    def __init__(self, step: Step, recipe: Any, prompts: dict[str, str], reader: Any, shards: Any) -> None:
        from jinja2 import DictLoader

        self.step, self.shards = step, shards
        self.replies = _Replies(reader)
        library = PromptLibrary(None)
        library.env.loader = DictLoader(prompts)
        llms: dict[str, CachedLLM] = {}

        def llm(name: str | None = None) -> CachedLLM:
            key = name or "default"
            if key not in llms:
                llms[key] = CachedLLM(key, recipe.llm_spec(name), self.replies)  # type: ignore[arg-type]
            return llms[key]

        def embedder(name: str | None = None) -> Any:
            raise RuntimeError(f"step {step.name!r} asked for an embedder inside a row-wise Ray stage")

        self.llms = llms
        self.ctx = StepContext(prompts=library, documents=[], llm=llm, embedder=embedder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import ray

        results = []
        for path in batch["path"]:
            rows: list[Row] = json.loads(ray.get(self.shards.read.remote(str(path))))
            self.replies.fresh = []
            result = self.step(rows, self.ctx)
            payload = {
                "rows": result.rows,
                "dropped": result.dropped,
                "usage": asdict(result.usage),
                "replies": self.replies.fresh,
            }
            results.append(json.dumps(payload, ensure_ascii=False))
        return {"shard": batch["shard"], "result": np.array(results, dtype=object)}

    def __del__(self) -> None:
        for cached in getattr(self, "llms", {}).values():
            cached.close()
