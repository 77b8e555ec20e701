"""A filter's rules over rows read in passes, never held in one list: the pipeline's way to run a
filter's global tail (the rules from the first dedup or round-trip rule on).

Each rule turns its input into the next rule's input:
- a per-row rule (length, regex, copy, repetition, ...) maps a chunk of rows at a time, once;
- dedup reads its input for keys, then for drop records, and gives back a source that re-reads
  the input skipping the duplicates (synth/steps/filter_dedup.py);
- roundtrip reads its input in passes and yields the rows that pass once (filter_roundtrip.py).
A rule that reads its input in passes, placed after one whose output can be read only once, gets
that output from a spill file in a temporary folder. Drop records are written as they are found:
each rule's in row order, interleaved between rules (the pipeline sorts them by rule, stably).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from synth.steps.base import Row, StepContext
from synth.steps.filter_common import Outcome
from synth.steps.filter_dedup import dedup_rows
from synth.steps.filter_roundtrip import roundtrip_rows
from synth.steps.filter_spec import DedupRule, RoundTripRule

Batches = Callable[[], Iterator[list[Row]]]
Apply = Callable[[Any, list[Row]], Outcome]  # a per-row rule over a chunk of rows
Check = Callable[[Any, Row], None]  # raises ValueError when a row lacks a column the rule reads
CHUNK = 4096  # rows per call of a per-row rule after a round trip or a spill


def stream_rules(
    rules: list[Any], batches: Batches, ctx: StepContext, step: str, drops: Path, stats: dict[str, Any],
    total: int, apply: Apply, check: Check,
) -> Iterator[Row]:  # fmt: skip
    """The rows that pass every rule, in input order; drop records go to `drops`, and `stats` gets
    each rule's rows in and out as the rows are read (complete once the iterator is)."""
    counts = {r.label: {"rows_in": 0, "rows_out": 0} for r in rules}
    stats.update(counts)
    drops.parent.mkdir(parents=True, exist_ok=True)
    with drops.open("w", encoding="utf-8") as f, tempfile.TemporaryDirectory(prefix="synth-filter-") as tmp:

        def dropped(record: Row) -> None:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

        source: Batches = batches
        once: Iterator[list[Row]] | None = None  # the last rule's output, when it can be read only once
        for k, rule in enumerate(rules):
            count = counts[rule.label]
            if isinstance(rule, (DedupRule, RoundTripRule)):
                if once is not None:
                    source, once = _spilled(once, Path(tmp) / f"rule-{k}.jsonl"), None
                checked = _checked(rule, source, check)
                if isinstance(rule, DedupRule):
                    size = total if k == 0 else 0
                    with ctx.progress.task(f"{step}: {rule.label}: reading rows, comparing", size) as advance:
                        source = dedup_rows(rule, checked, step, dropped, count, advance)
                else:
                    rows = roundtrip_rows(rule, _counted(checked, count), ctx, step, dropped, total if k == 0 else 0)
                    once = _chunks(_counted_out(rows, count))
            else:
                once = _per_row(rule, once if once is not None else source(), apply, check, dropped, count)
        for batch in once if once is not None else source():
            yield from batch


def _checked(rule: Any, batches: Batches, check: Check) -> Batches:
    """The same passes, checking the first row of the first one for the rule's columns."""
    checked = False

    def passes() -> Iterator[list[Row]]:
        nonlocal checked
        for batch in batches():
            if batch and not checked:
                check(rule, batch[0])
                checked = True
            yield batch

    return passes


def _per_row(
    rule: Any, batches: Iterable[list[Row]], apply: Apply, check: Check, dropped: Callable[[Row], None],
    count: dict[str, int],
) -> Iterator[list[Row]]:  # fmt: skip
    checked = False
    for batch in batches:
        if batch and not checked:
            check(rule, batch[0])
            checked = True
        outcome = apply(rule, batch)
        for record in outcome.dropped:
            dropped(record)
        count["rows_in"] += len(batch)
        count["rows_out"] += len(outcome.kept)
        yield outcome.kept


def _counted(batches: Batches, count: dict[str, int]) -> Batches:
    """The same passes; each complete pass sets the rule's rows in."""

    def passes() -> Iterator[list[Row]]:
        read = 0
        for batch in batches():
            read += len(batch)
            yield batch
        count["rows_in"] = read

    return passes


def _counted_out(rows: Iterator[Row], count: dict[str, int]) -> Iterator[Row]:
    for row in rows:
        count["rows_out"] += 1
        yield row


def _chunks(rows: Iterator[Row]) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _spilled(batches: Iterator[list[Row]], path: Path) -> Batches:
    """The rows written to `path` once; each call reads them back in chunks."""
    with path.open("w", encoding="utf-8") as f:
        for batch in batches:
            for row in batch:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def passes() -> Iterator[list[Row]]:
        with path.open(encoding="utf-8") as f:
            chunk: list[Row] = []
            for line in f:
                chunk.append(json.loads(line))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    return passes
