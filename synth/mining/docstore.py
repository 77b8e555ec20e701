"""Documents' texts and ids on disk, read back by index: what streamed mining keeps of a corpus.

Why: a negative's text and id are needed only when the output rows are written, long after the
corpus was embedded; holding 10^6 passages as Python strings costs gigabytes, two files and their
offsets (8 bytes a value) cost nothing. Texts are matched by `text_hash` (64-bit blake2b, stable
across processes, unlike Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def text_hash(text: str) -> int:
    """64 bits of blake2b: stable across processes (Python's `hash` is salted)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class DocStore:
    """Documents' texts and ids in two files, read back by index (8 bytes of offset a value in memory)."""

    def __init__(self, folder: Path) -> None:
        self._files = {kind: (Path(folder) / f"{kind}.bin").open("w+b") for kind in ("text", "id")}
        self._offsets = {kind: array("q", [0]) for kind in self._files}
        self._writing = True

    def add(self, text: str, doc_id: str) -> None:
        if not self._writing:  # a read moved the position: append at the end, flush before the next read
            for f in self._files.values():
                f.seek(0, 2)
            self._writing = True
        for kind, value in (("text", text), ("id", doc_id)):
            data = value.encode("utf-8", "surrogatepass")
            self._files[kind].write(data)
            self._offsets[kind].append(self._offsets[kind][-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets["text"]) - 1

    def _read(self, kind: str, start: int, stop: int) -> bytes:
        f, offsets = self._files[kind], self._offsets[kind]
        if self._writing:
            f.flush()
            self._writing = False
        f.seek(offsets[start])
        return f.read(offsets[stop] - offsets[start])

    def text(self, j: int) -> str:
        return self._read("text", j, j + 1).decode("utf-8", "surrogatepass")

    def id(self, j: int) -> str:
        return self._read("id", j, j + 1).decode("utf-8", "surrogatepass")

    def texts(self, start: int, stop: int) -> list[str]:
        """Documents [start, stop) in one read (the corpus is embedded block by block from here)."""
        stop = min(stop, len(self))
        data, offsets = self._read("text", start, stop), self._offsets["text"]
        base = offsets[start]
        return [
            data[offsets[j] - base : offsets[j + 1] - base].decode("utf-8", "surrogatepass") for j in range(start, stop)
        ]

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class StoreTexts(Sequence[str]):
    """The store's texts as a sequence `embed_to_file` slices block by block (one read a block)."""

    def __init__(self, store: DocStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: Any) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("only contiguous slices")
            return self.store.texts(start, stop)
        return self.store.text(index)


def store_documents(store: DocStore, documents: Iterable[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """Documents (`text`, `id`) into `store`; returns (text hash keys, first index with that text),
    (id hash keys, last index with that id): a dict's way of answering `{id: i}` when ids repeat."""
    text_hashes, id_hashes = array("Q"), array("Q")
    for d in documents:
        text, doc_id = str(d["text"]), str(d["id"])
        store.add(text, doc_id)
        text_hashes.append(text_hash(text))
        id_hashes.append(text_hash(doc_id))
    th, ih = np.asarray(text_hashes, np.uint64), np.asarray(id_hashes, np.uint64)
    text_keys, text_first = np.unique(th, return_index=True)
    id_keys, id_last = np.unique(ih[::-1], return_index=True)
    return text_keys, text_first.astype(np.int64), id_keys, (len(ih) - 1 - id_last).astype(np.int64)


def lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values[i] where keys[i] == wanted (keys sorted and unique); -1 where absent."""
    if not len(keys):
        return np.full(len(wanted), -1, np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[pos] == wanted, values[pos], -1)
