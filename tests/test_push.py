"""`synth push`: an output folder as a Hub dataset repository (configs, card, report), token from the env only.

The Hub is unreachable here, so pushes go to `LocalFolderRepository`, a real implementation of the
upload interface that records exactly what would be uploaded; `datasets.load_dataset` then reads
that folder the way it reads a Hub repository (the card's `configs:` decide what each config is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset, load_from_disk

from synth.publish import (
    LocalFolderRepository,
    PushError,
    PushSpec,
    push_output,
    push_with_spec,
    token_from_env,
)
from tests.conftest import REPO, write_recipe

SECRET = "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123"


RECIPE = f"""
name: qs
source: {{path: {REPO / "recipes" / "data" / "python_stdlib.jsonl"}, limit: 8}}
llm: {{backend: dry-run}}
embedder: {{model: hashing}}
steps:
  - generate: {{name: queries, template: query.j2, each: {{style: [question, keywords]}}, output: query, parser: text}}
  - filter: {{name: short, rules: [{{rule: length, column: query, max_chars: 50}}]}}
  - mine_negatives: {{name: negatives, query_column: query, positive_column: text, num_negatives: 2}}
"""


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, dry_backend, hashing_embedder) -> Path:  # type: ignore[no-untyped-def]
    """A small recipe on the test doubles (a filter drops the longer queries): a real output folder in seconds."""
    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    folder = tmp_path_factory.mktemp("push")
    recipe, recipe_dir = load_recipe(write_recipe(folder, RECIPE))
    out = folder / "qs"
    result = run_recipe(recipe, recipe_dir, output_dir=out, llm=dry_backend, embedder=hashing_embedder, use_cache=False)
    assert result.rows and result.dropped, "the fixture needs kept and dropped rows"
    return out


def _hub_load(repo: Path, config: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A config of the repository as `load_dataset(repo_id, config)` reads it (a fresh datasets cache)."""
    return load_dataset(str(repo), config, split="train", cache_dir=str(tmp_path / f"hf-cache-{config}"))


def _header(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def test_push_uploads_the_dataset_details_and_dropped_as_configs_with_card_and_report(
    output: Path, tmp_path: Path
) -> None:
    hub = LocalFolderRepository(tmp_path / "hub")
    url = push_output(output, "someone/quickstart-queries", hub, private=True)
    repo = hub.path("someone/quickstart-queries")
    assert url == repo.resolve().as_uri()
    files = hub.files("someone/quickstart-queries")
    for name in ("README.md", "report.md", "report.html", "summary.json", "recipe.yaml", "dropped.jsonl"):
        assert name in files
    for folder in ("data", "details", "dropped"):
        assert f"{folder}/train-00000-of-00001.parquet" in files
    plots = sorted(p.name for p in (output / "plots").iterdir())
    assert plots and all(f"plots/{p}" in files for p in plots)
    assert not any(n.endswith(".arrow") or n.startswith("logs/") or n == ".synth-output" for n in files)
    assert json.loads((repo / ".hub-repo.json").read_text())["private"] is True
    (commit,) = hub.commits("someone/quickstart-queries")
    assert commit["added"] == files and commit["deleted"] == []
    assert commit["message"].startswith("synth: qs (")

    # The repository loads as the Hub would load it: each config from the card's `configs:`.
    train = _hub_load(repo, "default", tmp_path)
    assert train.to_list() == load_from_disk(str(output)).to_list()
    details = _hub_load(repo, "details", tmp_path)
    assert details.to_list() == load_from_disk(str(output / "details")).to_list()
    dropped = _hub_load(repo, "dropped", tmp_path)
    assert dropped.to_list() == load_from_disk(str(output / "dropped")).to_list()
    assert {d["step"] for d in dropped} == {"short"}


def test_the_card_declares_the_configs_and_keeps_its_header_and_text(output: Path, tmp_path: Path) -> None:
    hub = LocalFolderRepository(tmp_path / "hub")
    push_output(output, "someone/qs", hub)
    readme = hub.path("someone/qs") / "README.md"
    header = _header(readme)
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]},
        {"config_name": "details", "data_files": [{"split": "train", "path": "details/train-*"}]},
        {"config_name": "dropped", "data_files": [{"split": "train", "path": "dropped/train-*"}]},
    ]
    local = _header(output / "README.md")
    assert {k: v for k, v in header.items() if k != "configs"} == local, "the card's own metadata is kept"
    text = readme.read_text()
    assert 'load_dataset("someone/qs", split="train")' in text
    assert 'load_dataset("someone/qs", "details", split="train")  # every column' in text
    assert text.index("## Load it from the Hub") < text.index("## Use it")
    body = (output / "README.md").read_text().split("\n---\n", 1)[1]
    assert body.split("## Use it", 1)[1] in text, "the rest of the card is unchanged"


