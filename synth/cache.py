"""Content-addressed request cache and embedding cache (sqlite, stdlib): nothing is paid for twice.

The request key is a canonical hash of everything that determines a reply: backend kind, model id
(local folders carry a content fingerprint), the rendered messages and the sampling parameters
(including the structured-output schema and logprobs). The parser is deliberately not part of
the key: replies are stored raw and re-parsed, so changing a parser costs no request. Only
replies with usable text are stored: a broken reply must be asked again, never served forever.

Every reply is committed the moment it arrives (WAL mode, one small transaction), so a run
killed at any point resumes with everything it already paid for. A damaged file (one sqlite's
`quick_check` does not pass) costs a recomputation, never a crash: the rows that still read are
copied into a fresh file and the damaged one is moved aside with a warning. Read-only commands
open with `mode=ro` and only report damage; they never move or modify a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

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
VECTORS_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL)"


class CacheError(ValueError):
    """A cache folder or file synth cannot use (a file where a folder belongs, no write access): one line."""


def request_key(backend: str, model_id: str, messages: Messages, params: SamplingParams) -> str:
    """Canonical hash of one request; identical requests share a key across recipes and runs."""
    payload = {"backend": backend, "model": model_id, "messages": messages, "params": asdict(params)}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def usable_reply(completion: Completion) -> bool:
    """A reply worth keeping: no error and at least one text, every one a string (`content: null` is not)."""
    texts = completion.texts
    return (
        completion.error is None and isinstance(texts, list) and bool(texts) and all(isinstance(t, str) for t in texts)
    )


def _damage(conn: sqlite3.Connection) -> str | None:
    """None when sqlite's quick_check passes, else its first complaint (one line)."""
    try:
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as e:
        return str(e)
    if rows == [("ok",)]:
        return None
    return " ".join(str(rows[0][0]).split()) if rows else "quick_check returned nothing"


