"""The report's data model: what a run tallies per step, written as summary.json, read back from a folder.

Both directions live here so the writer (the runner, via `summary_dict`) and the readers (the
card, report.md, `synth inspect`) agree on one shape. Reading is lenient: a summary.json from an
older version or edited by hand reads with defaults for whatever is missing or mistyped, so
`synth inspect` shows what there is instead of a traceback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synth.llm import Usage

DropKey = tuple[str, str, str]  # (step, rule, reason)
USAGE_KEYS = tuple(f.name for f in fields(Usage))
Values = list[int] | list[float] | np.ndarray


class ReportError(ValueError):
    """An output folder the report cannot read; the message names the file and the problem."""


@dataclass
class StepReport:
    """One step of a run: rows in/out, drops by reason, LLM usage, time, and the step's fingerprint.

    `kind` is the step's YAML key (`generate`, `filter`, `mine_negatives`; `source` for loading).
    """

    name: str
    kind: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    fingerprint: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # the step's own counts (mining: removed, false negatives)

    # Read-only views of the usage counters, so callers write `report.requests`.
    @property
    def requests(self) -> int:
        return self.usage.requests

    @property
    def retries(self) -> int:
        return self.usage.retries

    @property
    def cache_hits(self) -> int:
        return self.usage.cache_hits

    @property
    def failed(self) -> int:
        return self.usage.failed

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """The step as summary.json stores it: usage counters flattened into the step's keys."""
        counters = {key: getattr(self.usage, key) for key in USAGE_KEYS}
        return {
            "name": self.name,
            "kind": self.kind,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            **counters,
            "seconds": self.seconds,
            "fingerprint": self.fingerprint,
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StepReport:
        """Read a step back from summary.json; a missing or mistyped key takes its default."""
        dropped = raw.get("dropped")
        return cls(
            name=str(raw.get("name") or "?"),
            kind=str(raw.get("kind") or "?"),
            rows_in=_int(raw.get("rows_in")),
            rows_out=_int(raw.get("rows_out")),
            dropped={str(k): _int(v) for k, v in dropped.items()} if isinstance(dropped, Mapping) else {},
            usage=Usage(**{key: _int(raw.get(key)) for key in USAGE_KEYS}),
            seconds=_float(raw.get("seconds")),
            fingerprint=str(raw.get("fingerprint") or ""),
            stats=dict(raw["stats"]) if isinstance(raw.get("stats"), Mapping) else {},
        )


@dataclass
class RunResult:
    """What `run_recipe` returns: the final rows, every drop record, one StepReport per step."""

    output_dir: Path
    rows: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    reports: list[StepReport]
    seconds: float
    models: dict[str, str] = field(default_factory=dict)


def summary_dict(result: RunResult) -> dict[str, Any]:
    """summary.json: totals, model ids and one dict per step."""
    return {
        "rows": len(result.rows),
        "dropped": len(result.dropped),
        "seconds": result.seconds,
        "models": result.models,
        "steps": [r.as_dict() for r in result.reports],
    }


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclass
class ReportData:
    """The numbers report.md and `synth inspect` show, read from an output folder.

    `steps` are summary.json's step dicts with every key present (see StepReport.from_dict).
    """

    name: str
    rows: int
    dropped: int
    seconds: float
    models: dict[str, str]
    steps: list[dict[str, Any]]
    anchor: str
    positive: str
    drops: Counter[DropKey] = field(default_factory=Counter)
    drop_examples: dict[DropKey, list[str]] = field(default_factory=dict)
    # Lists, or numpy arrays when read from details/ (a million rows: 8 bytes each, not a Python object).
    anchor_chars: Values = field(default_factory=list)
    positive_chars: Values = field(default_factory=list)
    positive_scores: Values = field(default_factory=list)
    negative_scores: Values = field(default_factory=list)
    margins: Values = field(default_factory=list)
    hardest_margins: Values = field(default_factory=list)


def _read_mapping(path: Path, parse: Any) -> dict[str, Any]:
    """A JSON/YAML file that must hold a mapping; ReportError names the file otherwise."""
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: cannot be read ({str(e).splitlines()[0]})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a mapping at the top, got {type(value).__name__}")
    return value


def _drop_records(folder: Path) -> Iterator[dict[str, Any]]:
    """Every drop record, streamed: from the `dropped/` dataset a batch at a time, else dropped.jsonl."""
    if (folder / "dropped" / "dataset_info.json").exists():
        from synth.export_arrow import iter_record_batches

        for batch in iter_record_batches(folder / "dropped"):
            for r in batch.to_pylist():
                yield {**json.loads(r.pop("values") or "{}"), **r}
        return
    path = folder / "dropped.jsonl"
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ReportError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if isinstance(record, dict):
                yield record


def _example(record: dict[str, Any]) -> str:
    for key in ("value", "query", "raw", "detail"):
        if record.get(key):
            return str(record[key])
    return json.dumps({k: v for k, v in record.items() if k not in ("step", "rule", "reason")})[:200]


def collect(folder: Path) -> ReportData:
    """Read an output folder into the numbers the report and `synth inspect` show."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file():
        raise FileNotFoundError(f"{folder}: not a synth output folder (no summary.json)")
    summary = _read_mapping(folder / "summary.json", json.loads)
    recipe = _read_mapping(folder / "recipe.yaml", yaml.safe_load) if (folder / "recipe.yaml").is_file() else {}
    output = recipe.get("output") if isinstance(recipe.get("output"), dict) else {}
    columns = output.get("columns") if isinstance(output.get("columns"), dict) else {}
    models = summary.get("models")
    steps = summary.get("steps")
    data = ReportData(
        name=str(recipe.get("name") or folder.name),
        rows=_int(summary.get("rows")),
        dropped=_int(summary.get("dropped")),
        seconds=_float(summary.get("seconds")),
        models={str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else {},
        steps=[StepReport.from_dict(s).as_dict() for s in steps if isinstance(s, dict)]
        if isinstance(steps, list)
        else [],
        anchor=str(columns.get("anchor") or "query"),
        positive=str(columns.get("positive") or "text"),
    )
    for record in _drop_records(folder):
        key = (str(record.get("step", "")), str(record.get("rule") or "-"), str(record.get("reason", "")))
        data.drops[key] += 1
        examples = data.drop_examples.setdefault(key, [])
        if len(examples) < 3:
            examples.append(_example(record))
    if (folder / "details" / "dataset_info.json").exists():
        _collect_details(folder / "details", data)
    return data


def _collect_details(path: Path, data: ReportData) -> None:
    """Lengths, scores and margins from details/, read one record batch at a time (never whole columns).

    Distinct positives are told apart by a 64-bit hash of their value (8 bytes a row), not by
    holding every text; two different texts sharing a hash would count once (odds ~n^2/2^65).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from synth.export_arrow import iter_record_batches

    anchor_chars: list[np.ndarray] = []
    positive_hashes: list[np.ndarray] = []  # 64-bit hash of each row's positive text (distinct ones counted once)
    positive_chars: list[np.ndarray] = []
    scores: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    wanted = [data.anchor, data.positive, "positive_score", "negative_scores"]
    for batch in iter_record_batches(path, wanted):
        names = set(batch.schema.names)
        if data.anchor in names:
            anchor_chars.append(_char_counts(batch.column(data.anchor), pa, pc))
        if data.positive in names:
            column = batch.column(data.positive)
            positive_chars.append(_char_counts(column, pa, pc))
            texts = column.to_pylist()
            positive_hashes.append(np.fromiter(map(_hash, texts), dtype=np.int64, count=len(texts)))
        if {"positive_score", "negative_scores"} <= names:
            scores.append(_batch_scores(batch.column("positive_score"), batch.column("negative_scores")))
    data.anchor_chars = np.concatenate(anchor_chars) if anchor_chars else data.anchor_chars
    if positive_hashes:
        _, first = np.unique(np.concatenate(positive_hashes), return_index=True)
        # each distinct text once, in the order first seen
        data.positive_chars = np.concatenate(positive_chars)[np.sort(first)]
    if scores:
        data.positive_scores, data.negative_scores, data.margins, data.hardest_margins = (
            np.concatenate(parts) for parts in zip(*scores, strict=True)
        )


def _hash(value: Any) -> int:
    return hash(value if isinstance(value, str) else repr(value))


def _char_counts(column: Any, pa: Any, pc: Any) -> np.ndarray:
    """len(str(value or "")) of each value: characters of strings, of the text form otherwise."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(pc.utf8_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.array([len(str(v or "")) for v in column.to_pylist()], dtype=np.int64)


def _batch_scores(positive: Any, negatives: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positive scores, negative scores, margins to each negative, margins to the hardest) of rows
    that have a positive score and at least one negative, in row order."""
    pos_all, neg_all, margins, hardest = [], [], [], []
    for pos, negs in zip(positive.to_pylist(), negatives.to_pylist(), strict=True):
        if pos is None or not negs:
            continue
        pos = float(pos)
        values = [float(s) for s in negs]
        pos_all.append(pos)
        neg_all.extend(values)
        margins.extend(pos - s for s in values)
        hardest.append(pos - max(values))
    return tuple(np.asarray(v, dtype=np.float64) for v in (pos_all, neg_all, margins, hardest))  # type: ignore[return-value]
