"""Export: trainer-ready columns, and an output folder that is replaced only when complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from synth.export import training_rows, write_output

ROWS = [
    {
        "query": "q1",
        "text": "p1",
        "negatives": ["n1", "n2", "n3"],
        "source_id": "a",
        "negative_scores": [0.5, 0.4, 0.3],
    },
    {"query": "q2", "text": "p2", "negatives": ["m1", "m2"], "source_id": "b", "negative_scores": [0.2, 0.1]},
]


def write(out: Path, rows=ROWS, **kw) -> Path:  # type: ignore[no-untyped-def]
    args = dict(
        anchor="query", positive="text", formats=["jsonl", "parquet"], card="# card", recipe_yaml="x: 1", summary={}
    )
    args.update(kw)
    return write_output(out, rows, [{"step": "s", "reason": "r", "source_id": "c"}], **args)  # type: ignore[arg-type]


def test_training_rows_have_uniform_negative_columns() -> None:
    assert training_rows(ROWS, "query", "text") == [
        {"anchor": "q1", "positive": "p1", "negative_1": "n1", "negative_2": "n2"},
        {"anchor": "q2", "positive": "p2", "negative_1": "m1", "negative_2": "m2"},
    ]
    with pytest.raises(ValueError, match="no column 'question'"):
        training_rows(ROWS, "question", "text")


def test_output_folder_is_a_dataset_with_details_drops_and_card(tmp_path: Path) -> None:
    out = write(tmp_path / "run")
    ds = load_from_disk(str(out))
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(ds) == 2
    details = load_from_disk(str(out / "details"))
    assert details["source_id"] == ["a", "b"] and details["negative_scores"][1] == [0.2, 0.1]
    assert [json.loads(line)["reason"] for line in (out / "dropped.jsonl").read_text().splitlines()] == ["r"]
    assert (out / "README.md").read_text() == "# card"
    assert len((out / "train.jsonl").read_text().splitlines()) == 2 and (out / "train.parquet").stat().st_size > 0


def test_rewrite_replaces_the_old_output_and_leaves_no_temp_folders(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write(out)
    write(out, rows=ROWS[:1])
    assert len(load_from_disk(str(out))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_write_keeps_the_previous_output_intact(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write(out)
    with pytest.raises(ValueError):
        write(out, anchor="missing_column")
    with pytest.raises(TypeError):  # fails half-way: after the dataset, before the card
        write(out, rows=ROWS[:1], card=None)
    assert len(load_from_disk(str(out))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