def test_a_second_push_replaces_synth_files_and_keeps_the_others(output: Path, tmp_path: Path) -> None:
    hub = LocalFolderRepository(tmp_path / "hub")
    push_output(output, "someone/qs", hub)
    repo = hub.path("someone/qs")
    (repo / "data" / "train-00001-of-00002.parquet").write_bytes(b"stale shard of an older push")
    (repo / "notes.md").write_text("written by hand on the Hub")
    push_output(output, "someone/qs", hub, private=True)
    files = hub.files("someone/qs")
    assert "data/train-00001-of-00002.parquet" not in files and "notes.md" in files
    first, second = hub.commits("someone/qs")
    assert second["deleted"] == ["data/train-00001-of-00002.parquet"]
    assert json.loads((repo / ".hub-repo.json").read_text())["private"] is False, "exist_ok keeps the settings"
    assert len(_hub_load(repo, "default", tmp_path)) == len(load_from_disk(str(output)))


def test_only_a_synth_output_and_a_valid_repository_id_are_pushed(output: Path, tmp_path: Path) -> None:
    hub = LocalFolderRepository(tmp_path / "hub")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PushError, match="not an output folder written by `synth generate`"):
        push_output(tmp_path / "plain", "someone/qs", hub)
    empty = tmp_path / "empty"
    shutil.copytree(output, empty, ignore=shutil.ignore_patterns("*.arrow", "dataset_info.json", "state.json"))
    load_from_disk(str(output)).select([]).save_to_disk(str(tmp_path / "no-rows"), num_shards=1)
    for path in (tmp_path / "no-rows").iterdir():
        shutil.copyfile(path, empty / path.name)
    with pytest.raises(PushError, match="has no training rows: nothing to publish"):
        push_output(empty, "someone/qs", hub)
    for bad in ("qs", "someone/", "a/b/c", "someone/../x", "-x/y", "x/y z"):
        with pytest.raises(PushError, match="must be OWNER/NAME"):
            push_output(output, bad, hub)
    assert not (tmp_path / "hub").exists(), "nothing is created for a refused push"


def test_the_token_comes_from_the_named_environment_variable_only() -> None:
    assert token_from_env("HF_TOKEN", {"HF_TOKEN": " tok "}) == "tok"
    assert token_from_env("MY_HUB_TOKEN", {"MY_HUB_TOKEN": "tok2", "HF_TOKEN": "other"}) == "tok2"
    with pytest.raises(PushError) as missing:
        token_from_env("MY_HUB_TOKEN", {"HF_TOKEN": "other"})
    assert str(missing.value).startswith("no Hugging Face token: the environment variable MY_HUB_TOKEN is not set")
    with pytest.raises(PushError) as pasted:
        token_from_env(SECRET, {SECRET: "x"})
    assert SECRET not in str(pasted.value) and "NAME of an environment variable" in str(pasted.value)
    with pytest.raises(PushError, match="not an environment variable name"):
        token_from_env("HF-TOKEN", {})


