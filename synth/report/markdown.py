"""The run report: `report.md` + `report.html` + `plots/*.png`, built from an output folder.

Why from the folder and not from the in-memory run: the same code then serves a fresh run
(called on the temp folder before it is swapped in), `synth inspect`, and re-rendering an old
output. Everything it needs is in the folder: summary.json (per-step counts, tokens, time),
details/ (all columns, scores), dropped/ or dropped.jsonl (drop records) and recipe.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synth.report.plots import draw_report_plots
from synth.report.summary import ReportData, Values, collect


def _quantiles(values: Values) -> str:
    """n, min, median, p95, max: the numbers `statistics.quantiles(n=20, method="inclusive")` gives,
    computed on one sorted numpy array (a million values are a sort, not a million Python floats)."""
    if not len(values):
        return "| - | - | - | - | - |"
    ordered = np.sort(np.asarray(values))
    return (
        f"| {len(ordered)} | {ordered[0].item():.3g} | {_inclusive(ordered, 10):.3g} | {_inclusive(ordered, 19):.3g} "
        f"| {ordered[-1].item():.3g} |"
    )


def _inclusive(ordered: np.ndarray, i: int, n: int = 20) -> float:
    """The i-th of n-quantiles, `statistics.quantiles(method="inclusive")`'s own formula (same float)."""
    if len(ordered) == 1:
        return ordered[0].item()
    m = len(ordered) - 1
    j, delta = divmod(i * m, n)  # i < n, so j + 1 <= m
    return (ordered[j].item() * (n - delta) + ordered[j + 1].item() * delta) / n


def _models_line(models: dict[str, str]) -> str:
    """LLM and embedder first (every run has them), then any other named model of the run."""
    parts = [f"**LLM**: `{models.get('llm', '-')}`", f"**embedder**: `{models.get('embedder', '-')}`"]
    parts += [f"**{name}**: `{model}`" for name, model in models.items() if name not in ("llm", "embedder")]
    return "- " + "; ".join(parts)


def render_markdown(data: ReportData, made: dict[str, str]) -> str:
    """report.md: steps, drops by rule with examples, distributions, then the plots in `made`."""
    lines = [
        f"# Report: {data.name}",
        "",
        f"- **Rows written**: {data.rows}; **dropped**: {data.dropped}; **wall time**: {data.seconds} s",
        _models_line(data.models),
        "- Dataset card: [README.md](README.md); drop records: `dropped/` (datasets) and `dropped.jsonl`",
        "",
        "## Steps",
        "",
        "| step | kind | rows in | rows out | dropped | requests | prompt tokens | completion tokens | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in data.steps:
        lines.append(
            f"| {s['name']} | {s['kind']} | {s['rows_in']} | {s['rows_out']} | {sum(s['dropped'].values())} "
            f"| {s['requests']} | {s['prompt_tokens']} | {s['completion_tokens']} | {s['seconds']} |"
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
    """report.html: the same markdown as a standalone page (opens from the folder, no server)."""
    from html import escape

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style></head><body>{body}</body></html>\n"


def write_report(folder: Path) -> Path:
    """Write report.md, report.html and plots/ into `folder`; returns the report.md path."""
    folder = Path(folder)
    data = collect(folder)
    made = draw_report_plots(data, folder / "plots")
    markdown = render_markdown(data, made)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    (folder / "report.html").write_text(render_html(markdown, f"synth report: {data.name}"), encoding="utf-8")
    return folder / "report.md"
