"""The `synth` command as a user runs it: a subprocess, real files. `generate` runs on the test
doubles (`--set llm.backend=dry-run --set embedder.model=hashing`): these tests check the command's
plumbing (exit codes, messages, files); tests/test_resume.py runs `synth generate` on the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from datasets import load_from_disk

from tests.conftest import QUICKSTART, REPO, write_recipe

SYNTH = [sys.executable, "-m", "synth.cli"]


def synth(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNTH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_help_is_instant_and_lists_the_commands() -> None:
    started = time.perf_counter()
    result = synth("--help")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0
    for command in ("generate", "validate", "render", "models"):
        assert command in result.stdout
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, synth.cli; print(sorted({'torch','vllm','datasets','numpy'} & set(sys.modules)))"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert heavy.stdout.strip() == "[]", "synth --help must not import heavy libraries"
    assert elapsed < 5  # generous for loaded CI machines; the import check above is the real guard


def test_broken_recipe_fails_with_the_field_path_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "x"}\n')
    recipe = write_recipe(
        tmp_path,
        "source: {path: d.jsonl}\nsteps:\n  - generate: {name: q, template: query.j2, output: query}\n"
        "  - generate: {name: p, template: paraphrase.j2, output: p}\n  - mine_negatives: {relative_margin: 1.5}\n",
    )
    for command in ("validate", "generate"):
        result = synth(command, str(recipe))
        assert result.returncode != 0
        assert "steps[2].mine_negatives.relative_margin: must be in [0, 1)" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_validate_renders_templates_and_reports_missing_variables(tmp_path: Path) -> None:
    assert synth("validate", str(QUICKSTART)).returncode == 0
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "x"}\n')
    (tmp_path / "ask.j2").write_text("### user\n{{ passage }}")
    recipe = write_recipe(
        tmp_path, "source: {path: d.jsonl}\nsteps:\n  - generate: {name: q, template: ask.j2, output: query}\n"
    )
    result = synth("validate", str(recipe))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "'ask.j2'" in result.stderr and "'passage' is undefined" in result.stderr and "row 0" in result.stderr


def test_render_prints_the_exact_messages() -> None:
    result = synth("render", str(QUICKSTART), "--step", "queries", "--row", "1")
    assert result.returncode == 0, result.stderr
    assert "### system" in result.stdout and "### user" in result.stdout
    first_doc = json.loads((QUICKSTART.parent / "data" / "python_stdlib.jsonl").read_text().splitlines()[1])
    assert first_doc["text"][:40] in " ".join(result.stdout.split())
    bad = synth("render", str(QUICKSTART), "--step", "nope")
    assert bad.returncode != 0 and "no step named 'nope'" in bad.stderr


def test_models_lists_the_aliases() -> None:
    result = synth("models")
    assert result.returncode == 0
    assert "smollm2-135m-instruct" in result.stdout and "all-minilm-l6-v2" in result.stdout


DOUBLES = ("--set", "llm.backend=dry-run", "--set", "embedder.model=hashing")


def test_generate_command_end_to_end(tmp_path: Path) -> None:
    """The README's main command on a few rows, with the test doubles: a real dataset out."""
    out = tmp_path / "qs"
    result = synth(
        "generate", str(QUICKSTART), "--limit", "6", "--output", str(out), "--set", "steps.1.mine_negatives.num_negatives=2",
        *DOUBLES, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synth summary" in result.stdout and str(out) in " ".join(result.stdout.split())
    ds = load_from_disk(str(out))
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(ds) >= 1
    assert (out / "train.jsonl").exists() and (out / "README.md").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["llm"].startswith("dry-run:") and summary["models"]["embedder"].startswith("hashing-")
