"""A run in bounded memory: source -> shards -> step by step -> output, with completion markers.

Rows never sit in one list. The source is read into numbered shards of `batch_rows` rows in a
work folder next to the output (`.<name>.synth-work/`). A row-wise step (or a filter's row-local
head, synth/executors/plan.py) maps shard i to its own output shard i, through the executor
(this process, or a Ray cluster); a step that needs every row (dedup, round-trip) gets them read
back from the shards (equal long strings shared, as in memory before) and its result goes back to
shards; one that can read them in passes (mining: `stream`) does so and streams its result. The output is written from the last step's shards (synth/export.py).

Markers, datatrove-style: each folder is named by a hash chaining the source (file, limit, models)
and the fingerprints of every step up to it, so an edited step redoes itself and what follows.
A finished shard gets `head-done/<i>.json`, a finished step `_done.json` (its report); a resumed
run skips both without reading the request cache. Work whose requests partly failed gets no
marker (it is redone, the cache answering what succeeded). The folder is removed after export;
with the cache off (`use_cache=False`) nothing is resumed and the folder starts empty.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.executors import progress as batch_progress
from synth.executors.plan import drop_order, drop_position, reads, split
from synth.executors.shards import (
    JsonlView,
    RowsView,
    SavedRows,
    ShardSet,
    read_json,
    read_rows,
    share_strings,
    write_json_atomic,
    write_rows,
)
from synth.idset import IdSet
from synth.llm import Usage
from synth.steps.base import Row, Step, StepContext, StepResult, stable_hash

CheckFailures = Callable[[Step, StepResult, float], None]
JOIN = "_synth_row"  # a projected row's position in its stage, to join a global step's output back


@dataclass
class Stage:
    """Rows between two steps: shards in order, their row counts, and how to read them."""

    paths: list[Path]
    counts: list[int]
    add_source_id: bool = False  # the source's shards hold documents; steps see them with `source_id`
    aligned: bool = True  # no source's rows span two shards (per-source rules may then run per shard)

    def prepare(self, rows: list[Row]) -> list[Row]:
        return [dict(d, source_id=d["id"]) for d in rows] if self.add_source_id else rows

    def rows(self, columns: Sequence[str] | None = None) -> list[Row]:
        """Every row read back, for a step that needs them all at once: only `columns` (None: all) and
        the row's position (JOIN), equal long strings shared as they were in memory."""
        strings: dict[str, str] = {}
        out: list[Row] = []
        for path in self.paths:
            rows = self.prepare(read_rows(path))
            if columns is not None:
                rows = [{**{k: r[k] for k in columns if k in r}, JOIN: len(out) + i} for i, r in enumerate(rows)]
            share_strings(rows, strings)
            out.extend(rows)
        return out

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[list[Row]]:
        """The rows of `rows`, one shard at a time (for a step that reads its input in passes)."""
        start = 0
        for path in self.paths:
            rows = self.prepare(read_rows(path))
            if columns is not None:
                rows = [{**{k: r[k] for k in columns if k in r}, JOIN: start + i} for i, r in enumerate(rows)]
            start += len(rows)
            yield rows

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class StepOutcome:
    """What a step left in its folder: the next stage, its report numbers, the path of its drops."""

    stage: Stage
    rows_in: int
    dropped: dict[str, int]
    usage: Usage
    seconds: float
    drops: Path
    extras: Path
    first_failure: list[Row] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # the step's own counts (summary.json, card)


def resumed(usage: dict[str, int]) -> Usage:
    """A finished piece's usage seen from a resumed run: nothing sent now, every answer reused."""
    return Usage(cache_hits=usage.get("requests", 0) + usage.get("cache_hits", 0))


def work_folder(out: Path) -> Path:
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.synth-work"


