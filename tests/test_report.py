"""The report renders from a real quickstart output: markdown, HTML, real PNG plots, `synth inspect`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_from_disk
from typer.testing import CliRunner

from synth.cli import app
from synth.export import dropped_dataset
from synth.report_md import collect, write_report

PLOTS = ["rows_per_step", "cost_per_step", "drops_by_rule", "lengths", "scores", "margins"]


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return matplotlib.image.imread(str(path))


def test_run_writes_report_with_plots_and_the_card_links_it(quickstart_run: Any) -> None:
    out: Path = quickstart_run.output_dir
    report = (out / "report.md").read_text()
    card = (out / "README.md").read_text()
    assert "[report.md](report.md)" in card
    for step in ("source", "queries", "negatives"):
        assert f"| {step} |" in report
    for name in PLOTS if quickstart_run.dropped else [p for p in PLOTS if p != "drops_by_rule"]:
        image = read_png(out / "plots" / f"{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100, name
        assert image[..., :3].std() > 0.01, f"{name} is a blank image"
        assert f"(plots/{name}.png)" in report
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="plots/scores.png"' in html


def test_report_numbers_match_the_run(quickstart_run: Any) -> None:
    data = collect(quickstart_run.output_dir)
    assert data.rows == len(quickstart_run.rows) and data.dropped == len(quickstart_run.dropped)
    assert sum(data.drops.values()) == len(quickstart_run.dropped)
    assert len(data.anchor_chars) == len(quickstart_run.rows)
    assert data.positive_scores == [r["positive_score"] for r in quickstart_run.rows]
    hardest = [r["positive_score"] - max(r["negative_scores"]) for r in quickstart_run.rows]
    assert np.allclose(data.hardest_margins, hardest)
    assert [s["name"] for s in data.steps] == [r.name for r in quickstart_run.reports]


def test_dropped_dataset_keeps_step_rule_reason_and_values(quickstart_run: Any, tmp_path: Path) -> None:
    dropped = load_from_disk(str(quickstart_run.output_dir / "dropped"))
    assert dropped.column_names == ["step", "rule", "reason", "source_id", "values"]
    assert len(dropped) == len(quickstart_run.dropped)
    records = [
        {"step": "clean", "rule": "dedup", "reason": "near_duplicate", "source_id": "a", "score": 93.1, "value": "x"},
        {"step": "clean", "rule": "judge", "reason": "judge_unscored", "source_id": "b", "top_logprobs": {"The": -0.1}},
        {"step": "queries", "reason": "parse_no_match", "source_id": "c", "raw": "ünïcode"},
    ]
    ds = dropped_dataset(records)
    assert ds["rule"] == ["dedup", "judge", ""]
    assert json.loads(ds[0]["values"]) == {"score": 93.1, "value": "x"}
    assert json.loads(ds[2]["values"]) == {"raw": "ünïcode"}


def test_inspect_prints_the_summary_and_can_rewrite_the_report(quickstart_run: Any, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(quickstart_run.output_dir, copy)
    shutil.rmtree(copy / "plots")
    (copy / "report.md").unlink()
    result = CliRunner().invoke(app, ["inspect", str(copy), "--report", "--examples", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "negatives" in result.output and f"{len(quickstart_run.rows)} rows" in result.output
    assert "anchor" in result.output and str(copy / "report.md") in result.output
    assert (copy / "plots" / "scores.png").stat().st_size > 1000
    missing = CliRunner().invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "not a synth output folder" in missing.output


def test_report_from_an_output_without_mining_or_drops_skips_those_plots(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(
        json.dumps({"rows": 0, "dropped": 0, "seconds": 1.0, "models": {}, "steps": [
            {"name": "source", "kind": "source", "rows_in": 0, "rows_out": 0, "dropped": {}},
        ]})
    )  # fmt: skip
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "No row was dropped." in report and "plots/rows_per_step.png" in report
    assert not (tmp_path / "plots" / "scores.png").exists() and "plots/scores.png" not in report
