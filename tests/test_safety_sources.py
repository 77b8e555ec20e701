"""Hostile or broken source files (issue 12): one clear line naming file and line, or a counted drop.

Never a traceback, never a silently stringified or shifted value, and `synth validate` finds a bad
row wherever it is in the file, not only in the first row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synth.sources import MAX_PROBLEMS, SourceError, check_source, load_documents
from tests.conftest import REPO, write_recipe

SYNTH = [sys.executable, "-m", "synth.cli"]
DRY_RUN = ["--set", "llm.backend=dry-run", "--set", "embedder.model=hashing"]


def synth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNTH, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def recipe_for(folder: Path, source: str) -> Path:
    return write_recipe(
        folder,
        f"source: {{path: {source}}}\nsteps:\n  - generate: {{name: q, template: query.j2, output: query}}\n"
        "output: {columns: {anchor: query, positive: text}}\n",
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def reasons(dropped: list[dict]) -> list[tuple[str, str, str]]:
    return [(d["reason"], d["source_id"], d["detail"]) for d in dropped]


# --- CSV shape -------------------------------------------------------------------------------------


def test_a_csv_row_with_extra_fields_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,text\na,alpha\nb,beta, with a stray comma\nc,gamma\n")
    with pytest.raises(SourceError, match=r"d\.csv:3: 3 fields, the header has 2 \(an unquoted comma"):
        load_documents(path)


def test_a_csv_row_with_missing_fields_is_refused_not_shifted(tmp_path: Path) -> None:
    # An unquoted line break splits one record in two: the second half would become id "rest", text "T".
    path = write(tmp_path / "d.csv", "id,text,title\na,first line\nrest,T\n")
    with pytest.raises(SourceError, match=r"d\.csv:2: 2 fields, the header has 3"):
        load_documents(path)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,text,text\na,one,two\n")
    with pytest.raises(SourceError, match=r"d\.csv:1: column 'text' appears twice in the header"):
        load_documents(path)


# --- ids -------------------------------------------------------------------------------------------


def test_a_row_without_id_after_the_first_is_a_counted_drop(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "d.jsonl", '{"id": "a", "text": "one"}\n{"text": "two"}\n{"id": null, "text": "three"}\n')
    rows, dropped = load_documents(jsonl)
    assert [r["id"] for r in rows] == ["a"]
    assert reasons(dropped) == [("missing_id", "", "line 2: no 'id'"), ("missing_id", "", "line 3: no 'id'")]
    csv_path = write(tmp_path / "d.csv", "id,text\na,one\n,two\n  ,three\n")
    rows, dropped = load_documents(csv_path)
    assert [r["id"] for r in rows] == ["a"]
    assert reasons(dropped) == [("missing_id", "", "line 3: no 'id'"), ("missing_id", "", "line 4: no 'id'")]


def test_an_id_that_is_a_dict_or_list_is_a_counted_drop_never_stringified(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"id": "a", "text": "one"}\n{"id": {"k": 1}, "text": "two"}\n{"id": [1, 2], "text": "three"}\n',
    )
    rows, dropped = load_documents(path)
    assert [r["id"] for r in rows] == ["a"]
    assert reasons(dropped) == [
        ("id_not_a_scalar", "", "line 2: 'id' is an object"),
        ("id_not_a_scalar", "", "line 3: 'id' is a list"),
    ]


# --- texts -----------------------------------------------------------------------------------------


def test_a_text_that_is_a_dict_list_or_number_is_a_counted_drop_never_stringified(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"id": "a", "text": "one"}\n{"id": "b", "text": {"x": 1}}\n{"id": "c", "text": ["x"]}\n'
        '{"id": "d", "text": 42}\n',
    )
    rows, dropped = load_documents(path)
    assert rows == [{"id": "a", "text": "one"}]
    assert reasons(dropped) == [
        ("text_not_a_string", "b", "line 2: 'text' is an object"),
        ("text_not_a_string", "c", "line 3: 'text' is a list"),
        ("text_not_a_string", "d", "line 4: 'text' is a number"),
    ]


def test_a_column_missing_from_some_rows_is_a_drop_and_from_every_row_an_error(tmp_path: Path) -> None:
    # The first row lacks the text: the file is still usable (before, the whole file was refused).
    some = write(tmp_path / "some.jsonl", '{"id": "a", "body": "x"}\n{"id": "b", "text": "two"}\n')
    rows, dropped = load_documents(some)
    assert [r["id"] for r in rows] == ["b"]
    assert reasons(dropped) == [("missing_text", "a", "line 1: no 'text'")]
    # A later row without the key is `missing_text`, not an `empty_text` it never had.
    later = write(tmp_path / "later.jsonl", '{"id": "a", "text": "one"}\n{"id": "b", "body": "two"}\n')
    assert reasons(load_documents(later)[1]) == [("missing_text", "b", "line 2: no 'text'")]
    none = write(tmp_path / "none.jsonl", '{"id": "a", "body": "x"}\n{"id": "b", "body": "y", "title": "t"}\n')
    with pytest.raises(SourceError, match=r"none\.jsonl: no column 'text' \(columns: id, body, title\)"):
        load_documents(none)
    no_ids = write(tmp_path / "noids.jsonl", '{"doc": "a", "text": "x"}\n')
    with pytest.raises(SourceError, match=r"no column 'id' \(columns: doc, text\); set source.id_column: null"):
        load_documents(no_ids)


# --- reserved column names -------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["self", "source_id"])
def test_a_reserved_column_name_is_refused_naming_file_and_line(tmp_path: Path, column: str) -> None:
    path = write(tmp_path / "d.csv", f"id,text,{column}\na,one,x\nb,two,y\n")
    with pytest.raises(SourceError, match=rf"d\.csv:2: column '{column}' is reserved \(.*\); rename it in the file"):
        load_documents(path)


def test_a_column_that_the_id_or_text_would_overwrite_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"id": "a", "body": "summary", "text": "the original text"}\n')
    with pytest.raises(SourceError, match=r"d\.jsonl:1: column 'text' is reserved .*set source.text_column: text"):
        load_documents(path, text_column="body")
    with pytest.raises(SourceError, match=r"d\.jsonl:1: column 'id' is reserved .*set source.id_column: id"):
        load_documents(path, id_column=None)
    # Used as the id/text columns themselves, `self` and `source_id` are fine: they are renamed.
    ok = write(tmp_path / "ok.jsonl", '{"source_id": "a", "self": "x"}\n')
    assert load_documents(ok, text_column="self", id_column="source_id")[0] == [{"id": "a", "text": "x"}]


# --- encodings, JSON, empty files, unreadable files ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("d.jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n', "d.jsonl:2"),
        ("d.csv", b"id,text\na,ok\nb,caf\xe9\n", "d.csv:3"),
        ("d.json", b'[\n{"id": "a", "text": "caf\xe9"}\n]', "d.json:2"),
        ("d.txt", b"fine\ncaf\xe9\n", "d.txt:2"),
    ],
)
def test_a_file_that_is_not_utf8_is_one_line_naming_line_and_byte(
    tmp_path: Path, name: str, data: bytes, where: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(
        SourceError, match=rf"{where}: not UTF-8 text \(byte 0xe9 at column \d+\); save the file as UTF-8"
    ):
        load_documents(path)
    assert [p.split(": not UTF-8")[0].endswith(where) for p in check_source(path)] == [True]


def test_a_text_folder_with_a_non_utf8_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "b.txt").write_bytes(b"line one\n\xff\xfe")
    with pytest.raises(SourceError, match=r"b\.txt:2: not UTF-8 text \(byte 0xff at column 1\)"):
        load_documents(tmp_path)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column_or_json(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes("\ufeffid,text\na,one\n".encode())
    assert load_documents(csv_path)[0] == [{"id": "a", "text": "one"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes('\ufeff{"id": "a", "text": "one"}\n'.encode())
    assert load_documents(jsonl)[0] == [{"id": "a", "text": "one"}]


def test_json_problems_name_the_line_or_row(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.json", '[\n{"id": "a", "text": "x"},\n{"id": \n]')
    with pytest.raises(SourceError, match=r"broken\.json:4: not valid JSON"):
        load_documents(broken)
    mixed = write(tmp_path / "mixed.json", '[{"id": "a", "text": "x"}, 3]')
    with pytest.raises(SourceError, match=r"mixed\.json \(row 2\): not a JSON object but a number"):
        load_documents(mixed)
    line = write(tmp_path / "d.jsonl", '{"id": "a", "text": "x"}\n["not", "an", "object"]\n')
    with pytest.raises(SourceError, match=r"d\.jsonl:2: not a JSON object but a list"):
        load_documents(line)


def test_a_damaged_parquet_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(SourceError, match=r"d\.parquet: not a readable parquet file"):
        load_documents(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("d.jsonl", "\n  \n"), ("d.csv", ""), ("h.csv", "id,text\n\n"), ("d.json", "[]"), ("d.txt", "\n\n")],
)
def test_an_empty_source_is_one_line_in_load_and_check(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(SourceError, match=rf"{name}: the source is empty"):
        load_documents(path)
    assert check_source(path) == [f"{path}: the source is empty"]


# --- check_source: every row, cheaply --------------------------------------------------------------


def test_check_source_lists_every_bad_row_not_only_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\nnot json\n{"id": "a", "text": "again"}\n'
        '{"id": "c", "text": "x", "self": 1}\n[1]\n{"id": "d", "text": "y", "self": 2}\n',
    )
    assert check_source(path) == [
        f"{path}:3: not valid JSON (Expecting value)",
        f"{path}:4: duplicate id 'a'; ids must be unique",
        f"{path}:5: column 'self' is reserved (templates cannot receive a variable named 'self'); rename it in the file",
        f"{path}:6: not a JSON object but a list",
    ]
    with pytest.raises(SourceError, match=r"d\.jsonl:3: not valid JSON"):
        load_documents(path)  # load stops at the first of them


def test_check_source_stops_at_the_limit_like_load_and_caps_its_list(tmp_path: Path) -> None:
    lines = ["id,text", "a,one", "b,two"] + [f"x{i},bad,row" for i in range(MAX_PROBLEMS + 5)]
    path = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    assert check_source(path, limit=2) == []
    assert [r["id"] for r in load_documents(path, limit=2)[0]] == ["a", "b"]
    problems = check_source(path)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == f"{path}:4: 3 fields, the header has 2 (an unquoted comma, quote or line break in a value?)"
    assert problems[-1] == f"{path}: ... and 5 more problems"


def test_check_source_agrees_with_load_on_a_file_without_usable_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"id": "a", "text": " "}\n{"text": "no id"}\n')
    assert check_source(path) == [f"{path}: no row has a non-empty 'text' (dropped: empty_text=1, missing_id=1)"]
    with pytest.raises(SourceError, match="no row has a non-empty 'text'"):
        load_documents(path)


# --- through the command line ----------------------------------------------------------------------


def test_validate_and_generate_refuse_a_bad_csv_row_that_is_not_the_first(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "id,text\na,alpha passage\nb,beta passage\nc,gamma, with a stray comma\n")
    recipe = recipe_for(tmp_path, "d.csv")
    for command in (["validate", str(recipe)], ["generate", str(recipe), "--output", str(tmp_path / "out"), *DRY_RUN]):
        result = synth(*command)
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr + result.stdout
        assert f"{tmp_path / 'd.csv'}:4: 3 fields, the header has 2" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_validate_refuses_a_non_json_line_and_a_reserved_column_anywhere(tmp_path: Path) -> None:
    write(tmp_path / "d.jsonl", '{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n{"id": "c", "text": \n')
    write(tmp_path / "s.csv", "id,text,self\na,alpha,x\n")
    for source, expected in (("d.jsonl", "d.jsonl:3: not valid JSON"), ("s.csv", "s.csv:2: column 'self' is reserved")):
        result = synth("validate", str(recipe_for(tmp_path, source)))
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr
        assert expected in " ".join(result.stderr.split())


def test_generate_records_rows_with_bad_ids_or_texts_as_counted_source_drops(tmp_path: Path) -> None:
    write(
        tmp_path / "d.jsonl",
        '{"id": "a", "text": "alpha passage about sorting lists"}\n{"text": "a row without id"}\n'
        '{"id": "c", "text": {"nested": "object"}}\n{"id": ["d"], "text": "a list id"}\n'
        '{"id": "e", "text": "epsilon passage about parsing json"}\n',
    )
    recipe = recipe_for(tmp_path, "d.jsonl")
    assert synth("validate", str(recipe)).returncode == 0  # drops are not problems: generate runs
    out = tmp_path / "out"
    result = synth("generate", str(recipe), "--output", str(out), *DRY_RUN)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["step"], d["reason"], d["source_id"], d["detail"]) for d in dropped] == [
        ("source", "missing_id", "", "line 2: no 'id'"),
        ("source", "text_not_a_string", "c", "line 3: 'text' is an object"),
        ("source", "id_not_a_scalar", "", "line 4: 'id' is a list"),
    ]
    source = json.loads((out / "summary.json").read_text())["steps"][0]
    assert (source["rows_in"], source["rows_out"]) == (5, 2)
    assert source["dropped"] == {"missing_id": 1, "text_not_a_string": 1, "id_not_a_scalar": 1}
    from datasets import load_from_disk

    positives = set(load_from_disk(str(out))["positive"])
    assert positives == {"alpha passage about sorting lists", "epsilon passage about parsing json"}
