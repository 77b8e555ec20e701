"""Recipe: the pydantic models of what a user writes, loading, overrides and readable errors.

Why pydantic with extra="forbid": a typo in a recipe (`temprature`) must fail before any model
loads, with the field path, instead of being silently ignored after an hour of generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from synth.export import plain_name
from synth.export_layout import DEFAULT_FORMAT as DEFAULT_INSTRUCTION_FORMAT
from synth.export_layout import Layout
from synth.publish import PushSpec
from synth.specs import EmbedderSpec, LLMSpec, SamplingSpec, SourceSpec, Strict
from synth.steps import STEP_KINDS

__all__ = ["EmbedderSpec", "LLMSpec", "Recipe", "RecipeError", "SamplingSpec", "SourceSpec", "load_recipe"]


class RecipeError(ValueError):
    """A recipe problem, already formatted for the user (one line per problem, no traceback)."""


class StepEntry(Strict):
    """One item of `steps:`: a mapping with exactly one key, the step kind (see synth/steps/__init__.py)."""

    @property
    def kind(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    if isinstance(value, StepEntry):
        return value.kind
    return None


def _step_union() -> Any:
    """The `steps:` item schema, built from the step registry: a new kind needs no edit here."""
    entries = tuple(
        Annotated[create_model(f"{key}_entry", __base__=StepEntry, **{key: (kind.spec_type, ...)}), Tag(key)]
        for key, kind in STEP_KINDS.items()
    )
    names = [f"`{k}`" for k in STEP_KINDS]
    keys = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    return Annotated[
        Union[entries],  # noqa: UP007 - a runtime-built union
        Discriminator(_step_kind, custom_error_type="step_kind", custom_error_message=f"a step is one key: {keys}"),
    ]


StepItem = _step_union()


class ColumnsSpec(Strict):
    """Which row columns become the sentence-transformers anchor/positive/negatives (and score, instruction)."""

    anchor: str = "query"
    positive: str = "text"
    negatives: list[str] = Field(default_factory=list)  # e.g. an LLM-written negative; placed before mined ones
    score: str | None = None  # exported as a float `score` column (CoSENTLoss / CosineSimilarityLoss)
    instruction: str | None = None  # each row's task instruction: prefixes anchors (synth/export_layout.py)
    instruction_format: str = DEFAULT_INSTRUCTION_FORMAT  # "{instruction}" is replaced by the row's instruction

    def layout(self) -> Layout:
        return Layout(score=self.score, instruction=self.instruction, instruction_format=self.instruction_format)


class OutputSpec(Strict):
    dir: Path | None = None  # default: outputs/<recipe name>
    formats: list[Literal["jsonl", "parquet"]] = Field(default_factory=list)
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec)
    push_to_hub: PushSpec | None = None  # OWNER/NAME or {repo_id, private, token_env}: publish after each run


class Recipe(Strict):
    name: str | None = None  # the default output folder's name: a plain folder name
    description: str = ""
    source: SourceSpec
    llm: LLMSpec = Field(default_factory=LLMSpec)  # the default LLM (named "default")
    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)  # the default embedder (named "default")
    llms: dict[str, LLMSpec] = Field(default_factory=dict)  # more LLMs, picked by a step's `llm: NAME`
    embedders: dict[str, EmbedderSpec] = Field(default_factory=dict)  # more embedders, `embedder: NAME`
    steps: list[StepItem] = Field(min_length=1)
    output: OutputSpec = Field(default_factory=OutputSpec)
    # A step whose sent requests failed more than this share stops the run (exit != 0), keeping the old output.
    max_failed_share: float = Field(default=0.5, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        return v if v is None else plain_name(v)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        seen: set[str] = set()
        for step in self.steps:
            name = step.spec.name
            if name in seen:
                raise ValueError(f"duplicate step name {name!r}")
            seen.add(name)
        return self

    @model_validator(mode="after")
    def _known_models(self) -> Recipe:
        for what, declared in (("llm", self.llms), ("embedder", self.embedders)):
            if DEFAULT_MODEL in declared:
                raise ValueError(f"{what}s: {DEFAULT_MODEL!r} is the name of the top-level `{what}:`; pick another")
        for step in self.steps:
            for what, name in model_refs(step.spec):
                declared = self.llms if what == "llm" else self.embedders
                if name not in declared and name != DEFAULT_MODEL:
                    known = ", ".join([DEFAULT_MODEL, *declared])
                    raise ValueError(f"step {step.spec.name!r}: no {what} named {name!r} (known: {known})")
        return self

    def llm_spec(self, name: str | None) -> LLMSpec:
        return self.llm if name in (None, DEFAULT_MODEL) else self.llms[name]

    def embedder_spec(self, name: str | None) -> EmbedderSpec:
        return self.embedder if name in (None, DEFAULT_MODEL) else self.embedders[name]


DEFAULT_MODEL = "default"


def model_refs(spec: BaseModel) -> list[tuple[str, str]]:
    """(`llm` | `embedder`, name) for every named-model reference inside a step spec (rules included)."""
    refs: list[tuple[str, str]] = []
    for field_name in type(spec).model_fields:
        value = getattr(spec, field_name)
        if field_name in ("llm", "embedder") and isinstance(value, str):
            refs.append((field_name, value))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                refs.extend(model_refs(item))
    return refs


def format_location(loc: tuple[int | str, ...]) -> str:
    """('steps', 2, 'mine_negatives', 'mine_negatives', 'relative_margin') -> steps[2].mine_negatives.relative_margin"""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts and parts[-1] == f".{item}":
            continue  # pydantic repeats the union tag before the field of the same name
        elif item.startswith("function-") or item in ("CorpusSpec",):
            continue
        else:
            parts.append(f".{item}")
    return "".join(parts).lstrip(".") or "recipe"


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{format_location(e['loc'])}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """`llm.sampling.temperature=0.2` -> data['llm']['sampling']['temperature'] = 0.2 (YAML-typed)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {key}: the value is not valid YAML ({_yaml_problem(e)})") from None
    node: Any = data
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}: no list item {part!r} at {where}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if parts[depth + 1].isdigit() else {})
        else:
            raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])} is a single value, not a mapping or list")


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Make every input path of the recipe (source, step corpora, ...) absolute, relative to the recipe file."""
    for field_name in type(model).model_fields:
        value = getattr(model, field_name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(model, field_name, (base / value).resolve())
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                _resolve_paths(item, base)


def input_paths(recipe: Recipe) -> list[Path]:
    """Every file or folder the recipe reads (an output may not overlap any of them)."""
    found: list[Path] = []

    def walk(model: BaseModel) -> None:
        for field_name in type(model).model_fields:
            value = getattr(model, field_name)
            if isinstance(value, Path):
                found.append(value)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, BaseModel):
                    walk(item)

    walk(recipe.source)
    for step in recipe.steps:
        walk(step.spec)
    return found


MAX_RECIPE_BYTES = 1_000_000
MAX_YAML_NODES = 200_000  # values after expanding aliases; an alias bomb expands to billions


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (shared nodes counted per use)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += _expanded_size(child, memo)
            if total > MAX_YAML_NODES:
                break
        memo[id(node)] = total
    return memo[id(node)]


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML silently keeps the last) and alias bombs."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES} values through aliases (an alias bomb?)")
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(e: yaml.YAMLError) -> str:
    return " ".join(str(e).split())


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Parse, override and validate a recipe; returns it with the recipe's folder.

    Output dirs stay relative to the working directory (like any CLI's -o); input paths resolve
    against the recipe file so a recipe runs from anywhere.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES // 1000} kB; a recipe is a short YAML file")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with source, llm, embedder, steps, output")
    for assignment in overrides or []:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e)) from None
    base = path.parent.resolve()
    _resolve_paths(recipe.source, base)
    for step in recipe.steps:
        _resolve_paths(step.spec, base)
    return recipe, base
