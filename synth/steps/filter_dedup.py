"""The dedup rule: exact and near duplicates (synth/dedup.py), the first row wins, over rows read in passes.

Why passes and a store: a global dedup (`scope: all`) compares every row with every other, so it
cannot run a batch at a time, yet holding 10^6 rows as Python dicts costs gigabytes. Here the
first pass writes each row's text and source id to a `DocStore` on disk; what stays in memory is
8-byte keys per row (text hash, source hash) and a flag; the MinHash band keys go to a file next
to the store; the texts of candidate pairs are read back from the store. A second pass writes the
drop records, and the rule's output is a third pass over the input that skips the duplicates.
`apply_dedup` (rows already in memory) is the same code over one batch.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synth.dedup import Duplicate, find_duplicates, normalize
from synth.mining.docstore import DocStore, text_hash
from synth.steps.base import Row, StepContext
from synth.steps.filter_common import Outcome, record, text_of
from synth.steps.filter_spec import DedupRule

Batches = Callable[[], Iterator[list[Row]]]
Dropped = Callable[[Row], None]
_IN_MEMORY = 20000  # this few texts are read into a list at once


class NormalizedTexts(Sequence[str]):
    """The store's texts, normalised as read (by index, or by contiguous slice in one read)."""

    def __init__(self, store: DocStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, k: Any) -> Any:  # type: ignore[override]
        if isinstance(k, slice):
            start, stop, step = k.indices(len(self.store))
            if step != 1:
                raise ValueError("only contiguous slices")
            return [normalize(t) for t in self.store.texts(start, stop)] if stop > start else []
        return normalize(self.store.text(k))


def duplicates(rule: DedupRule, store: DocStore, source_keys: np.ndarray, folder: Path) -> list[Duplicate]:
    """The rule's duplicates among the stored texts (indices into the store), sorted by row."""
    view = NormalizedTexts(store)
    dups, _ = find_duplicates(
        view[:] if len(store) <= _IN_MEMORY else view, rule.threshold, exhaustive_below=rule.exhaustive_below,
        word_guard=rule.word_guard, groups=source_keys if rule.scope == "source" else None, normalized=True,
        keys_dir=folder,
    )  # fmt: skip
    return dups


def dedup_rows(
    rule: DedupRule, batches: Batches, step: str, dropped: Dropped, counts: dict[str, int] | None = None,
    advance: Callable[[int], None] | None = None,
) -> Batches:  # fmt: skip
    """Finds the duplicates among the rows `batches()` reads, writes their drop records (row order) to
    `dropped`, and returns the kept rows as batches: each call a new pass over the input.
    `advance(n)` counts the rows of the first pass (a progress line)."""
    with tempfile.TemporaryDirectory(prefix="synth-dedup-") as tmp:
        store = DocStore(Path(tmp))
        source_keys = array("Q")
        try:
            for batch in batches():
                for row in batch:
                    store.add(text_of(row, rule.column), text_of(row, "source_id"))
                    if rule.scope == "source":
                        source_keys.append(text_hash(text_of(row, "source_id")))
                if advance is not None:
                    advance(len(batch))
            found = duplicates(rule, store, np.asarray(source_keys, np.uint64), Path(tmp))
            is_duplicate = np.zeros(len(store), bool)
            is_duplicate[[d.index for d in found]] = True
            by_row = iter(found)
            i = 0
            for batch in batches():
                for row in batch:
                    if is_duplicate[i]:
                        d = next(by_row)
                        dropped(
                            record(
                                step, rule, "exact_duplicate" if d.exact else "near_duplicate", row,
                                column=rule.column, value=text_of(row, rule.column), duplicate_of=store.text(d.of),
                                duplicate_of_source_id=store.id(d.of), score=d.score, threshold=rule.threshold,
                            )
                        )  # fmt: skip
                    i += 1
        finally:
            store.close()
    if counts is not None:
        counts["rows_in"] += len(is_duplicate)
        counts["rows_out"] += int(len(is_duplicate) - is_duplicate.sum())

    def kept() -> Iterator[list[Row]]:
        start = 0
        for batch in batches():
            flags = is_duplicate[start : start + len(batch)]
            start += len(batch)
            yield [row for row, duplicate in zip(batch, flags.tolist(), strict=True) if not duplicate]

    return kept


def apply_dedup(rule: DedupRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    """The rule over rows already in memory (a shard of the filter's head, or a whole-list filter)."""
    out = Outcome()
    kept = dedup_rows(rule, lambda: iter([list(rows)]), step, out.dropped.append)
    out.kept = [row for batch in kept() for row in batch]
    return out
