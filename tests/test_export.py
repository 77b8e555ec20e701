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


def _varied_rows(n: int) -> list[dict[str, object]]:
    """Rows whose columns differ (a key only some rows have, ints next to floats, None, lists, dicts)."""
    rows: list[dict[str, object]] = []
    for i in range(n):
        row: dict[str, object] = {
            "query": f"q{i}",
            "text": f"passage {i % 97} " * (i % 7 + 1),
            "source_id": f"d{i % 97}",
        }
        row["score"] = i if i % 3 else i + 0.5  # int and float: one float column
        if i % 5 == 0:
            row["negatives"] = [f"n{i}", f"m{i}"]
        if i % 11 == 0:
            row["meta"] = {"k": i, "tag": None}
        rows.append(row)
    return rows


def test_details_in_several_shards_load_as_the_rows_in_order(tmp_path: Path) -> None:
    """Shards are cut by size and named -of-N only when complete; they load as `Dataset.from_list` would."""
    from datasets import Dataset

    from synth.export_arrow import arrow_files, iter_record_batches
    from synth.export_files import write_details

    rows = _varied_rows(13_000)  # 4 batches of <= 4096 rows, each over the shard size
    assert write_details(tmp_path / "details", rows, max_shard_bytes=40_000) == len(rows)
    shards = arrow_files(tmp_path / "details")
    assert len(shards) == 4 and [p.name for p in shards][-1] == f"data-{len(shards) - 1:05d}-of-{len(shards):05d}.arrow"
    assert sorted(p.name for p in (tmp_path / "details").iterdir()) == sorted(
        [p.name for p in shards] + ["dataset_info.json", "state.json"]
    )  # no half-named part left
    loaded = load_from_disk(str(tmp_path / "details"))
    expected = Dataset.from_list(rows)
    assert loaded.features == expected.features and loaded.to_list() == expected.to_list()
    assert sum(b.num_rows for b in iter_record_batches(tmp_path / "details", ["query"])) == len(rows)


def test_empty_outputs_still_load_with_their_columns(tmp_path: Path) -> None:
    out = write_output(
        tmp_path / "run",
        [],
        [],
        anchor="q",
        positive="t",
        formats=["jsonl", "parquet"],
        card="",
        recipe_yaml="",
        summary={},
    )
    assert load_from_disk(str(out)).column_names == ["anchor", "positive"] and len(load_from_disk(str(out))) == 0
    assert load_from_disk(str(out / "dropped")).column_names == ["step", "rule", "reason", "source_id", "values"]
    import pyarrow.parquet as pq

    assert pq.read_table(out / "train.parquet").column_names == ["anchor", "positive"]


def test_parquet_and_jsonl_hold_the_training_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = write(tmp_path / "run")
    train = load_from_disk(str(out)).to_list()
    assert pq.read_table(out / "train.parquet").to_pylist() == train
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == train


_PEAK_SCRIPT = """
import json, sys
from pathlib import Path
import datasets, datasets.arrow_writer, pyarrow, pyarrow.parquet  # imported before the baseline is taken
from synth.executors.shards import RowsView, write_rows
from synth.export import write_output

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024

folder, n = Path(sys.argv[1]), int(sys.argv[2])
paths, counts = [], []
for s in range(0, n, 4096):
    rows = ({"query": f"q{i}", "text": f"{i:08d} " + "x" * 1500, "source_id": f"d{i}"} for i in range(s, min(n, s + 4096)))
    paths.append(folder / f"{len(paths):05d}.jsonl")
    counts.append(write_rows(paths[-1], rows))
before = hwm()
write_output(folder / "out", RowsView(paths, counts), [], anchor="query", positive="text", formats=[], card="",
             recipe_yaml="", summary={})
print(json.dumps({"before": before, "after": hwm()}))
"""


def test_writing_the_output_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    """Peak RSS while writing 120k rows (~190 MB of text, twice: train and details) grows far less than
    the data: nothing is held whole, and no Arrow file is mapped and read back (mapped pages count)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), "120000"], capture_output=True, text=True, check=True
    )
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["after"] - peak["before"] < 90, peak  # MiB; the data written is ~360 MB
