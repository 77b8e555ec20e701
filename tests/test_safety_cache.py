"""Issue 12, caches: damage is salvaged not ignored, read-only commands touch nothing, broken replies never stored.

Real sqlite files damaged the way disks and crashes damage them: a table page overwritten in the
middle of the file, garbage instead of a database, a file where the cache folder should be.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from synth import cache
from synth.backends import Completion

PAGE = 4096


def filled(path: Path, n: int = 2000) -> dict[str, str]:
    """A request cache of n replies, checkpointed into the main file; returns key -> text."""
    store = cache.RequestCache(path)
    texts = {f"k{i}": f"reply {i} " + "x" * 200 for i in range(n)}
    for key, text in texts.items():
        store.put(key, Completion(texts=[text]), "m")
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return texts


def damage_table_pages(path: Path, count: int = 2) -> None:
    """Overwrite the cell pointers of `count` table leaf pages in the middle of the file (quick_check fails)."""
    data = bytearray(path.read_bytes())
    leaves = [p for p in range(1, len(data) // PAGE) if data[p * PAGE] == 0x0D]  # 0x0D: table b-tree leaf
    start = len(leaves) // 2 if count < len(leaves) else 0
    for page in leaves[start : start + count]:
        data[page * PAGE + 8 : page * PAGE + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_page_damage_is_found_and_readable_rows_are_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    texts = filled(path)
    damage_table_pages(path)
    with pytest.warns(UserWarning, match=r"is damaged .*readable rows copied into a fresh file"):
        store = cache.RequestCache(path)
    found = store.get_many(list(texts))
    assert 1900 <= len(found) < len(texts), "all but the two damaged pages' rows are kept"
    assert all(reply.texts == [texts[key]] for key, reply in found.items()), "salvaged rows are exact copies"
    assert store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert store.clear() == len(found)  # `cache clear` used to crash on the damaged pages
    moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("requests.sqlite.corrupt-")]
    assert moved, "the damaged file is kept aside for inspection"


def test_garbage_embedding_cache_is_replaced_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite"
    path.write_bytes(b"not a database" * 500)
    with pytest.warns(UserWarning, match="0 readable rows"):
        store = cache.EmbeddingCache(path)
    assert store.stats()["vectors"] == 0 and store.clear() == 0


@pytest.mark.parametrize("damage", ["pages", "garbage"])
def test_read_only_stats_report_damage_and_change_nothing(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "requests.sqlite"
    filled(path, 500)
    if damage == "pages":
        damage_table_pages(path)
    else:
        path.write_bytes(b"not a database" * 500)
    before = listing(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "moved aside" warning either
        requests, embeddings = cache.open_caches(tmp_path, read_only=True)
        stats = requests.stats()
    assert stats["path"] == str(path) and stats["damaged"]
    assert embeddings.stats()["vectors"] == 0  # missing: reported empty, not created
    requests.close()
    embeddings.close()
    assert listing(tmp_path) == before, "nothing moved, created or modified"


def test_read_only_open_of_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    requests, embeddings = cache.open_caches(tmp_path / "nowhere", read_only=True)
    assert requests.stats()["replies"] == 0 and embeddings.stats()["vectors"] == 0
    assert not (tmp_path / "nowhere").exists()


def run_synth(*args: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache_dir))
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_cache_stats_reports_damage_without_moving_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    filled(folder / "requests.sqlite", 500)
    damage_table_pages(folder / "requests.sqlite")
    before = listing(folder)
    result = run_synth("cache", "stats", cache_dir=folder)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "damaged" in result.stdout
    assert listing(folder) == before


def test_cache_dir_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "cache.txt"
    file.write_text("not a folder")
    with pytest.raises(cache.CacheError, match=r"cache.txt is not a folder"):
        cache.open_caches(file)
    with pytest.raises(cache.CacheError, match=r"cannot be created: .*cache.txt is a file"):
        cache.open_caches(file / "sub")
    for where in (file, file / "sub"):
        result = run_synth("cache", "stats", cache_dir=where)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cache.txt" in lines[0], result.stderr
    assert file.read_text() == "not a folder"


BROKEN = [
    Completion(texts=[]),  # `choices: []`
    Completion(texts=[None]),  # type: ignore[list-item]  # `content: null`
    Completion(texts=["fine", None]),  # type: ignore[list-item]  # one of n samples is null
    Completion(texts=["partial"], error="HTTP 500 after 3 retries"),
]


def test_a_reply_without_usable_text_is_never_stored(tmp_path: Path) -> None:
    store = cache.RequestCache(tmp_path / "r.sqlite")
    for i, reply in enumerate(BROKEN):
        assert store.put(f"k{i}", reply, "m") is False
    assert store.conn.execute("SELECT count(*) FROM replies").fetchone() == (0,)
    assert store.get_many([f"k{i}" for i in range(len(BROKEN))]) == {}
    assert store.put("ok", Completion(texts=[""]), "m") is True  # an empty sample is still a real reply
    assert store.get_many(["ok"])["ok"].texts == [""]


def test_broken_replies_stored_by_an_older_synth_are_asked_again(tmp_path: Path) -> None:
    store = cache.RequestCache(tmp_path / "r.sqlite")
    for i, value in enumerate(['{"texts": []}', '{"texts": [null]}', '{"texts": ["a"], "error": "boom"}']):
        store.conn.execute(
            "INSERT INTO replies (key, value, model, run, created) VALUES (?, ?, 'm', 'old', 0)", (f"k{i}", value)
        )
    store.conn.execute(
        "INSERT INTO replies (key, value, model, run, created) VALUES ('good', ?, 'm', 'old', 0)",
        (json.dumps({"texts": ["a query"]}),),
    )
    assert list(store.get_many(["k0", "k1", "k2", "good"])) == ["good"]
    assert (store.hits, store.misses) == (1, 3)


def test_a_repaired_file_is_not_repaired_again_by_the_next_opener(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    texts = filled(path)
    damage_table_pages(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cache.RequestCache(path)
        second = cache.RequestCache(path)  # finds the repaired file: no second move
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1
    first.put("new", Completion(texts=["n"]), "m")
    assert second.get_many(["new"])["new"].texts == ["n"], "both write the same, live file"
    assert len(second.get_many(list(texts))) >= 1900
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchall() == [("ok",)]


def test_the_key_index_still_lists_every_rowid_when_all_table_pages_are_damaged(tmp_path: Path) -> None:
    """The salvage's second pass: rowids come from the key index, a b-tree apart from the table's pages."""
    path = tmp_path / "requests.sqlite"
    filled(path, 300)
    damage_table_pages(path, count=10**6)  # every table leaf
    src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.DatabaseError):
        src.execute("SELECT count(value) FROM replies").fetchone()
    assert cache._indexed_rowids(src, "replies") == list(range(1, 301))
    src.close()