def _readable_rows(src: sqlite3.Connection, table: str, columns: str) -> Iterator[tuple[Any, ...]]:
    """Every row of `table` that still reads, in rowid order, stepping over damaged pages.

    A damaged page fails the scan at its first row: restart past it with a growing jump, and
    pick up single rows inside short jumps so that a page next to the damage is not lost. How
    sqlite reads a damaged page is not fixed (a scan may also just end there), so afterwards the
    rowids the table's own indexes still list are fetched one by one: the index is a separate
    b-tree, untouched by damage to the table's pages.
    """
    scan = f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid"
    one = f"SELECT rowid, {columns} FROM {table} WHERE rowid = ?"
    seen: set[int] = set()

    def single(rowid: int) -> tuple[Any, ...] | None:
        try:
            return src.execute(one, (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            return None

    after, jump = 0, 1  # our tables only ever get sqlite's own rowids, which start at 1
    while after < 2**62:
        try:
            for row in src.execute(scan, (after,)):
                seen.add(row[0])
                yield row[1:]
                after, jump = row[0], 1
            break
        except sqlite3.DatabaseError:
            for rowid in range(after + 1, after + jump + 1 if jump <= 1024 else after + 1):
                found = single(rowid)
                if found is not None and found[0] not in seen:
                    seen.add(found[0])
                    yield found[1:]
            after, jump = after + jump, jump * 2
    for rowid in _indexed_rowids(src, table):
        if rowid not in seen and (found := single(rowid)) is not None:
            seen.add(rowid)
            yield found[1:]


def _indexed_rowids(src: sqlite3.Connection, table: str) -> list[int]:
    """The rowids `table`'s indexes list (as far as they read), in order; [] when there is no index."""
    rowids: set[int] = set()
    try:
        indexes = [r[1] for r in src.execute(f"PRAGMA index_list({table})")]
    except sqlite3.DatabaseError:
        return []
    for index in indexes:
        try:
            for (rowid,) in src.execute(f'SELECT rowid FROM {table} INDEXED BY "{index}"'):
                rowids.add(rowid)
        except sqlite3.DatabaseError:
            continue  # the index is damaged too (from here on): keep what it gave
    return sorted(rowids)


def _salvage(damaged: Path, fresh: sqlite3.Connection) -> int:
    """Copy every row that still reads from `damaged` into `fresh` (same tables); returns how many."""
    try:
        src = sqlite3.connect(f"{damaged.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    copied = 0
    try:
        tables = [r[0] for r in fresh.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            names = [r[1] for r in fresh.execute(f"PRAGMA table_info({table})")]
            columns = ", ".join(names)
            try:
                src.execute(f"SELECT {columns} FROM {table} LIMIT 0")
            except sqlite3.DatabaseError:
                continue  # unreadable schema, or a table of another layout: nothing to copy
            insert = f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"
            fresh.execute("BEGIN")
            for row in _readable_rows(src, table, columns):
                try:
                    copied += fresh.execute(insert, row).rowcount
                except sqlite3.Error:
                    continue  # a row whose values were damaged (NOT NULL, wrong type): redone later
            fresh.execute("COMMIT")
    finally:
        src.close()
    return copied


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(schema)
    return conn


def _repair(path: Path, schema: str, what: str, reason: str) -> None:
    """Salvage the rows that read into a fresh file, move the damaged one aside, put the fresh one in place.

    Runs under a lock file next to the cache, and checks again once it holds it, so two runs
    that both found the damage do not each move the other's fresh file aside.
    """
    import fcntl

    try:
        lock = open(path.with_name(f"{path.name}.repair-lock"), "w")  # noqa: SIM115 (held for the whole repair)
    except OSError as e:
        raise CacheError(f"{what} {path} is damaged ({reason}) and cannot be repaired ({e.strerror or e})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            still = _damage(probe)
            probe.close()
        except sqlite3.DatabaseError as e:
            still = str(e)
        if still is None:
            return  # another run repaired it while we waited
        fresh_path = path.with_name(f"{path.name}.salvage-{os.getpid()}")
        fresh_path.unlink(missing_ok=True)
        fresh = sqlite3.connect(fresh_path, isolation_level=None)
        fresh.execute(schema)
        copied = _salvage(path, fresh)
        fresh.close()
        broken = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                part.rename(Path(f"{broken}{suffix}"))
        fresh_path.rename(path)
    warnings.warn(
        f"{what} {path} is damaged ({reason}); {copied} readable rows copied into a fresh file, "
        f"the damaged file moved to {broken.name}",
        stacklevel=4,
    )


def open_sqlite(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (or create) a WAL sqlite file; a damaged one is salvaged into a fresh file, moved aside, with a warning.

    Shared by the request and embedding caches: a broken cache must cost a recomputation, never a crash.
    """
    if path.exists() and not path.is_file():
        raise CacheError(f"{what} {path} is not a file; remove it or point SYNTH_CACHE_DIR elsewhere")
    try:
        conn = _connect(path, schema)
        reason = _damage(conn)
    except sqlite3.OperationalError as e:
        if e.sqlite_errorname not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise CacheError(f"{what} {path} cannot be opened ({e}); check the folder is writable") from None
        conn, reason = None, str(e)
    except sqlite3.DatabaseError as e:
        conn, reason = None, str(e)
    if reason is None:
        return conn  # type: ignore[return-value]
    if conn is not None:
        conn.close()
    _repair(path, schema, what, reason)
    return _connect(path, schema)


def open_sqlite_readonly(path: Path, schema: str) -> tuple[sqlite3.Connection, str | None]:
    """(connection, damage) without writing anything: a missing file reads as empty, damage is reported."""
    if not path.is_file():
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.execute(schema)
        return conn, None if not path.exists() else "not a file"
    # Without a -wal file (no writer, clean close) `immutable=1` reads the file alone and creates no
    # -wal/-shm next to it; with one, `mode=ro` must read it too.
    flags = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        return sqlite3.connect(":memory:"), str(e)
    return conn, _damage(conn)


def _make_parent(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"{what} folder {path.parent} cannot be created ({e.strerror or e})") from None


class RequestCache:
    """Stores Completion replies by request key; failed or textless replies are never stored (nor served)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.damage: str | None = None  # read-only mode only: what quick_check found
        # Which run paid for each reply: provenance, and proof in tests that no reply was bought twice.
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        if read_only:
            self.conn, self.damage = open_sqlite_readonly(self.path, SCHEMA)
        else:
            _make_parent(self.path, "request cache")
            self.conn = open_sqlite(self.path, SCHEMA, "request cache")

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self.conn.execute(f"SELECT key, value FROM replies WHERE key IN ({marks})", chunk):
                try:
                    completion = Completion(**json.loads(value))
                except (ValueError, TypeError):  # a damaged row: treat as a miss, it will be redone
                    continue
                if usable_reply(completion):  # a broken reply stored by an older synth is asked again
                    found[key] = completion
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put(self, key: str, completion: Completion, model_id: str) -> bool:
        """Store a reply; False (nothing stored) for an error or a reply without usable text."""
        if not usable_reply(completion):
            return False
        value = json.dumps(asdict(completion), ensure_ascii=False)
        self.conn.execute(
            "INSERT OR REPLACE INTO replies (key, value, model, run, created) VALUES (?, ?, ?, ?, ?)",
            (key, value, model_id, self.run_id, time.time()),
        )
        return True

    def stats(self) -> dict[str, Any]:
        size = _size(self.path)
        if self.damage is not None:
            return {"path": str(self.path), "damaged": self.damage, "bytes": size}
        rows, models = self.conn.execute("SELECT count(*), count(DISTINCT model) FROM replies").fetchone()
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


class EmbeddingCache:
    """Vectors on disk (sqlite, float32 blobs) keyed by model + prompt + normalisation + text hash.

    Re-mining with new margins, or resuming after a crash, re-embeds nothing already embedded.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.damage: str | None = None
        if read_only:
            self.conn, self.damage = open_sqlite_readonly(self.path, VECTORS_SCHEMA)
        else:
            _make_parent(self.path, "embedding cache")
            self.conn = open_sqlite(self.path, VECTORS_SCHEMA, "embedding cache")

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
        if self.damage is not None:
            return {"path": str(self.path), "damaged": self.damage, "bytes": _size(self.path)}
        count, size = self.conn.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM vectors").fetchone()
        return {"path": str(self.path), "vectors": count, "bytes": size}

    def clear(self) -> int:
        removed = self.conn.execute("DELETE FROM vectors").rowcount
        self.conn.execute("VACUUM")
        return removed

    def close(self) -> None:
        self.conn.close()


def _size(path: Path) -> int:
    return sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").is_file())


def default_cache_dir() -> Path:
    """`$SYNTH_CACHE_DIR`, else `$SYNTH_HOME/cache` (~/.cache/synth/cache); a file there is one clear error."""
    from synth.models import synth_home

    value = os.environ.get("SYNTH_CACHE_DIR")
    folder = Path(value).expanduser() if value else synth_home() / "cache"
    _check_folder(folder, "SYNTH_CACHE_DIR" if value else "cache folder")
    return folder


def _check_folder(folder: Path, name: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise CacheError(f"{name} {folder} is not a folder; point SYNTH_CACHE_DIR at a folder")
    for parent in folder.parents:  # the first existing ancestor must be a folder we could create it in
        if parent.exists():
            if not parent.is_dir():
                raise CacheError(f"{name} {folder} cannot be created: {parent} is a file")
            break


def open_caches(folder: Path, *, read_only: bool = False) -> tuple[RequestCache, EmbeddingCache]:
    """The request cache and the embedding cache of one cache folder.

    `read_only` (for `synth cache stats`): creates, moves and modifies nothing; damage is reported in stats().
    """
    folder = Path(folder)
    _check_folder(folder, "cache folder")
    return (
        RequestCache(folder / "requests.sqlite", read_only=read_only),
        EmbeddingCache(folder / "embeddings.sqlite", read_only=read_only),
    )
