"""`synth inspect OUTPUT`: the run report as terminal tables, read from an output folder.

Reads the same numbers as report.md (`synth.report.summary.collect`), so the terminal and the
file never disagree; prints a few training rows so a person sees what the model will learn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synth.report.summary import ReportData, Values, collect

# Every string from the folder goes through `escape`: a drop example such as "[/x]" is text, not rich markup.


def _median(values: Values) -> str:
    if not len(values):
        return "-"
    ordered = np.sort(np.asarray(values))
    return f"{ordered[len(ordered) // 2].item():.3g}"


def _steps_table(data: ReportData) -> Table:
    table = Table(title=f"{escape(data.name)}: {data.rows} rows, {data.dropped} dropped, {data.seconds:.0f} s")
    for column in ("step", "kind", "rows in", "rows out", "dropped", "tokens in/out", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for s in data.steps:
        tokens = f"{s['prompt_tokens']}/{s['completion_tokens']}" if s["requests"] else "-"
        table.add_row(
            escape(s["name"]),
            escape(s["kind"]),
            str(s["rows_in"]),
            str(s["rows_out"]),
            str(sum(s["dropped"].values())),
            tokens,
            f"{s['seconds']:.1f}",
        )
    return table


def _drops_table(data: ReportData) -> Table:
    table = Table(title="drops by rule")
    for column in ("step", "rule", "reason", "rows", "example"):
        table.add_column(column, justify="right" if column == "rows" else "left", overflow="fold")
    for (step, rule, reason), n in data.drops.most_common():
        found = data.drop_examples.get((step, rule, reason))
        example = found[0][:70] if found else ""
        table.add_row(escape(step), escape(rule), escape(reason), str(n), escape(example))
    return table


def _short(value: Any, limit: int = 100) -> Any:
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


def _example_rows(path: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` rows of train.jsonl (absent when the recipe asked for no jsonl); bad lines are skipped."""
    rows: list[dict[str, Any]] = []
    if n <= 0 or not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
            if len(rows) >= n:
                break
    return rows


def inspect_output(folder: Path, console: Console, examples: int = 3) -> ReportData:
    """Print steps, drops by rule, distributions and example rows of an output folder."""
    data = collect(Path(folder))  # FileNotFoundError / ReportError: one line in the CLI
    console.print(_steps_table(data))
    if data.drops:
        console.print(_drops_table(data))
    else:
        console.print("no row was dropped")
    console.print(
        f"median length: generated {_median(data.anchor_chars)} chars, source {_median(data.positive_chars)} chars;"
        f" median score: positive {_median(data.positive_scores)}, negative {_median(data.negative_scores)},"
        f" margin to hardest negative {_median(data.hardest_margins)}",
        highlight=False,
    )
    for row in _example_rows(Path(folder) / "train.jsonl", examples):
        console.print({k: _short(v) for k, v in row.items()}, highlight=False)
    report = Path(folder) / "report.md"
    shown = escape(str(report)) if report.exists() else "(none; re-render with synth inspect --report)"
    console.print(f"report: {shown}")
    return data
