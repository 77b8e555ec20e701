"""Export: a training-ready dataset folder, written atomically.

`outputs/<recipe>/` is itself a `save_to_disk` folder holding only the sentence-transformers
columns (anchor, positive, negative_1..k), so `load_from_disk` + SentenceTransformerTrainer take
it as it is. Everything else sits beside it: `details/` (all columns: provenance, scores),
`dropped.jsonl` (every removed row with its reason), the card `README.md`, the resolved recipe,
`summary.json` and any `train.jsonl` / `train.parquet` asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def training_rows(rows: Sequence[Row], anchor: str, positive: str) -> list[Row]:
    """anchor/positive/negative_1..k rows; k = the fewest negatives any row has (uniform columns)."""
    if not rows:
        return []
    for column in (anchor, positive):
        if column not in rows[0]:
            raise ValueError(f"output.columns: no column {column!r} in the final rows (columns: {', '.join(rows[0])})")
    k = min((len(r.get("negatives") or []) for r in rows), default=0)
    out = []
    for r in rows:
        item = {"anchor": str(r[anchor]), "positive": str(r[positive])}
        for j in range(k):
            item[f"negative_{j + 1}"] = r["negatives"][j]
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
) -> Path:
    """Write everything into a temp folder next to `out_dir`, then swap it in with renames."""
    from datasets import Dataset

    train = training_rows(rows, anchor, positive)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        Dataset.from_list(train).save_to_disk(str(tmp))
        if rows:
            Dataset.from_list(_details_rows(rows)).save_to_disk(str(tmp / "details"))
        write_jsonl(tmp / "dropped.jsonl", dropped)
        if "jsonl" in formats:
            write_jsonl(tmp / "train.jsonl", train)
        if "parquet" in formats:
            Dataset.from_list(train).to_parquet(str(tmp / "train.parquet"))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2), encoding="utf-8")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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
