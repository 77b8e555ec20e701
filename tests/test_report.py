"""The report renders from a real quickstart output (markdown, HTML, real PNG plots, `synth inspect`)
and reads any summary.json, however old or damaged, without a traceback."""

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
from synth.llm import Usage
from synth.report.card import dataset_card
from synth.report.markdown import write_report
from synth.report.summary import RunResult, StepReport, collect, summary_dict
from tests.conftest import QUICKSTART

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
    assert list(data.positive_scores) == [r["positive_score"] for r in quickstart_run.rows]
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


STEP_KEYS = ["name", "kind", "rows_in", "rows_out", "dropped", "requests", "retries", "cache_hits", "failed",
             "prompt_tokens", "completion_tokens", "seconds", "fingerprint", "stats"]  # fmt: skip


def test_summary_json_flattens_usage_into_the_step_and_reads_back() -> None:
    usage = Usage(requests=7, retries=1, cache_hits=3, failed=2, prompt_tokens=100, completion_tokens=20)
    report = StepReport("queries", "generate", 4, 8, {"parse_no_match": 1}, usage, 1.5, "abc")
    result = RunResult(Path("out"), [{"id": "a"}], [{"reason": "x"}], [report], 2.0, {"llm": "m"})
    summary = json.loads(json.dumps(summary_dict(result)))
    assert summary["rows"] == 1 and summary["dropped"] == 1 and summary["models"] == {"llm": "m"}
    assert list(summary["steps"][0]) == STEP_KEYS
    assert summary["steps"][0]["requests"] == 7 and summary["steps"][0]["completion_tokens"] == 20
    assert StepReport.from_dict(summary["steps"][0]) == report
    assert (report.requests, report.retries, report.cache_hits, report.failed) == (7, 1, 3, 2)
    assert (report.prompt_tokens, report.completion_tokens) == (100, 20)


def test_card_shows_each_steps_usage() -> None:
    from synth.recipe import load_recipe

    recipe, _ = load_recipe(QUICKSTART)
    usage = Usage(requests=7, prompt_tokens=100, completion_tokens=20)
    reports = [
        StepReport("source", "source", 4, 4, {}),
        StepReport("queries", "generate", 4, 8, {"parse_no_match": 1}, usage, 1.5),
    ]
    rows = [{"id": "a", "source_id": "a", "text": "doc", "query": "q"}]
    models = {"llm": "m", "embedder": "e", "llm:judge": "j"}
    card = dataset_card(recipe, RunResult(Path("out"), rows, [], reports, 2.0, models))
    assert "| queries | generate | 4 | 8 | parse_no_match: 1 | 7 | 100 | 20 | 1.5 |" in card
    assert "**LLM**: `m`" in card and "**Rows**: 1 " in card and '"anchor": "q"' in card
    assert "- **Named models**: `llm:judge` = `j`\n" in card
    plain = dataset_card(recipe, RunResult(Path("out"), rows, [], reports, 2.0, {"llm": "m", "embedder": "e"}))
    assert "Named models" not in plain and "- **Embedder**: `e`\n- **Wall time**" in plain


def test_inspect_reads_a_summary_with_missing_or_mistyped_keys(tmp_path: Path) -> None:
    steps = [{"name": "only-a-name"}, "junk", {"name": "odd", "rows_in": "many", "dropped": [1], "seconds": None}]
    (tmp_path / "summary.json").write_text(json.dumps({"rows": "3", "steps": steps, "models": None}))
    (tmp_path / "dropped.jsonl").write_text('{"step": "clean", "reason": "bad", "value": "[/x] not markup"}\n[1]\n')
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "only-a-name" in result.output and "odd" in result.output and "3 rows" in result.output
    assert "[/x] not markup" in result.output
    assert [s["rows_in"] for s in collect(tmp_path).steps] == [0, 0]
    report = write_report(tmp_path).read_text()
    assert "| odd | ? | 0 | 0 | 0 | 0 | 0 | 0 | 0.0 |" in report


def test_inspect_of_an_unreadable_summary_is_one_clear_line(tmp_path: Path) -> None:
    for text, message in (("{not json", "cannot be read"), ("[1, 2]", "expected a mapping at the top, got list")):
        (tmp_path / "summary.json").write_text(text)
        for args in (["inspect", str(tmp_path)], ["inspect", str(tmp_path), "--report"]):
            result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
            assert result.exit_code == 1, result.output
            assert "summary.json" in result.output and message in result.output, result.output
            assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_report_numbers_stream_from_details_in_many_shards(tmp_path: Path) -> None:
    """collect() reads details/ batch by batch across shards; its numbers are those of the rows."""
    from synth.export_files import write_details, write_dropped

    rows = []
    for i in range(9000):  # three batches of <= 4096 rows, each its own shard
        negatives = [round(0.5 - (i % 7) / 100, 6), round(0.25 + (i % 3) / 100, 6)] if i % 4 else []
        rows.append(
            {"query": "ü" * (i % 50 + 1), "text": f"passage {i % 1234} " * (i % 5 + 1), "negative_scores": negatives,
             "positive_score": None if i % 9 == 0 else round(0.6 + (i % 11) / 100, 6)}
        )  # fmt: skip
    write_details(tmp_path / "details", rows, max_shard_bytes=1)
    drops = [
        {"step": "s", "rule": "length", "reason": "too_short", "source_id": str(i), "value": "x"} for i in range(5000)
    ]
    write_dropped(tmp_path / "dropped", tmp_path / "dropped.jsonl", drops)
    (tmp_path / "summary.json").write_text(json.dumps({"rows": len(rows), "dropped": len(drops), "steps": []}))
    (tmp_path / "recipe.yaml").write_text("output: {columns: {anchor: query, positive: text}}\n")
    data = collect(tmp_path)
    assert len(list((tmp_path / "details").glob("data-*.arrow"))) == 3
    assert list(data.anchor_chars) == [len(r["query"]) for r in rows]
    assert list(data.positive_chars) == [len(t) for t in dict.fromkeys(r["text"] for r in rows)]
    scored = [r for r in rows if r["positive_score"] is not None and r["negative_scores"]]
    assert list(data.positive_scores) == [r["positive_score"] for r in scored]
    assert list(data.negative_scores) == [s for r in scored for s in r["negative_scores"]]
    assert np.allclose(data.margins, [r["positive_score"] - s for r in scored for s in r["negative_scores"]])
    assert np.allclose(data.hardest_margins, [r["positive_score"] - max(r["negative_scores"]) for r in scored])
    assert data.drops == {("s", "length", "too_short"): 5000} and data.drop_examples[("s", "length", "too_short")] == [
        "x",
        "x",
        "x",
    ]


def test_report_quantiles_are_the_statistics_module_ones() -> None:
    """report.md's n/min/median/p95/max from numpy equal `statistics.quantiles(n=20, method="inclusive")`."""
    import random
    import statistics

    from synth.report.markdown import _quantiles

    rng = random.Random(0)
    for trial in range(500):
        n = rng.randint(1, 80)
        values = [rng.randint(0, 3000) for _ in range(n)] if trial % 2 else [rng.uniform(-1, 1) for _ in range(n)]
        q = statistics.quantiles(values, n=20, method="inclusive") if n > 1 else [values[0]] * 19
        expected = f"| {n} | {min(values):.3g} | {q[9]:.3g} | {q[18]:.3g} | {max(values):.3g} |"
        assert _quantiles(values) == _quantiles(np.array(values)) == expected
    assert _quantiles([]) == _quantiles(np.array([])) == "| - | - | - | - | - |"
