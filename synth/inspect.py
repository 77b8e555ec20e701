"""`synth inspect OUTPUT`: the run report as terminal tables, read from an output folder.

Reads the same numbers as report.md (synth/report_md.py `collect`), so the terminal and the
file never disagree; prints a few training rows so a person sees what the model will learn.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from synth.report_md import ReportData, collect


def _median(values: list[float] | list[int]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.3g}"


def _steps_table(data: ReportData) -> Table:
    table = Table(title=f"{data.name}: {data.rows} rows, {data.dropped} dropped, {data.seconds:.0f} s")
    for column in ("step", "kind", "rows in", "rows out", "dropped", "tokens in/out", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for s in data.steps:
        tokens = f"{s.get('prompt_tokens', 0)}/{s.get('completion_tokens', 0)}" if s.get("requests") else "-"
        dropped = sum((s.get("dropped") or {}).values())
        table.add_row(
            s["name"],
            s["kind"],
            str(s["rows_in"]),
            str(s["rows_out"]),
            str(dropped),
            tokens,
            f"{s.get('seconds', 0):.1f}",
        )
    return table


def _drops_table(data: ReportData) -> Table:
    table = Table(title="drops by rule")
    for column in ("step", "rule", "reason", "rows", "example"):
        table.add_column(column, justify="right" if column == "rows" else "left", overflow="fold")
    for (step, rule, reason), n in data.drops.most_common():
        example = data.drop_examples[(step, rule, reason)][0][:70] if data.drop_examples[(step, rule, reason)] else ""
        table.add_row(step, rule, reason, str(n), example)
    return table


def inspect_output(folder: Path, console: Console, examples: int = 3) -> ReportData:
    """Print steps, drops by rule, distributions and example rows of an output folder."""
    folder = Path(folder)
    if not (folder / "summary.json").exists():
        raise FileNotFoundError(f"{folder}: not a synth output folder (no summary.json)")
    data = collect(folder)
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
    train = folder / "train.jsonl"
    if examples and train.exists():
        with train.open(encoding="utf-8") as f:
            for _, line in zip(range(examples), f, strict=False):
                row = json.loads(line)
                console.print({k: (v[:100] + "..." if len(v) > 100 else v) for k, v in row.items()}, highlight=False)
    report = folder / "report.md"
    console.print(f"report: {report if report.exists() else '(none; re-render with synth inspect --report)'}")
    return data
