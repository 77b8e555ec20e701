"""Hostile or broken recipes and command-line values: one clear error line, never a traceback or a wrong run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from synth.recipe import RecipeError, apply_override, load_recipe
from tests.conftest import write_recipe

HEAD = "source: {path: docs.jsonl}\nsteps:\n  - generate: {name: q, template: query.j2, output: query}\n"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "alpha"}\n')
    return tmp_path


def test_duplicate_yaml_keys_are_refused_not_silently_overwritten(folder: Path) -> None:
    text = HEAD + "llm: {sampling: {temperature: 0.1}}\nllm: {sampling: {temperature: 0.9}}\n"
    with pytest.raises(RecipeError, match=r"duplicate key 'llm' \(line 5\)"):
        load_recipe(write_recipe(folder, text))


def test_a_yaml_alias_bomb_is_refused_quickly(folder: Path) -> None:
    bomb = ["vars:", '  a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghijk"):
        prev = "abcdefghijk"[i]
        bomb.append(f"  {name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    text = HEAD + "\n".join(bomb) + "\n"
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="alias bomb"):
        load_recipe(write_recipe(folder, text))
    assert time.perf_counter() - started < 5


def test_a_non_utf8_recipe_is_one_clear_error(folder: Path) -> None:
    path = folder / "recipe.yaml"
    path.write_bytes(HEAD.encode() + b"description: caf\xe9\n")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/b", "/abs"])
def test_recipe_name_must_be_a_plain_folder_name(folder: Path, name: str) -> None:
    with pytest.raises(RecipeError, match="name: must be a plain folder name"):
        load_recipe(write_recipe(folder, f"name: {name!r}\n" + HEAD))


def test_set_through_a_scalar_or_with_broken_yaml_is_one_clear_error(folder: Path) -> None:
    path = write_recipe(folder, HEAD)
    with pytest.raises(RecipeError, match=r"--set llm.backend.x: llm.backend is a single value"):
        load_recipe(path, ["llm.backend=vllm", "llm.backend.x=1"])
    with pytest.raises(RecipeError, match=r"--set stop: the value is not valid YAML"):
        load_recipe(path, ["stop=[unclosed"])
    data: dict = {"steps": [{"generate": {}}]}
    with pytest.raises(RecipeError, match="no list item '3'"):
        apply_override(data, "steps.3.generate.name=x")


def test_unknown_named_model_is_refused_with_the_known_names(folder: Path) -> None:
    text = HEAD.replace("output: query}", "output: query, llm: judge}") + "llms: {writer: {backend: dry-run}}\n"
    with pytest.raises(RecipeError, match=r"no llm named 'judge' \(known: default, writer\)"):
        load_recipe(write_recipe(folder, text))