def chain_keys(recipe: Any, limit: int | None, steps: Sequence[Step], ctx: StepContext, batch_rows: int) -> list[str]:
    """Folder keys: the source (file, limit, models, shard size), then each step chained on the last."""
    src = recipe.source
    path = Path(src.path) if src.path is not None else None  # None: inline seeds (in the source dump below)
    stat = path.stat() if path is not None and path.exists() else None
    models = {
        "llms": {n or "default": [ctx.llm(n).kind, ctx.llm(n).model_id] for n in [None, *recipe.llms]},
        "specs": recipe.model_dump(mode="json", include={"llm", "llms", "embedder", "embedders"}),
    }
    keys = [
        stable_hash(
            {
                "source": src.model_dump(mode="json"),
                "file": [str(path.resolve()), stat.st_size, stat.st_mtime_ns] if stat else None,
                "limit": limit,
                "batch_rows": batch_rows,
                "models": models,
            }
        )
    ]
    for step in steps:
        keys.append(stable_hash([keys[-1], step.key, step.name, step.fingerprint(ctx)]))
    return keys


def prepare_work(work: Path, keys: Sequence[str], fresh: bool) -> None:
    """Keep only folders of this chain (an edited recipe's old work is useless); all of it when `fresh`."""
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for entry in work.iterdir():
        if not any(entry.name.endswith(f"-{k}") for k in keys):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def read_source(recipe: Any, limit: int | None, folder: Path, batch_rows: int) -> tuple[Stage, Path, int]:
    """Source rows into shards, with the checks and drop records of `load_documents`, in one pass.

    Returns (documents, drop records file, records read). Nothing after this starts before the
    whole source is read, so a refused source (a duplicate id at the last line) stops the run
    before any step pays for anything, as before.
    """
    from synth.sources import SourceError, _Scan, source_records

    done = read_json(folder / "_done.json")
    shards = ShardSet(folder / "rows")
    if done is not None:
        return (
            Stage([shards.path(i) for i in range(len(done["counts"]))], done["counts"], True),
            folder / "drops.jsonl",
            done["records"],
        )
    src = recipe.source
    limits = [x for x in (limit, src.limit) if x is not None]
    cap = min(limits) if limits else None
    name, records = source_records(src)  # its file, or its inline seeds
    scan = _Scan(name, src.text_column, src.id_column, keep=True)
    counts: list[int] = []
    for loc, item in records:
        scan.add(loc, item)
        if scan.problems:
            raise SourceError(scan.problems[0])
        if len(scan.rows) >= batch_rows:
            counts.append(shards.write(len(counts), scan.rows))
            scan.rows = []
        if cap is not None and scan.kept >= cap:
            break
    scan.finish()
    if scan.problems:
        raise SourceError(scan.problems[0])
    if scan.rows or not counts:
        counts.append(shards.write(len(counts), scan.rows))
    write_rows(folder / "drops.jsonl", scan.dropped)
    write_json_atomic(folder / "_done.json", {"counts": counts, "records": scan.kept + len(scan.dropped)})
    return (
        Stage([shards.path(i) for i in range(len(counts))], counts, True),
        folder / "drops.jsonl",
        scan.kept + len(scan.dropped),
    )


def resume_point(folders: Sequence[Path]) -> int:
    """The last step a previous run finished whose rows are still there (-1: none). It and every step
    before it are skipped; earlier steps' rows were removed once read, and are not needed."""
    for i in range(len(folders) - 1, -1, -1):
        done = read_json(folders[i] / "_done.json")
        rows = ShardSet(folders[i] / "rows")
        earlier = all((f / "_done.json").is_file() for f in folders[:i])
        if done is not None and earlier and all(rows.path(j).is_file() for j in range(len(done["counts"]))):
            return i
    return -1


