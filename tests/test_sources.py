"""Sources: every format reads into id/text rows; bad input gets a clear error or a counted drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth.sources import SourceError, check_source, load_documents


def test_jsonl_csv_json_and_text_folder(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "one", "title": "T"}\n\n{"id": 2, "text": "two"}\n')
    (tmp_path / "d.csv").write_text("doc,body\nx,first\ny,second\n")
    (tmp_path / "d.json").write_text(json.dumps([{"id": "j", "text": "json"}]))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("bee")
    (folder / "a.txt").write_text("ay")

    rows, dropped = load_documents(tmp_path / "d.jsonl")
    assert rows == [{"title": "T", "id": "1", "text": "one"}, {"id": "2", "text": "two"}] and dropped == []
    rows, _ = load_documents(tmp_path / "d.csv", text_column="body", id_column="doc")
    assert [(r["id"], r["text"]) for r in rows] == [("x", "first"), ("y", "second")]
    rows, _ = load_documents(tmp_path / "d.json")
    assert rows == [{"id": "j", "text": "json"}]
    rows, _ = load_documents(folder)
    assert [(r["id"], r["text"]) for r in rows] == [("a.txt", "ay"), ("b.txt", "bee")]


def test_parquet_and_saved_dataset(tmp_path: Path) -> None:
    from datasets import Dataset

    ds = Dataset.from_list([{"id": "p", "text": "parquet row"}])
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_documents(tmp_path / "d.parquet")[0] == [{"id": "p", "text": "parquet row"}]
    assert load_documents(tmp_path / "saved")[0] == [{"id": "p", "text": "parquet row"}]


def test_blank_texts_are_counted_drops_and_limit_applies(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "text": "  "}\n{"id": "b", "text": null}\n{"id": "c", "text": "ok"}\n{"id": "d", "text": "more"}\n'
    )
    rows, dropped = load_documents(path, limit=1)
    assert [r["id"] for r in rows] == ["c"]
    assert [(d["source_id"], d["reason"]) for d in dropped] == [("a", "empty_text"), ("b", "empty_text")]


def test_errors_name_the_file_and_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty.jsonl: the source is empty"):
        load_documents(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": \n')
    with pytest.raises(SourceError, match="bad.jsonl:2: not valid JSON"):
        load_documents(bad)
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"id": 1, "body": "a"}\n')
    with pytest.raises(SourceError, match="no column 'text' \\(columns: id, body\\)"):
        load_documents(nocol)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(SourceError, match="duplicate id '1'"):
        load_documents(dup)
    with pytest.raises(SourceError, match="file not found"):
        load_documents(tmp_path / "missing.jsonl")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"id": 1, "text": ""}\n')
    with pytest.raises(SourceError, match="no row has a non-empty 'text'"):
        load_documents(blank)


def test_parquet_and_dataset_rows_stream_through_the_same_checks(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = [
        {"id": "a", "text": "kept", "meta": {"k": "v"}},
        {"id": None, "text": "no id", "meta": {"k": "v"}},
        {"id": "c", "text": None, "meta": {"k": "v"}},
    ]
    ds = Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "d.parquet", tmp_path / "saved"):
        assert check_source(path) == []
        kept, dropped = load_documents(path)
        assert kept == [{"meta": {"k": "v"}, "id": "a", "text": "kept"}]
        assert [(d["reason"], d["source_id"], d["detail"]) for d in dropped] == [
            ("missing_id", "", "row 2: no 'id'"),
            ("empty_text", "c", "row 3"),
        ]
    # A struct column used as the text is a counted drop, never its Python repr.
    Dataset.from_list([{"id": "s", "body": {"k": "v"}}]).to_parquet(str(tmp_path / "s.parquet"))
    assert check_source(tmp_path / "s.parquet", text_column="body") == [
        f"{tmp_path / 's.parquet'}: no row has a non-empty 'body' (dropped: text_not_a_string=1)"
    ]
    with pytest.raises(SourceError, match="no row has a non-empty 'body'"):
        load_documents(tmp_path / "s.parquet", text_column="body")


def test_a_duplicate_id_far_apart_is_found_after_the_ids_are_folded_into_hashes(tmp_path: Path) -> None:
    """The duplicate-id check holds ids as 64-bit hashes once a batch is full (synth/idset.py); a
    duplicate 70k lines after its first use (past one fold) is still refused, at its own line."""
    path = tmp_path / "far.jsonl"
    with path.open("w") as f:
        for i in range(70_000):
            f.write(json.dumps({"id": f"doc-{i}", "text": "t"}) + "\n")
        f.write(json.dumps({"id": "doc-3", "text": "again"}) + "\n")
    with pytest.raises(SourceError, match=f"{path.name}:70001: duplicate id 'doc-3'"):
        load_documents(path)


def test_the_id_set_answers_like_a_python_set_and_holds_a_few_bytes_an_id() -> None:
    import tracemalloc

    from synth.idset import IdSet

    ids = IdSet(batch=1000)
    for i in range(2500):
        ids.add(f"a{i}")
    assert all(f"a{i}" in ids for i in range(2500))  # folded (0..1999) and recent (2000..2499)
    assert not any(f"b{i}" in ids for i in range(2500)) and "" not in ids and "a2500" not in ids

    tracemalloc.start()
    big = IdSet()
    for i in range(300_000):
        big.add(f"document-{i:09d}")
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "document-000123456" in big and "document-000300000" not in big
    assert held < 12 * 2**20, held  # a set[str] of the same ids: ~35 MiB
