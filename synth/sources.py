"""Reading sources: jsonl / json / csv / parquet / a folder of .txt files / a saved dataset.

Every source becomes a list of rows with a string `id` and the text column, plus whatever other
columns the file had. Rows with a blank text are not errors but counted drops. (Rows are plain
dicts here: the step modules import this one, so it cannot import their `Row`.)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """An input that cannot be read as asked; the message names the file and the problem."""


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "dataset" if (path / "state.json").exists() or (path / "dataset_dict.json").exists() else "text"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if suffix in formats:
        return formats[suffix]
    if suffix == ".txt":
        return "text"
    raise SourceError(f"{path}: cannot tell the format from the name; set `format:`")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(value, dict):
                raise SourceError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(value)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SourceError(f"{path}: expected a JSON array of objects")
    return value


def _read_text(path: Path) -> list[dict[str, Any]]:
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        return [{"id": str(i), "text": line} for i, line in enumerate(lines) if line.strip()]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))
    return [{"id": str(p.relative_to(path)), "text": p.read_text(encoding="utf-8")} for p in files]


def _read_dataset(path: Path) -> list[dict[str, Any]]:
    from datasets import Dataset, load_from_disk

    ds = load_from_disk(str(path))
    if not isinstance(ds, Dataset):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds.to_list()


def read_rows(path: Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read a file or folder into rows (dicts)."""
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "json":
        return _read_json(path)
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if fmt == "text":
        return _read_text(path)
    if fmt == "dataset":
        return _read_dataset(path)
    raise SourceError(f"{path}: unknown format {fmt!r}")


def load_documents(
    path: Path,
    fmt: str = "auto",
    text_column: str = "text",
    id_column: str | None = "id",
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows normalised to string `id` + `text` (other columns kept), and the rows dropped.

    Raises SourceError for an empty source, a missing text column or duplicate ids.
    """
    rows = read_rows(path, fmt)
    if not rows:
        raise SourceError(f"{path}: the source is empty")
    if text_column not in rows[0]:
        raise SourceError(f"{path}: no column {text_column!r} (columns: {', '.join(rows[0])}); set source.text_column")
    if id_column and id_column not in rows[0]:
        raise SourceError(
            f"{path}: no column {id_column!r} (columns: {', '.join(rows[0])}); set source.id_column: null"
        )
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        doc_id = str(row[id_column]) if id_column else str(i)
        text = row.get(text_column)
        out = {k: v for k, v in row.items() if k not in (text_column, id_column)}
        out.update(id=doc_id, text=text if isinstance(text, str) else "" if text is None else str(text))
        if not out["text"].strip():
            dropped.append({"step": "source", "reason": "empty_text", "source_id": doc_id, "detail": ""})
            continue
        if doc_id in seen:
            raise SourceError(f"{path}: duplicate id {doc_id!r}; ids must be unique")
        seen.add(doc_id)
        kept.append(out)
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        raise SourceError(f"{path}: no row has a non-empty {text_column!r}")
    return kept, dropped
