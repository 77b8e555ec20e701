"""The files of an output folder, written batch by batch: trainer columns, details, drop records.

Why batch by batch: a streamed run's rows stay in shards on disk (synth/executors/); each file
here is built from them one batch at a time (Arrow files `datasets` maps from disk), so writing
the output takes no more memory for a million rows than for a thousand. A list works the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from synth.export_arrow import MAX_SHARD_BYTES, DatasetFolderWriter
from synth.export_layout import NO_LAYOUT, Layout

Row = dict[str, Any]


def _check_columns(row: Row, columns: Sequence[str]) -> None:
    for column in columns:
        if column not in row:
            raise ValueError(f"output.columns: no column {column!r} in the final rows (columns: {', '.join(row)})")


def _training_row(
    r: Row, anchor: str, positive: str, negatives: Sequence[str], k: int, layout: Layout = NO_LAYOUT
) -> Row:
    item: Row = {"anchor": str(r[anchor]), "positive": str(r[positive])}
    chosen = [str(r[c]) for c in negatives] + list((r.get("negatives") or [])[:k])
    for j, text in enumerate(chosen):
        item[f"negative_{j + 1}"] = text
    return layout.apply(item, r)  # instruction prefix, score (synth/export_layout.py)


class TrainingView(Sequence[Row]):
    """training_rows of rows that stay on disk (a streamed run's shards): rows are built when read."""

    def __init__(
        self, rows: Sequence[Row], anchor: str, positive: str, negatives: Sequence[str], k: int, layout: Layout
    ) -> None:
        self.rows, self.args = rows, (anchor, positive, tuple(negatives), k, layout)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return (_training_row(r, *self.args) for r in self.rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _training_row(self.rows[index], *self.args)


def training_rows(
    rows: Sequence[Row], anchor: str, positive: str, negatives: Sequence[str] = (), layout: Layout = NO_LAYOUT
) -> Sequence[Row]:
    """anchor/positive/negative_1..k rows: the `negatives` columns first, then the mined negatives.

    k is the same for every row (the fewest any row has), as sentence-transformers needs. A list
    gives a list; any other sequence (rows on disk) gives a view that builds each row when read.
    """
    if not len(rows):
        return []
    _check_columns(rows[0], (anchor, positive, *negatives, *layout.columns()))
    k = min((len(r.get("negatives") or []) for r in rows), default=0)
    if isinstance(rows, list):
        return [_training_row(r, anchor, positive, negatives, k, layout) for r in rows]
    return TrainingView(rows, anchor, positive, negatives, k, layout)


def batched(items: Iterable[Row], size: int = 4096) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _details_rows(rows: Sequence[Row]) -> list[Row]:
    """All columns, with values made JSON-safe and missing keys filled so Arrow gets one schema."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: _jsonable(r.get(k)) for k in keys} for r in rows]


def write_jsonl(path: Path, rows: Iterable[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_jsonable(r), ensure_ascii=False) + "\n")


DROPPED_COLUMNS = ("step", "rule", "reason", "source_id", "values")


def _dropped_columns(dropped: Iterable[Row]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {c: [] for c in DROPPED_COLUMNS}
    for d in dropped:
        for c in DROPPED_COLUMNS[:-1]:
            columns[c].append("" if d.get(c) is None else str(d.get(c)))
        rest = {k: v for k, v in d.items() if k not in DROPPED_COLUMNS}
        columns["values"].append(json.dumps(_jsonable(rest), ensure_ascii=False))
    return columns


def _dropped_features() -> Any:
    from datasets import Features, Value

    return Features({c: Value("string") for c in DROPPED_COLUMNS})


def dropped_dataset(dropped: Sequence[Row]) -> Any:
    """Drop records as one Arrow schema: step, rule, reason, source_id, and `values` (JSON of the evidence).

    Evidence differs by rule (a score, a raw reply, a list of tokens), so it is kept as a JSON
    string rather than columns whose types would clash between rules.
    """
    from datasets import Dataset

    return Dataset.from_dict(_dropped_columns(dropped), features=_dropped_features())


def _details_schema(rows: Iterable[Row]) -> Any:
    """The Arrow schema `Dataset.from_list` would infer for all rows, unified batch by batch."""
    import pyarrow as pa

    schema = None
    for batch in batched(rows):
        keys = list(dict.fromkeys(k for r in batch for k in r))
        found = pa.Table.from_pylist([{k: _jsonable(r.get(k)) for k in keys} for r in batch]).schema
        schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
    return schema


def write_details(folder: Path, rows: Sequence[Row], max_shard_bytes: int = MAX_SHARD_BYTES) -> int:
    """`details/`: every column of every kept row, in one schema (a first pass finds it), batch by batch,
    in shards of about `max_shard_bytes` (save_to_disk's default 500 MB)."""
    import pyarrow as pa
    from datasets import Features

    schema = _details_schema(rows)
    writer = DatasetFolderWriter(folder, Features.from_arrow_schema(schema), max_shard_bytes)
    try:
        for batch in batched(rows):
            writer.write(
                pa.Table.from_pylist([{k: _jsonable(r.get(k)) for k in schema.names} for r in batch], schema=schema)
            )
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _training_features(train: Sequence[Row]) -> Any:
    from datasets import Features, Value

    names = list(train[0]) if len(train) else ["anchor", "positive"]  # no rows: still anchor/positive, still loads
    return Features({name: Value("float64" if name == "score" else "string") for name in names})


def write_training(folder: Path, train: Sequence[Row], jsonl: Path | None = None, parquet: Path | None = None) -> int:
    """The trainer's dataset (one shard, as save_to_disk(num_shards=1)), and `train.jsonl` /
    `train.parquet` when asked, all from one pass over the rows."""
    import pyarrow as pa

    features = _training_features(train)
    schema = features.arrow_schema
    writer = DatasetFolderWriter(folder, features, max_shard_bytes=None, parquet=parquet)
    try:
        with jsonl.open("w", encoding="utf-8") if jsonl is not None else nullcontext() as lines:
            for batch in batched(train):
                writer.write(pa.Table.from_pylist(batch, schema=schema))
                if lines is not None:
                    lines.writelines(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in batch)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def write_dropped(folder: Path, jsonl: Path, dropped: Iterable[Row]) -> int:
    """`dropped.jsonl` and the `dropped/` dataset (one shard: an empty drop list still loads), one pass."""
    import pyarrow as pa

    features = _dropped_features()
    writer = DatasetFolderWriter(folder, features, max_shard_bytes=None)
    try:
        with jsonl.open("w", encoding="utf-8") as lines:
            for batch in batched(dropped):
                lines.writelines(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in batch)
                writer.write(pa.Table.from_pydict(_dropped_columns(batch), schema=features.arrow_schema))
    except BaseException:
        writer.abort()
        raise
    return writer.close()