def run_step(
    step: Step,
    ctx: StepContext,
    inp: Stage,
    folder: Path,
    executor: Any,
    check: CheckFailures,
    max_share: float,
    batch_rows: int,
    finished: bool = False,
) -> StepOutcome:
    """One step over the shards of `inp`; with `finished` (see resume_point), its marker's record."""
    done = read_json(folder / "_done.json") if finished else None
    rows_dir = ShardSet(folder / "rows")
    if done is not None:
        stage = Stage([rows_dir.path(i) for i in range(len(done["counts"]))], done["counts"], aligned=done["aligned"])
        return StepOutcome(
            stage,
            done["rows_in"],
            done["dropped"],
            resumed(done["usage"]),
            0.0,
            folder / "dropped.jsonl",
            folder / "extras",
            stats=done.get("stats", {}),
        )
    t0 = time.perf_counter()
    head, tail = split(step, inp.aligned)
    usage, failures = Usage(), []
    stats: dict[str, Any] = {}
    stage = inp
    pieces: list[Path] = []  # drop files in the order they were made
    if head is not None:
        stage, piece_drops = _run_head(head, ctx, inp, folder / ("head" if tail else "rows"), executor, usage, failures)
        pieces += piece_drops
    if tail is not None:
        columns = reads(tail)
        # A step that can read its input in passes (mining, a round-trip filter) streams its rows
        # and writes its own drops.
        batches = functools.partial(stage.batches, columns)
        result = tail.stream(batches, ctx, folder / "drops-tail.jsonl", stage.total)
        if result is None:
            result = tail(stage.rows(columns), ctx)
            write_rows(folder / "drops-tail.jsonl", result.dropped)
        rows = _joined(stage, result.rows) if columns is not None else iter(result.rows)
        stage = _write_grouped(rows, ShardSet(folder / "rows"), batch_rows)
        usage.add(result.usage)
        stats = result.stats
        failures += [d for d in result.dropped[:1000] if d.get("detail")][:1]
        pieces.append(folder / "drops-tail.jsonl")
        del result
    check(step, StepResult(rows=[], dropped=failures[:1], usage=usage), max_share)
    dropped = _ordered_drops(step, pieces, folder / "dropped.jsonl")
    if head is not None and tail is not None:
        shutil.rmtree(folder / "head", ignore_errors=True)  # the tail's input, now in its rows and drops
    extras = folder / "extras"
    for part in (head, tail):
        if part is not None:
            part.write_extras(extras)
    seconds = round(time.perf_counter() - t0, 2)
    if usage.failed == 0:
        write_json_atomic(
            folder / "_done.json",
            {
                "counts": stage.counts,
                "aligned": stage.aligned,
                "rows_in": inp.total,
                "dropped": dropped,
                "usage": dataclasses.asdict(usage),
                "stats": stats,
            },
        )
    return StepOutcome(stage, inp.total, dropped, usage, seconds, folder / "dropped.jsonl", extras, stats=stats)


def _run_head(
    head: Step, ctx: StepContext, inp: Stage, folder: Path, executor: Any, usage: Usage, failures: list[Row]
) -> tuple[Stage, list[Path]]:
    """The row-wise part, shard i -> shard i; shards with a marker from an earlier run are skipped."""
    out, drops, marks = ShardSet(folder), ShardSet(folder / "drops"), folder / "head-done"
    marks.mkdir(parents=True, exist_ok=True)
    counts: list[int] = [0] * len(inp.paths)
    todo = []
    for i, path in enumerate(inp.paths):
        mark = read_json(marks / f"{i}.json")
        if mark is not None and out.path(i).is_file() and drops.path(i).is_file():
            counts[i] = mark["rows"]
            usage.add(resumed(mark["usage"]))
        else:
            todo.append((i, path))
    first = inp.counts[todo[0][0]] if todo else 1
    merged = batch_progress.PerStep(ctx.progress, scale=inp.total / max(first, 1))
    batch_ctx = dataclasses.replace(ctx, progress=merged)
    try:
        for i, result in executor.map_batches(head, batch_ctx, todo, inp.prepare):
            counts[i] = out.write(i, result.rows)
            drops.write(i, result.dropped)
            usage.add(result.usage)
            if not failures:
                failures += [d for d in result.dropped if d.get("detail")][:1]
            if result.usage.failed == 0:
                write_json_atomic(marks / f"{i}.json", {"rows": counts[i], "usage": dataclasses.asdict(result.usage)})
    finally:
        merged.close()
    stage = Stage([out.path(i) for i in range(len(inp.paths))], counts, aligned=inp.aligned)  # rows keep their shard
    return stage, [drops.path(i) for i in range(len(inp.paths))]


