"""Export: a training-ready dataset folder, written atomically.

`outputs/<recipe>/` is itself a `save_to_disk` folder holding only the sentence-transformers
columns (anchor, positive, negative_1..k), so `load_from_disk` + SentenceTransformerTrainer take
it as it is. Everything else sits beside it: `details/` (all columns: provenance, scores),
`dropped.jsonl` and `dropped/` (every removed row with its step, rule, reason and evidence), the
card `README.md`, the resolved recipe, `summary.json`, the report (`report.md`, `report.html`,
`plots/`) and any `train.jsonl` / `train.parquet` asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synth.faults import crash_point

Row = dict[str, Any]


def training_rows(rows: Sequence[Row], anchor: str, positive: str, negatives: Sequence[str] = ()) -> list[Row]:
    """anchor/positive/negative_1..k rows: the `negatives` columns first, then the mined negatives.

    k is the same for every row (the fewest any row has), as sentence-transformers needs.
    """
    if not rows:
        return []
    for column in (anchor, positive, *negatives):
        if column not in rows[0]:
            raise ValueError(f"output.columns: no column {column!r} in the final rows (columns: {', '.join(rows[0])})")
    k = min((len(r.get("negatives") or []) for r in rows), default=0)
    out = []
    for r in rows:
        item = {"anchor": str(r[anchor]), "positive": str(r[positive])}
        chosen = [str(r[c]) for c in negatives] + list((r.get("negatives") or [])[:k])
        for j, text in enumerate(chosen):
            item[f"negative_{j + 1}"] = text
        out.append(item)
    return out


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


def write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_jsonable(r), ensure_ascii=False) + "\n")


DROPPED_COLUMNS = ("step", "rule", "reason", "source_id", "values")


def dropped_dataset(dropped: Sequence[Row]) -> Any:
    """Drop records as one Arrow schema: step, rule, reason, source_id, and `values` (JSON of the evidence).

    Evidence differs by rule (a score, a raw reply, a list of tokens), so it is kept as a JSON
    string rather than columns whose types would clash between rules.
    """
    from datasets import Dataset, Features, Value

    columns: dict[str, list[str]] = {c: [] for c in DROPPED_COLUMNS}
    for d in dropped:
        for c in DROPPED_COLUMNS[:-1]:
            columns[c].append("" if d.get(c) is None else str(d.get(c)))
        rest = {k: v for k, v in d.items() if k not in DROPPED_COLUMNS}
        columns["values"].append(json.dumps(_jsonable(rest), ensure_ascii=False))
    return Dataset.from_dict(columns, features=Features({c: Value("string") for c in DROPPED_COLUMNS}))


def _training_dataset(train: Sequence[Row]) -> Any:
    """The trainer's dataset; with no rows it still has the anchor/positive columns and loads."""
    from datasets import Dataset, Features, Value

    if train:
        return Dataset.from_list(list(train))
    return Dataset.from_dict(
        {"anchor": [], "positive": []}, features=Features({"anchor": Value("string"), "positive": Value("string")})
    )


def write_output(
    out_dir: Path,
    rows: Sequence[Row],
    dropped: Sequence[Row],
    *,
    anchor: str,
    positive: str,
    formats: Sequence[str],
    card: str,
    recipe_yaml: str,
    summary: dict[str, Any],
    extras: Callable[[Path], None] | None = None,
    negative_columns: Sequence[str] = (),
) -> Path:
    """Write everything into a temp folder next to `out_dir`, then swap it in with renames.

    `extras(folder)` runs last, on the complete temp folder (report, plots), before the swap.
    """
    from datasets import Dataset

    train = training_rows(rows, anchor, positive, negative_columns)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_folders(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _training_dataset(train).save_to_disk(str(tmp), num_shards=1)
        crash_point("export")
        if rows:
            Dataset.from_list(_details_rows(rows)).save_to_disk(str(tmp / "details"))
        write_jsonl(tmp / "dropped.jsonl", dropped)
        dropped_dataset(dropped).save_to_disk(str(tmp / "dropped"), num_shards=1)  # 1 shard: empty stays loadable
        if "jsonl" in formats:
            write_jsonl(tmp / "train.jsonl", train)
        if "parquet" in formats:
            Dataset.from_list(train).to_parquet(str(tmp / "train.parquet"))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2), encoding="utf-8")
        if extras is not None:
            extras(tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _remove_stale_temp_folders(out_dir: Path) -> None:
    """Half-written folders of a killed export (never visible as the output) are removed, not reused."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for stale in out_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `tmp`: the old folder is renamed aside first, removed only after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
