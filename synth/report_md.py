"""The run report: `report.md` + `report.html` + `plots/*.png`, built from an output folder.

Why from the folder and not from the in-memory run: the same code then serves a fresh run
(called on the temp folder before it is swapped in), `synth inspect`, and re-rendering an old
output. Everything it needs is in the folder: summary.json (per-step counts, tokens, time),
details/ (all columns, scores), dropped/ or dropped.jsonl (drop records) and recipe.yaml.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synth import plots

DropKey = tuple[str, str, str]  # (step, rule, reason)


@dataclass
class ReportData:
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
    anchor_chars: list[int] = field(default_factory=list)
    positive_chars: list[int] = field(default_factory=list)
    positive_scores: list[float] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    hardest_margins: list[float] = field(default_factory=list)


def _drop_records(folder: Path) -> list[dict[str, Any]]:
    if (folder / "dropped" / "dataset_info.json").exists():
        from datasets import load_from_disk

        ds = load_from_disk(str(folder / "dropped"))
        return [{**json.loads(r.pop("values") or "{}"), **r} for r in ds.to_list()]
    path = folder / "dropped.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _example(record: dict[str, Any]) -> str:
    for key in ("value", "query", "raw", "detail"):
        if record.get(key):
            return str(record[key])
    return json.dumps({k: v for k, v in record.items() if k not in ("step", "rule", "reason")})[:200]


def collect(folder: Path) -> ReportData:
    """Read an output folder into the numbers the report and `synth inspect` show."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    recipe = (
        yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
        if (folder / "recipe.yaml").exists()
        else {}
    )
    columns = (recipe.get("output") or {}).get("columns") or {}
    data = ReportData(
        name=str(recipe.get("name") or folder.name),
        rows=int(summary.get("rows", 0)),
        dropped=int(summary.get("dropped", 0)),
        seconds=float(summary.get("seconds", 0.0)),
        models=dict(summary.get("models") or {}),
        steps=list(summary.get("steps") or []),
        anchor=columns.get("anchor", "query"),
        positive=columns.get("positive", "text"),
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
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    names = set(ds.column_names)
    if data.anchor in names:
        data.anchor_chars = [len(str(t or "")) for t in ds[data.anchor]]
    if data.positive in names:
        data.positive_chars = [len(str(t or "")) for t in dict.fromkeys(ds[data.positive])]
    if {"positive_score", "negative_scores"} <= names:
        for pos, negs in zip(ds["positive_score"], ds["negative_scores"], strict=True):
            if pos is None or not negs:
                continue
            data.positive_scores.append(float(pos))
            data.negative_scores.extend(float(s) for s in negs)
            data.margins.extend(float(pos) - float(s) for s in negs)
            data.hardest_margins.append(float(pos) - max(float(s) for s in negs))


def _quantiles(values: list[float] | list[int]) -> str:
    if not values:
        return "| - | - | - | - | - |"
    q = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else [values[0]] * 19
    return f"| {len(values)} | {min(values):.3g} | {q[9]:.3g} | {q[18]:.3g} | {max(values):.3g} |"


def _plots(data: ReportData, plots_dir: Path) -> dict[str, str]:
    """Draw every plot there is data for; returns {title: relative path}."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    steps = data.steps
    if steps:
        names = [s["name"] for s in steps]
        plots.rows_per_step(
            names, [s["rows_in"] for s in steps], [s["rows_out"] for s in steps], plots_dir / "rows_per_step.png"
        )
        made["Rows in and out per step"] = "plots/rows_per_step.png"
        tokens = [int(s.get("prompt_tokens", 0)) + int(s.get("completion_tokens", 0)) for s in steps]
        plots.cost_per_step(names, [float(s.get("seconds", 0)) for s in steps], tokens, plots_dir / "cost_per_step.png")
        made["Time and tokens per step"] = "plots/cost_per_step.png"
    if data.drops:
        ranked = data.drops.most_common()
        plots.drops_by_rule(
            [f"{s}/{r}: {why}" for (s, r, why), _ in ranked], [n for _, n in ranked], plots_dir / "drops_by_rule.png"
        )
        made["Drops by rule"] = "plots/drops_by_rule.png"
    lengths = {f"generated ({data.anchor})": data.anchor_chars, f"source ({data.positive})": data.positive_chars}
    lengths = {k: v for k, v in lengths.items() if v}
    if lengths:
        plots.length_histograms(lengths, plots_dir / "lengths.png")
        made["Length distributions"] = "plots/lengths.png"
    if data.positive_scores and data.negative_scores:
        plots.score_histograms(data.positive_scores, data.negative_scores, plots_dir / "scores.png")
        made["Positive vs negative scores"] = "plots/scores.png"
        plots.margin_histogram(data.margins, data.hardest_margins, plots_dir / "margins.png")
        made["Mining margins"] = "plots/margins.png"
    return made


def render_markdown(data: ReportData, made: dict[str, str]) -> str:
    lines = [
        f"# Report: {data.name}",
        "",
        f"- **Rows written**: {data.rows}; **dropped**: {data.dropped}; **wall time**: {data.seconds} s",
        f"- **LLM**: `{data.models.get('llm', '-')}`; **embedder**: `{data.models.get('embedder', '-')}`",
        "- Dataset card: [README.md](README.md); drop records: `dropped/` (datasets) and `dropped.jsonl`",
        "",
        "## Steps",
        "",
        "| step | kind | rows in | rows out | dropped | requests | prompt tokens | completion tokens | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in data.steps:
        lines.append(
            f"| {s['name']} | {s['kind']} | {s['rows_in']} | {s['rows_out']} | {sum((s.get('dropped') or {}).values())} "
            f"| {s.get('requests', 0)} | {s.get('prompt_tokens', 0)} | {s.get('completion_tokens', 0)} | {s.get('seconds', 0)} |"
        )
    lines += ["", "## Drops by rule", ""]
    if data.drops:
        lines += ["| step | rule | reason | rows | examples |", "|---|---|---|---:|---|"]
        for (step, rule, reason), n in data.drops.most_common():
            examples = "; ".join(
                e.replace("|", "\\|").replace("\n", " ")[:80] for e in data.drop_examples[(step, rule, reason)]
            )
            lines.append(f"| {step} | {rule} | {reason} | {n} | {examples} |")
    else:
        lines.append("No row was dropped.")
    lines += [
        "",
        "## Distributions",
        "",
        "| values | n | min | median | p95 | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| generated `{data.anchor}` length (chars) {_quantiles(data.anchor_chars)}",
        f"| source `{data.positive}` length (chars, unique) {_quantiles(data.positive_chars)}",
        f"| positive score {_quantiles(data.positive_scores)}",
        f"| negative score {_quantiles(data.negative_scores)}",
        f"| margin to hardest negative {_quantiles(data.hardest_margins)}",
        "",
        "## Plots",
        "",
    ]
    for title, rel in made.items():
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    if not made:
        lines.append("Nothing to plot.")
    return "\n".join(lines) + "\n"


def render_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>{body}</body></html>\n"


def write_report(folder: Path) -> Path:
    """Write report.md, report.html and plots/ into `folder`; returns the report.md path."""
    folder = Path(folder)
    data = collect(folder)
    made = _plots(data, folder / "plots")
    markdown = render_markdown(data, made)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    (folder / "report.html").write_text(render_html(markdown, f"synth report: {data.name}"), encoding="utf-8")
    return folder / "report.md"
