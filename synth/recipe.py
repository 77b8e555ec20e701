"""Recipe: the pydantic models of what a user writes, loading, overrides and readable errors.

Why pydantic with extra="forbid": a typo in a recipe (`temprature`) must fail before any model
loads, with the field path, instead of being silently ignored after an hour of generation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from synth.filter_spec import FilterSpec
from synth.models import DEFAULT_EMBEDDER, DEFAULT_LLM


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeError(ValueError):
    """A recipe problem, already formatted for the user (one line per problem, no traceback)."""


class SourceSpec(Strict):
    """Where the input texts come from. Paths are relative to the recipe file."""

    path: Path
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text", "dataset"] = "auto"
    text_column: str = "text"
    id_column: str | None = "id"
    limit: int | None = Field(default=None, ge=1)


class SamplingSpec(Strict):
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=96, ge=1)
    n: int = Field(default=1, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


API_ONLY_FIELDS = (
    "base_url",
    "api_key_env",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout",
    "max_retries",
)


class LLMSpec(Strict):
    backend: Literal["vllm", "openai"] = "vllm"
    model: str = DEFAULT_LLM  # backend openai: the server's model name
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=2048, ge=128)
    batch_size: int = Field(default=512, ge=1)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # backend openai (any OpenAI-compatible server); see synth/backends/openai.py
    base_url: str | None = None  # default https://api.openai.com/v1
    api_key_env: str | None = None  # NAME of the env var holding the key (default OPENAI_API_KEY)
    max_concurrency: int = Field(default=32, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=120.0, gt=0)  # seconds per request
    max_retries: int = Field(default=6, ge=0)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # Never echo the value: a pasted key must not end up in an error message.
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the NAME of an environment variable holding the key, not the key")
        return v

    @model_validator(mode="after")
    def _api_fields(self) -> LLMSpec:
        if self.backend != "openai":
            misplaced = [f for f in API_ONLY_FIELDS if f in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: only used with backend: openai")
        return self


class EmbedderSpec(Strict):
    model: str = DEFAULT_EMBEDDER
    batch_size: int = Field(default=64, ge=1)
    device: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None


class SamplingOverrides(Strict):
    """Per-step sampling changes; unset fields fall back to `llm.sampling`."""

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    seed: int | None = None


class GenerateSpec(Strict):
    """Render a template per row, ask the LLM, parse the reply into new column(s)."""

    name: str
    template: str
    output: str | list[str]
    parser: Literal["text", "lines", "json", "regex"] = "text"
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    max_items: int | None = Field(default=None, ge=1)
    guided: bool = True
    vars: dict[str, Any] = Field(default_factory=dict)
    each: dict[str, list[Any]] = Field(default_factory=dict)
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)

    @model_validator(mode="after")
    def _parser_needs(self) -> GenerateSpec:
        if self.parser == "regex" and not self.pattern:
            raise ValueError("parser 'regex' needs `pattern`")
        if isinstance(self.output, list) and self.parser not in ("json", "regex"):
            raise ValueError("a list of output columns needs parser 'json' or 'regex' (dict values)")
        for key, values in self.each.items():
            if not values:
                raise ValueError(f"each.{key}: needs at least one value")
        return self


class CorpusSpec(Strict):
    """Documents to mine negatives from: a column of the current rows, or a file."""

    column: str | None = None
    path: Path | None = None
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text", "dataset"] = "auto"
    text_column: str = "text"
    id_column: str | None = "id"

    @model_validator(mode="after")
    def _one_of(self) -> CorpusSpec:
        if (self.column is None) == (self.path is None):
            raise ValueError("give exactly one of `column` or `path`")
        return self


class MineSpec(Strict):
    """Margin-filtered hard negatives from an embedder (semantics in synth/mining.py)."""

    name: str = "mine_negatives"
    query_column: str = "query"
    positive_column: str = "text"
    positive_id_column: str | None = "source_id"
    corpus: Literal["source"] | CorpusSpec = "source"
    num_negatives: int = Field(default=3, ge=1)
    min_negatives: int | None = Field(default=None, ge=1)
    range_min: int = Field(default=0, ge=0)
    range_max: int | None = Field(default=None, ge=1)
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 0
    chunk_size: int = Field(default=1024, ge=1)
    st_compatible: bool = False  # sentence-transformers' window semantics (see synth/mining.py)
    # False-negative guards, rescoring, teachers and extra formats (synth/mine_engine.py).
    near_duplicate_ratio: float | None = Field(default=None, gt=0, le=100)  # rapidfuzz ratio to a positive
    near_duplicate_cosine: float | None = Field(default=None, gt=-1, le=1)  # embedding cosine to a positive
    rescore: Literal["cross_encoder", "llm"] | None = None  # whose scores drive the margins
    cross_encoder: str | None = None  # CrossEncoder model (alias, folder or hub id)
    judge_template: str = "judge_relevance.j2"  # LLM judge prompt; variables: query, text
    teachers: list[Literal["cross_encoder", "llm"]] = []  # extra soft-label teachers
    fuse: Literal["mean", "rrf"] | None = None  # fuse every teacher into an "ensemble" score
    formats: list[
        Literal["triplet", "n-tuple", "labeled-pair", "labeled-list", "flagembedding", "marginmse", "beir"]
    ] = []  # extra files in <output>/<step name>/
    output_scores: bool = False  # scores in the sentence-transformers formats
    teacher: str | None = None  # whose scores the formats export (default: those that drove margins)
    search: Literal["exact", "faiss"] = "exact"  # faiss: approximate candidates, exact scores (synth[faiss])
    nprobe: int = Field(default=16, ge=1)  # faiss IVF clusters visited per query

    @field_validator("relative_margin")
    @classmethod
    def _relative(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("absolute_margin")
    @classmethod
    def _absolute(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> MineSpec:
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError("range_max must be greater than range_min")
        if self.min_score is not None and self.max_score is not None:
            if self.min_score > self.max_score:
                raise ValueError("min_score must be <= max_score")
        if self.min_negatives is not None and self.min_negatives > self.num_negatives:
            raise ValueError("min_negatives must be <= num_negatives")
        if "cross_encoder" in [self.rescore, *self.teachers] and not self.cross_encoder:
            raise ValueError("rescore/teachers use cross_encoder: set cross_encoder to a model")
        if self.rescore is not None and self.rescore in self.teachers:
            raise ValueError(f"{self.rescore!r} is already the rescorer; do not list it in teachers too")
        return self


class GenerateStep(Strict):
    generate: GenerateSpec


class MineStep(Strict):
    mine_negatives: MineSpec


class FilterStep(Strict):
    filter: FilterSpec


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return None


Step = Annotated[
    Annotated[GenerateStep, Tag("generate")]
    | Annotated[MineStep, Tag("mine_negatives")]
    | Annotated[FilterStep, Tag("filter")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step is one key: `generate`, `mine_negatives` or `filter`",
    ),
]


class ColumnsSpec(Strict):
    """Which row columns become the sentence-transformers anchor/positive/negatives."""

    anchor: str = "query"
    positive: str = "text"
    negatives: list[str] = Field(default_factory=list)  # e.g. an LLM-written negative; placed before mined ones


class OutputSpec(Strict):
    dir: Path | None = None  # default: outputs/<recipe name>
    formats: list[Literal["jsonl", "parquet"]] = Field(default_factory=list)
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec)


class Recipe(Strict):
    name: str | None = None
    description: str = ""
    source: SourceSpec
    llm: LLMSpec = Field(default_factory=LLMSpec)
    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    steps: list[Step] = Field(min_length=1)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        seen: set[str] = set()
        for step in self.steps:
            name = step_spec(step).name
            if name in seen:
                raise ValueError(f"duplicate step name {name!r}")
            seen.add(name)
        return self


def step_spec(step: GenerateStep | MineStep | FilterStep) -> GenerateSpec | MineSpec | FilterSpec:
    if isinstance(step, FilterStep):
        return step.filter
    return step.generate if isinstance(step, GenerateStep) else step.mine_negatives


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
    value = yaml.safe_load(raw) if raw != "" else ""
    node: Any = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}: no list item {part!r}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {key}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    recipe.source.path = fix(recipe.source.path)  # type: ignore[assignment]
    for step in recipe.steps:
        spec = step_spec(step)
        if isinstance(spec, MineSpec) and isinstance(spec.corpus, CorpusSpec):
            spec.corpus.path = fix(spec.corpus.path)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Parse, override and validate a recipe; returns it with the recipe's folder.

    Output dirs stay relative to the working directory (like any CLI's -o); input paths resolve
    against the recipe file so a recipe runs from anywhere.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
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
    _resolve_paths(recipe, base)
    return recipe, base
