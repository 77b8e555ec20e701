"""Recipe errors name the field path and the problem, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.mining.spec import MineSpec
from synth.recipe import RecipeError, apply_override, load_recipe
from synth.steps.generate import GenerateSpec
from tests.conftest import QUICKSTART, write_recipe

DOCS = '{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "docs.jsonl").write_text(DOCS)
    return tmp_path


def errors_of(folder: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(folder, text), overrides)
    return str(info.value)


def test_quickstart_recipe_loads_with_paths_relative_to_the_recipe() -> None:
    recipe, base = load_recipe(QUICKSTART)
    assert recipe.name == "quickstart"
    assert recipe.source.path == QUICKSTART.parent / "data" / "python_stdlib.jsonl"
    assert base == QUICKSTART.parent
    kinds = [type(s.spec).__name__ for s in recipe.steps]
    assert kinds == ["GenerateSpec", "MineSpec"]


def test_relative_margin_out_of_range_names_the_step_path(folder: Path) -> None:
    text = """
source: {path: docs.jsonl}
steps:
  - generate: {name: q, template: query.j2, output: query}
  - generate: {name: p, template: paraphrase.j2, output: para}
  - mine_negatives: {relative_margin: 1.5}
"""
    assert errors_of(folder, text) == "steps[2].mine_negatives.relative_margin: must be in [0, 1)"


def test_unknown_field_and_missing_field(folder: Path) -> None:
    text = """
llm: {sampling: {temprature: 0.3}}
steps:
  - generate: {name: q, template: query.j2, output: query}
"""
    message = errors_of(folder, text)
    assert "source: required field is missing" in message
    assert "llm.sampling.temprature: unknown field" in message


def test_unknown_step_kind(folder: Path) -> None:
    text = "source: {path: docs.jsonl}\nsteps:\n  - summarise: {name: s}\n"
    assert (
        errors_of(folder, text)
        == "steps[0]: a step is one key: `generate`, `mine_negatives`, `filter`, `map` or `similarity`"
    )


def test_regex_parser_needs_a_pattern_and_ranges_are_checked(folder: Path) -> None:
    text = """
source: {path: docs.jsonl}
steps:
  - generate: {name: q, template: query.j2, output: query, parser: regex}
  - mine_negatives: {range_min: 5, range_max: 3, num_negatives: 0}
"""
    message = errors_of(folder, text)
    assert "steps[0].generate: parser 'regex' needs `pattern`" in message
    assert "steps[1].mine_negatives.num_negatives: Input should be greater than or equal to 1" in message


def test_duplicate_step_names(folder: Path) -> None:
    text = """
source: {path: docs.jsonl}
steps:
  - generate: {name: q, template: query.j2, output: query}
  - generate: {name: q, template: query.j2, output: query2}
"""
    assert "duplicate step name 'q'" in errors_of(folder, text)


def test_not_yaml_and_not_a_mapping(folder: Path) -> None:
    assert "not valid YAML" in errors_of(folder, "source: [unclosed")
    assert "a recipe is a YAML mapping" in errors_of(folder, "- just\n- a list\n")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_set_overrides_are_yaml_typed_and_reach_steps() -> None:
    recipe, _ = load_recipe(
        QUICKSTART,
        ["llm.sampling.temperature=0.2", "steps.1.mine_negatives.num_negatives=5", "output.formats=[parquet]"],
    )
    assert recipe.llm.sampling.temperature == 0.2
    mine = recipe.steps[1].spec
    assert isinstance(mine, MineSpec) and mine.num_negatives == 5
    assert recipe.output.formats == ["parquet"]
    assert isinstance(recipe.steps[0].spec, GenerateSpec)


def test_set_override_errors() -> None:
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(QUICKSTART, ["llm.sampling.temperature"])
    with pytest.raises(RecipeError, match="no list item '9'"):
        load_recipe(QUICKSTART, ["steps.9.generate.name=x"])
    with pytest.raises(RecipeError, match="must be in \\[0, 1\\)"):
        load_recipe(QUICKSTART, ["steps.1.mine_negatives.relative_margin=2"])


def test_apply_override_creates_nested_mappings() -> None:
    data: dict = {}
    apply_override(data, "embedder.batch_size=8")
    assert data == {"embedder": {"batch_size": 8}}
