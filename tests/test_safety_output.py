"""Issue 12, data loss: synth replaces only a folder it wrote, never an input, never a live run's files.

Real folders and files throughout; the CLI cases run `synth generate` in a subprocess with the
free `dry-run` backend, and are refused before any model loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from synth import export
from tests.conftest import QUICKSTART, write_recipe

ROWS = [{"query": "q1", "text": "p1", "source_id": "a"}, {"query": "q2", "text": "p2", "source_id": "b"}]


def write(out: Path, rows=ROWS, **kw) -> Path:  # type: ignore[no-untyped-def]
    args = dict(anchor="query", positive="text", formats=["jsonl"], card="# card", recipe_yaml="x: 1", summary={})
    args.update(kw)
    return export.write_output(out, rows, [], **args)  # type: ignore[arg-type]


def victim(folder: Path) -> Path:
    """A user's folder: `mkdir victim; echo draft > victim/notes.txt`."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("draft\n")
    return folder


def test_a_folder_synth_did_not_write_is_refused_and_left_untouched(tmp_path: Path) -> None:
    folder = victim(tmp_path / "victim")
    with pytest.raises(export.OutputError, match=r"victim is not empty and was not written by synth"):
        write(folder)
    assert (folder / "notes.txt").read_text() == "draft\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"], "no temp folder or lock file left behind"


def test_only_a_folder_synth_wrote_is_replaced_and_never_with_a_users_file_in_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out).mkdir()  # an empty folder may be used
    write(out)
    marker = json.loads((out / ".synth-output").read_text())
    assert marker["tool"] == "synth" and marker["version"] and marker["created"]
    assert {"README.md", "summary.json", "train.jsonl", "dataset_info.json"} <= set(marker["files"])
    write(out, rows=ROWS[:1])  # synth's own output: replaced
    assert len(load_from_disk(str(out))) == 1
    (out / "notes.txt").write_text("my analysis\n")  # the user adds a file to it
    with pytest.raises(export.OutputError, match=r"holds files synth did not write \(notes.txt\)"):
        write(out)
    assert (out / "notes.txt").read_text() == "my analysis\n" and len(load_from_disk(str(out))) == 1


def test_a_forged_or_broken_marker_does_not_make_a_folder_replaceable(tmp_path: Path) -> None:
    for name, text in (("empty", ""), ("other", '{"tool": "other", "files": []}'), ("nofiles", '{"tool": "synth"}')):
        folder = victim(tmp_path / name)
        (folder / ".synth-output").write_text(text)
        with pytest.raises(export.OutputError, match="not written by synth"):
            write(folder)
        assert (folder / "notes.txt").read_text() == "draft\n"


def test_an_output_may_not_be_hold_or_lie_inside_an_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    source = data / "docs.jsonl"
    source.write_text('{"id": "a", "text": "x"}\n')
    corpus = victim(tmp_path / "corpus")  # a folder source (text files, read recursively)
    cases = {
        data: "holds the input",  # --output pointing at the source data's folder
        source: "is the input",
        tmp_path / "corpus": "is the input",
        corpus / "out": "lies inside the input folder",  # the card and report would be read as source next time
    }
    for out, why in cases.items():
        with pytest.raises(export.OutputError, match=why):
            write(out, inputs=[source, corpus])
        with pytest.raises(export.OutputError, match=why):
            export.check_output_dir(out, [source, corpus])
    assert source.read_text() == '{"id": "a", "text": "x"}\n' and (corpus / "notes.txt").read_text() == "draft\n"
    assert sorted(p.name for p in corpus.iterdir()) == ["notes.txt"] and sorted(p.name for p in data.iterdir()) == [
        "docs.jsonl"
    ]
    export.check_output_dir(tmp_path / "out", [source, corpus])  # beside the inputs is fine
    export.check_output_dir(data / "out", [source])  # so is a new folder next to a source file


def test_the_working_directory_and_its_parents_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "project" / "work"
    victim(work)
    monkeypatch.chdir(work)
    for out in (Path("."), Path(".."), work):
        with pytest.raises(export.OutputError, match="working directory"):
            write(out)
    assert (work / "notes.txt").read_text() == "draft\n"
    assert sorted(p.name for p in (tmp_path / "project").iterdir()) == ["work"]


