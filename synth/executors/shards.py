"""Rows on disk between steps: numbered JSON-lines shards, written atomically, read back batch by batch.

Why JSON lines: rows are plain JSON-able dicts (strings, numbers, lists, dicts), JSON keeps their
key order and their int/float distinction, and a shard is a file anyone can read. Loading one
never runs code (unlike pickle), so a planted file in the work folder can only fail to parse.
Why atomic: a shard (or a marker) is written to a temporary name and renamed, so a run killed
mid-write leaves either the whole file or none, and a resumed run trusts every file it finds.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """A marker's content; None when missing or unreadable (then the work it marks is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_rows(path: Path, rows: Iterable[Row]) -> int:
    """One shard, atomically; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_rows(path: Path, strings: dict[str, str] | None = None) -> list[Row]:
    """One shard's rows. With `strings`, long equal strings share one object (see `share_strings`)."""
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if strings is not None:
        share_strings(rows, strings)
    return rows


def share_strings(rows: Sequence[Row], strings: dict[str, str], min_len: int = 64) -> None:
    """Make equal long top-level string values one object, as they were before they went to disk.

    Why: a generate step's rows all point at their document's one `text` string in memory; read
    back from a shard each row has its own copy. A step that needs every row at once (mining,
    dedup) would otherwise hold each passage once per generated row.
    """
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) and len(value) >= min_len:
                row[key] = strings.setdefault(value, value)


class ShardSet:
    """A folder of numbered shards `00000.jsonl`, `00001.jsonl`, ... (one set of rows, in order)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.jsonl"

    def write(self, index: int, rows: Iterable[Row]) -> int:
        return write_rows(self.path(index), rows)

    def indices(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("[0-9][0-9][0-9][0-9][0-9].jsonl"))

    def batches(self, strings: dict[str, str] | None = None) -> Iterator[list[Row]]:
        for i in self.indices():
            yield read_rows(self.path(i), strings)

    def __iter__(self) -> Iterator[Row]:
        for batch in self.batches():
            yield from batch


class RowsView(Sequence[Row]):
    """Shards read as one sequence: iteration streams; indexing loads shards (the last few are kept).

    What a step sees as `ctx.documents`, and what a finished run returns as its rows, without
    holding them all. Random access (rare: a drop record naming a document) loads the whole
    sequence once, with shared strings, since a jump per access would re-read a shard each time.
    """

    def __init__(self, shards: Sequence[Path], counts: Sequence[int]) -> None:
        self.shards = list(shards)
        self.counts = list(counts)
        self._all: list[Row] | None = None

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[Row]:
        if self._all is not None:
            yield from self._all
            return
        for path in self.shards:
            yield from read_rows(path)

    def __getitem__(self, index: int | slice) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        if index < (self.counts[0] if self.counts else 0):
            return read_rows(self.shards[0])[index]  # the first rows (examples, checks): no full load
        if self._all is None:
            strings: dict[str, str] = {}
            self._all = [row for path in self.shards for row in read_rows(path, strings)]
        return self._all[index]


class JsonlView(Sequence[Row]):
    """A JSON-lines file as a sequence of rows: line offsets in memory (8 bytes a row), rows on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offsets = array("q")  # 8 bytes a line (a list of ints would be ~36)
        if self.path.is_file():
            with self.path.open("rb") as f:
                pos = 0
                for line in f:
                    if line.strip():
                        self.offsets.append(pos)
                    pos += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def __iter__(self) -> Iterator[Row]:
        if not self.offsets:
            return
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def __getitem__(self, index: int | slice) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        with self.path.open("rb") as f:
            f.seek(self.offsets[index])
            return json.loads(f.readline())


class SavedRows(Sequence[Row]):
    """A finished run's rows, in its output's `details/`: the count without opening it, and the
    dataset (`load_from_disk`, mapped) loaded on the first other use, then used for everything.

    Why lazy: mapping a dataset reads a header page of every record batch, and mapped pages count
    in the process's RSS (~160 MiB at 2M rows); `synth generate` itself only prints the count.
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = Path(folder), count
        self._dataset: Any = None

    def dataset(self) -> Any:
        if self._dataset is None:
            from datasets import load_from_disk

            self._dataset = load_from_disk(str(self.folder))
        return self._dataset

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        return iter(self.dataset())

    def __getitem__(self, index: Any) -> Any:
        return self.dataset()[index]

    def __getattr__(self, name: str) -> Any:  # to_list, column_names, ...: the dataset's own
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dataset(), name)
