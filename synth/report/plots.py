"""PNG plots for the run report (matplotlib, headless Agg backend).

Each figure function draws one chart from plain lists and writes it to `path`;
`draw_report_plots` decides which charts the data supports, so none is ever empty or misleading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from synth.report.summary import ReportData


def _plt():  # type: ignore[no-untyped-def]
    """pyplot on the Agg backend (no display needed); imported lazily to keep the CLI fast."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def rows_per_step(names: Sequence[str], rows_in: Sequence[int], rows_out: Sequence[int], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, rows_in, 0.4, label="rows in", color="#9ecae1")
    ax.bar(x + 0.2, rows_out, 0.4, label="rows out", color="#3182bd")
    for xi, v in zip(x, rows_out, strict=True):
        ax.text(xi + 0.2, v, str(v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("rows")
    ax.set_title("Rows in and out per step")
    ax.legend()
    return _save(fig, path)


def drops_by_rule(labels: Sequence[str], counts: Sequence[int], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(labels) + 1.2)))
    y = np.arange(len(labels))
    ax.barh(y, counts, color="#e6550d")
    for yi, v in zip(y, counts, strict=True):
        ax.text(v, yi, f" {v}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rows dropped")
    ax.set_title("Drops by step / rule: reason")
    return _save(fig, path)


def length_histograms(series: dict[str, Sequence[int]], path: Path) -> Path:
    """Overlaid histograms on log-spaced bins: queries (~50 chars) and passages (~1k) on one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    top = max(max(v) for v in series.values() if len(v))
    bins = np.logspace(0, np.log10(max(top, 10) + 1), 40)
    for (label, values), color in zip(series.items(), ("#3182bd", "#e6550d", "#31a354", "#756bb1"), strict=False):
        ax.hist(np.maximum(values, 1), bins=bins, alpha=0.6, label=f"{label} (n={len(values)})", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("characters (log scale)")
    ax.set_ylabel("rows")
    ax.set_title("Length distribution: source vs generated")
    ax.legend()
    return _save(fig, path)


def score_histograms(positive: Sequence[float], negative: Sequence[float], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    values = np.concatenate([np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)])
    bins = np.linspace(values.min(), values.max(), 40)
    ax.hist(negative, bins=bins, alpha=0.6, label=f"negatives (n={len(negative)})", color="#e6550d")
    ax.hist(positive, bins=bins, alpha=0.6, label=f"positives (n={len(positive)})", color="#3182bd")
    ax.set_xlabel("cosine similarity to the query")
    ax.set_ylabel("count")
    ax.set_title("Positive vs mined negative scores")
    ax.legend()
    return _save(fig, path)


def margin_histogram(margins: Sequence[float], hardest: Sequence[float], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    values = np.concatenate([np.asarray(margins, dtype=float), np.asarray(hardest, dtype=float)])
    bins = np.linspace(values.min(), values.max(), 40)
    ax.hist(margins, bins=bins, alpha=0.6, label="positive - each negative", color="#756bb1")
    ax.hist(hardest, bins=bins, alpha=0.6, label="positive - hardest negative", color="#31a354")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("score margin")
    ax.set_ylabel("count")
    ax.set_title("Mining margins")
    ax.legend()
    return _save(fig, path)


def cost_per_step(names: Sequence[str], seconds: Sequence[float], tokens: Sequence[int], path: Path) -> Path:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(names) + 3), 3.5))
    x = np.arange(len(names))
    left.bar(x, seconds, color="#636363")
    left.set_xticks(x, names, rotation=20, ha="right")
    left.set_ylabel("seconds")
    left.set_title("Time per step")
    right.bar(x, tokens, color="#3182bd")
    right.set_xticks(x, names, rotation=20, ha="right")
    right.set_ylabel("tokens (prompt + completion)")
    right.set_title("LLM tokens per step")
    return _save(fig, path)


def draw_report_plots(data: ReportData, plots_dir: Path) -> dict[str, str]:
    """Draw every plot there is data for; returns {title: relative path}."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    steps = data.steps
    if steps:
        names = [s["name"] for s in steps]
        rows_per_step(
            names, [s["rows_in"] for s in steps], [s["rows_out"] for s in steps], plots_dir / "rows_per_step.png"
        )
        made["Rows in and out per step"] = "plots/rows_per_step.png"
        tokens = [s["prompt_tokens"] + s["completion_tokens"] for s in steps]
        cost_per_step(names, [s["seconds"] for s in steps], tokens, plots_dir / "cost_per_step.png")
        made["Time and tokens per step"] = "plots/cost_per_step.png"
    if data.drops:
        ranked = data.drops.most_common()
        drops_by_rule(
            [f"{s}/{r}: {why}" for (s, r, why), _ in ranked], [n for _, n in ranked], plots_dir / "drops_by_rule.png"
        )
        made["Drops by rule"] = "plots/drops_by_rule.png"
    lengths = {f"generated ({data.anchor})": data.anchor_chars, f"source ({data.positive})": data.positive_chars}
    lengths = {k: v for k, v in lengths.items() if len(v)}
    if lengths:
        length_histograms(lengths, plots_dir / "lengths.png")
        made["Length distributions"] = "plots/lengths.png"
    if len(data.positive_scores) and len(data.negative_scores):
        score_histograms(data.positive_scores, data.negative_scores, plots_dir / "scores.png")
        made["Positive vs negative scores"] = "plots/scores.png"
        margin_histogram(data.margins, data.hardest_margins, plots_dir / "margins.png")
        made["Mining margins"] = "plots/margins.png"
    return made