def test_recipe_push_spec_reads_the_shorthand_and_refuses_a_pasted_token(output: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from synth.recipe import format_validation_error

    spec = PushSpec.model_validate("someone/qs")
    assert (spec.repo_id, spec.private, spec.token_env) == ("someone/qs", False, "HF_TOKEN")
    spec = PushSpec.model_validate({"repo_id": "someone/qs", "private": True, "token_env": "TEAM_TOKEN"})
    assert spec.private and spec.token_env == "TEAM_TOKEN"
    with pytest.raises(ValidationError) as pasted:
        PushSpec.model_validate({"repo_id": "someone/qs", "token_env": SECRET})
    shown = format_validation_error(pasted.value)  # what a recipe error prints
    assert "token_env: token_env takes the NAME of an environment variable" in shown and SECRET not in shown
    with pytest.raises(ValidationError, match="must be OWNER/NAME"):
        PushSpec.model_validate("no-owner")
    with pytest.raises(ValidationError):
        PushSpec.model_validate({"repo_id": "someone/qs", "token": "x"})
    hub = LocalFolderRepository(tmp_path / "hub")
    push_with_spec(output, PushSpec.model_validate({"repo_id": "someone/qs", "private": True}), hub)
    assert json.loads((hub.path("someone/qs") / ".hub-repo.json").read_text())["private"] is True


def _push(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", "push", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def test_push_command_to_a_folder_and_its_one_line_errors(output: Path, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    done = _push(str(output), "someone/qs", "--private", "--to-folder", str(tmp_path / "hub"), env=base)
    assert done.returncode == 0, done.stderr
    assert "pushed" in done.stdout and "someone/qs" in " ".join(done.stdout.split())
    hub = LocalFolderRepository(tmp_path / "hub")
    assert "data/train-00000-of-00001.parquet" in hub.files("someone/qs")
    assert json.loads((hub.path("someone/qs") / ".hub-repo.json").read_text())["private"] is True

    no_token = _push(str(output), "someone/qs", env=base)
    assert no_token.returncode == 1 and "Traceback" not in no_token.stderr
    assert "no Hugging Face token: the environment variable HF_TOKEN is not set" in no_token.stderr
    other = _push(str(output), "someone/qs", "--token-env", "TEAM_TOKEN", env={**base, "HF_TOKEN": SECRET})
    assert "the environment variable TEAM_TOKEN is not set" in other.stderr

    offline = _push(str(output), "someone/qs", env={**base, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "HF_HUB_OFFLINE is set" in offline.stderr
    for result in (no_token, other, offline):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert SECRET not in result.stdout + result.stderr, "the token is never printed"


def test_a_recipe_with_push_to_hub_publishes_after_its_run(tmp_path: Path, dry_backend, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    text = RECIPE + "output: {push_to_hub: {repo_id: someone/qs, private: true, token_env: SYNTH_TEST_NO_SUCH_TOKEN}}\n"
    recipe, recipe_dir = load_recipe(write_recipe(tmp_path, text))
    assert recipe.output.push_to_hub == PushSpec(
        repo_id="someone/qs", private=True, token_env="SYNTH_TEST_NO_SUCH_TOKEN"
    )
    with pytest.raises(PushError, match="SYNTH_TEST_NO_SUCH_TOKEN is not set"):  # before any work is paid for
        run_recipe(recipe, recipe_dir, output_dir=tmp_path / "first", llm=dry_backend, embedder=hashing_embedder)
    assert not (tmp_path / "first").exists()

    hub = LocalFolderRepository(tmp_path / "hub")
    out = tmp_path / "qs"
    run_recipe(recipe, recipe_dir, output_dir=out, llm=dry_backend, embedder=hashing_embedder, hub=hub)
    assert "data/train-00000-of-00001.parquet" in hub.files("someone/qs")
    assert json.loads((hub.path("someone/qs") / ".hub-repo.json").read_text())["private"] is True
    assert _hub_load(hub.path("someone/qs"), "default", tmp_path).to_list() == load_from_disk(str(out)).to_list()


def test_a_failed_push_after_a_run_says_the_output_is_written_and_how_to_retry(output: Path, tmp_path: Path) -> None:
    class Refusing(LocalFolderRepository):
        """A Hub that refuses uploads (as a read-only token would): a real repository that says no."""

        def upload_folder(self, repo_id: str, folder: Path, *, commit_message: str, delete_patterns: list[str]) -> str:
            raise PushError(f"uploading to {repo_id} failed: 403 Forbidden")

    spec = PushSpec(repo_id="someone/qs", private=True)
    with pytest.raises(PushError) as failed:
        push_with_spec(output, spec, Refusing(tmp_path / "hub"))
    assert str(failed.value) == (
        f"uploading to someone/qs failed: 403 Forbidden; the output is written at {output}: "
        f"push it again with `synth push {output} someone/qs --private`"
    )