def _joined(stage: Stage, projected: Sequence[Row]) -> Iterator[Row]:
    """A global step's output rows (projected) merged back into the full rows they came from.

    `{**full, **projected}`: the columns the step added or changed, at the place a whole-row run
    would have put them. Output in input order (filter, mining) reads each shard once.
    """
    starts = list(itertools.accumulate(stage.counts, initial=0))
    loaded, rows = -1, []
    for row in projected:
        position = row.pop(JOIN)
        shard = bisect.bisect_right(starts, position) - 1
        if shard != loaded:
            loaded, rows = shard, stage.prepare(read_rows(stage.paths[shard]))
        yield {**rows[position - starts[shard]], **row}


def _write_grouped(rows: Iterable[Row], out: ShardSet, batch_rows: int) -> Stage:
    """Shards of about `batch_rows` rows, cut only between sources, and whether every source's rows
    ended up in one shard (they do when the step kept its input's order)."""
    counts: list[int] = []
    chunk: list[Row] = []
    seen = IdSet()  # every source id once: ~8 bytes an id, not ~115 (10^6 sources: ~100 MiB less)
    current: object = object()
    aligned = True
    for row in rows:
        source = str(row.get("source_id"))
        if source != current:
            if len(chunk) >= batch_rows:
                counts.append(out.write(len(counts), chunk))
                chunk = []
            aligned = aligned and source not in seen
            seen.add(source)
            current = source
        chunk.append(row)
    if chunk or not counts:
        counts.append(out.write(len(counts), chunk))
    return Stage([out.path(i) for i in range(len(counts))], counts, aligned=aligned)


def _ordered_drops(step: Step, pieces: Sequence[Path], target: Path) -> dict[str, int]:
    """The step's drop records in one file, in the order a whole-input run lists them; counts by reason.

    A filter lists its drops rule by rule; per batch they interleave, so the pieces are read once
    per rule position (drop records are few next to rows, but never all held at once).
    """
    order = drop_order(step)
    positions = [-1, *sorted(set(order.values()))] if order else [0]  # -1: a record of no known rule
    counts: Counter[str] = Counter()

    def records() -> Any:
        for position in positions:
            for piece in pieces:
                for record in JsonlView(piece):  # one record at a time: a step may drop most rows
                    if drop_position(order, record) == position:
                        counts[str(record["reason"])] += 1
                        yield record

    write_rows(target, records())
    return dict(counts)


def concat_drops(files: Sequence[Path], target: Path) -> JsonlView:
    """Every drop record of the run, source first, in one file the export and the result read."""
    with target.open("wb") as out:
        for path in files:
            if path.is_file():
                with path.open("rb") as f:
                    shutil.copyfileobj(f, out)
    return JsonlView(target)


def final_rows(stage: Stage) -> RowsView:
    return RowsView(stage.paths, stage.counts)


def copy_extras(folders: Sequence[Path], target: Path) -> None:
    """Files steps wrote for the output folder (a mine step's formats), into the output being built."""
    for folder in folders:
        if folder.is_dir():
            shutil.copytree(folder, target, dirs_exist_ok=True)


def output_views(out: Path, rows: int) -> tuple[Any, JsonlView]:
    """A finished run's `rows` rows and drop records, read from its output folder (nothing held in memory)."""
    found = SavedRows(out / "details", rows) if (out / "details").is_dir() else []
    return found, JsonlView(out / "dropped.jsonl")
