"""Content-addressed request cache (sqlite, stdlib): nothing is paid for twice.

The key is a canonical hash of everything that determines a reply: backend kind, model id
(local folders carry a content fingerprint), the rendered messages and the sampling parameters
(including the structured-output schema and logprobs). The parser is deliberately not part of
the key: replies are stored raw and re-parsed, so changing a parser costs no request.

Every reply is committed the moment it arrives (WAL mode, one small transaction), so a run
killed at any point resumes with everything it already paid for. A damaged database file is
moved aside with a warning and a fresh one started; it never crashes the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synth.backends import Completion, Messages, SamplingParams

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    model TEXT NOT NULL,
    run TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def request_key(backend: str, model_id: str, messages: Messages, params: SamplingParams) -> str:
    """Canonical hash of one request; identical requests share a key across recipes and runs."""
    payload = {"backend": backend, "model": model_id, "messages": messages, "params": asdict(params)}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def open_sqlite(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (or create) a WAL sqlite file; a damaged one is moved aside with a warning and replaced.

    Shared by the request and embedding caches: a broken cache must cost a recomputation, never a crash.
    """

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(schema)
        return conn

    try:
        conn = connect()
        conn.execute("PRAGMA quick_check").fetchone()
        return conn
    except sqlite3.DatabaseError as e:
        broken = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        warnings.warn(f"{what} {path} is damaged ({e}); moved to {broken.name}, starting afresh", stacklevel=3)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                part.rename(Path(f"{broken}{suffix}"))
        return connect()


class RequestCache:
    """Stores Completion replies by request key; failed requests (with `error`) are never stored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        # Which run paid for each reply: provenance, and proof in tests that no reply was bought twice.
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.conn = open_sqlite(self.path, SCHEMA, "request cache")

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self.conn.execute(f"SELECT key, value FROM replies WHERE key IN ({marks})", chunk):
                try:
                    found[key] = Completion(**json.loads(value))
                except (ValueError, TypeError):  # a damaged row: treat as a miss, it will be redone
                    continue
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put(self, key: str, completion: Completion, model_id: str) -> None:
        if completion.error is not None:
            return
        value = json.dumps(asdict(completion), ensure_ascii=False)
        self.conn.execute(
            "INSERT OR REPLACE INTO replies (key, value, model, run, created) VALUES (?, ?, ?, ?, ?)",
            (key, value, model_id, self.run_id, time.time()),
        )

    def stats(self) -> dict[str, Any]:
        rows, models = self.conn.execute("SELECT count(*), count(DISTINCT model) FROM replies").fetchone()
        size = sum(Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").exists())
        return {"path": str(self.path), "replies": rows, "models": models, "bytes": size}

    def clear(self, models: Iterable[str] | None = None) -> int:
        if models is None:
            removed = self.conn.execute("DELETE FROM replies").rowcount
        else:
            removed = sum(self.conn.execute("DELETE FROM replies WHERE model = ?", (m,)).rowcount for m in models)
        self.conn.execute("VACUUM")
        return removed

    def close(self) -> None:
        self.conn.close()


def default_cache_dir() -> Path:
    """`$SYNTH_CACHE_DIR`, else `$SYNTH_HOME/cache` (~/.cache/synth/cache)."""
    from synth.models import synth_home

    return Path(os.environ.get("SYNTH_CACHE_DIR") or synth_home() / "cache")


def open_caches(folder: Path) -> tuple[RequestCache, Any]:
    """The request cache and the embedding cache of one cache folder."""
    from synth.embedders import EmbeddingCache

    return RequestCache(folder / "requests.sqlite"), EmbeddingCache(folder / "embeddings.sqlite")