def test_a_file_and_a_folder_inside_another_synth_output_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "results.csv"
    file.write_text("a,b\n")
    with pytest.raises(export.OutputError, match="exists and is not a folder"):
        write(file)
    assert file.read_text() == "a,b\n"
    write(tmp_path / "run")
    with pytest.raises(export.OutputError, match="lies inside the synth output"):
        write(tmp_path / "run" / "details" / "nested")


def test_recipe_names_must_be_plain_folder_names() -> None:
    for good in ("quickstart", "beir-queries_v2", "run 3", "données.2024"):
        assert export.plain_name(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "-rf", "~", "x\x00y", " padded", "a" * 201):
        with pytest.raises(ValueError, match="plain folder name"):
            export.plain_name(bad)


WRITER = """
import sys, time
from pathlib import Path
from synth.export import write_output

def wait(folder):  # the report step of a slow run: hold the lock until the test says go
    print("writing", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)

write_output(Path(sys.argv[1]), [{"q": "a", "t": "b"}], [], anchor="q", positive="t", formats=[], card="",
             recipe_yaml="", summary={}, extras=wait)
print("done", flush=True)
"""


def test_a_second_run_on_the_same_output_refuses_and_the_first_finishes(tmp_path: Path) -> None:
    out, go = tmp_path / "out", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "writing"
        with pytest.raises(export.OutputError) as refused:
            write(out)
        assert str(refused.value) == (
            f"output {out} is being written by another synth run (pid {first.pid}); wait for it or choose another --output"
        )
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")], "its temp folder is untouched"
        go.touch()
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert load_from_disk(str(out))["anchor"] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "out"], "lock file and temp folders gone"
    write(out)  # the lock is free again


def test_only_temp_folders_of_dead_synth_runs_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        names = {
            f".out.tmp-{dead}-abc123_x": False,  # a killed run's half-written folder: removed
            f".out.old-{dead}-abc123_x": False,
            f".out.tmp-{live.pid}-abc123_x": True,  # a live run's: kept
            ".out.tmp-important": True,  # not a name synth gives: kept
            f".out.tmpx-{dead}-abc123_x": True,
            f".outer.tmp-{dead}-abc123_x": True,  # another output's
        }
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "data.txt").write_text("x")
        write(tmp_path / "out")
        left = {p.name for p in tmp_path.iterdir()}
        assert {name for name, kept in names.items() if kept} | {"out"} == left
    finally:
        live.kill()
        live.wait()


def _generate(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "synth.cli", "generate", *args, "--set", "llm.backend=dry-run"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_refuses_a_users_folder_and_the_working_directory_before_loading_anything(tmp_path: Path) -> None:
    victim(tmp_path / "victim")
    started = time.perf_counter()
    line = one_line_error(_generate(tmp_path, str(QUICKSTART), "--limit", "2", "--output", "victim"))
    assert "output victim is not empty and was not written by synth" in line
    line = one_line_error(_generate(tmp_path / "victim", str(QUICKSTART), "--limit", "2", "--output", "."))
    assert "output . is the working directory" in line
    assert time.perf_counter() - started < 120, "refused before any model loads"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == ["notes.txt"]
    assert (tmp_path / "victim" / "notes.txt").read_text() == "draft\n"


def test_cli_refuses_a_recipe_name_that_climbs_out_of_outputs(tmp_path: Path) -> None:
    data = QUICKSTART.parent / "data" / "python_stdlib.jsonl"
    recipe = write_recipe(
        tmp_path,
        f'name: ".."\nsource: {{path: {data}}}\nsteps:\n  - generate: {{name: q, template: query.j2, output: query}}\n',
    )
    work = victim(tmp_path / "work")
    result = _generate(work, str(recipe), "--limit", "2")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "name" in result.stderr and "plain folder name" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_cli_writes_into_an_empty_folder_and_marks_it(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    result = _generate(tmp_path, str(QUICKSTART), "--limit", "2", "--output", "fresh")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "fresh" / ".synth-output").read_text())["tool"] == "synth"
    assert (tmp_path / "fresh" / "summary.json").is_file() and load_from_disk(str(tmp_path / "fresh")) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]
