"""A set of string ids in ~8 bytes an id, for the duplicate-id check over sources of millions of rows.

A Python `set[str]` costs ~115 bytes an id (the string object plus its slot), 115 MiB per million
documents held for the whole source read. Here recent ids sit in a small Python set and are folded,
every `batch` ids, into one sorted numpy array of their 64-bit BLAKE2b hashes. Two different ids
share a hash with probability ~n^2 / 2^65 (3e-8 at a million ids): such a pair would be reported as
a duplicate, never missed, so the check stays safe (a refused source, never a silently merged row).
"""

from __future__ import annotations

import hashlib

import numpy as np


def id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class IdSet:
    """`add` / `in` for strings; memory ~8 bytes an id once folded."""

    def __init__(self, batch: int = 65_536) -> None:
        self.batch = batch
        self.recent: set[str] = set()
        self.folded = np.empty(0, dtype=np.uint64)  # sorted hashes of every id not in `recent`

    def __contains__(self, doc_id: str) -> bool:
        if doc_id in self.recent:
            return True
        if not len(self.folded):
            return False
        h = np.uint64(id_hash(doc_id))
        i = int(np.searchsorted(self.folded, h))
        return i < len(self.folded) and self.folded[i] == h

    def add(self, doc_id: str) -> None:
        self.recent.add(doc_id)
        if len(self.recent) >= self.batch:
            self._fold()

    def _fold(self) -> None:
        fresh = np.fromiter((id_hash(i) for i in self.recent), dtype=np.uint64, count=len(self.recent))
        self.folded = np.sort(np.concatenate([self.folded, fresh]))
        self.recent = set()
