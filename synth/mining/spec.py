"""What a user asks of mining, validated once: `MiningParams`, `Guards`, and the recipe's `MineSpec`.

Why one set of pydantic models: the recipe step, `synth mine` and `mine_dataset` all take these,
so a bad value (a margin of 1.5, range_max <= range_min) fails the same way everywhere, before
any model loads. A `MineSpec` *is* a `MiningParams` and a `Guards` (it inherits their fields and
checks), so the engine takes the spec itself: nothing is copied field by field.
Window and margin semantics: synth/mining/select.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from synth.specs import Strict

# The name each kind of judge gets in teacher scores (`teacher_scores`, the formats' `teacher`).
SCORER_NAMES = {"cross_encoder": "cross_encoder", "llm": "llm_judge"}
FormatName = Literal[
    "triplet", "n-tuple", "labeled-pair", "labeled-list", "flagembedding", "marginmse", "listwise", "pair-score", "beir"
]
FORMAT_NAMES: tuple[str, ...] = get_args(FormatName)  # written by synth/mining/formats.py


class MiningParams(Strict):
    """How negatives are chosen (window, margins, sampling, search); checked up front."""

    num_negatives: int = Field(default=3, ge=1)
    range_min: int = 0  # checked below with range_max: one message for the window
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = Field(default=0, ge=0)  # numpy SeedSequence needs >= 0
    chunk_size: int = Field(default=1024, ge=1)  # queries scored at once
    corpus_chunk: int = Field(default=8192, ge=1)  # corpus rows scored at once
    st_compatible: bool = False  # sentence-transformers' window semantics (see select.py)
    search: Literal["exact", "faiss"] = "exact"  # faiss: approximate candidates, exact scores (synth[faiss])
    nprobe: int = Field(default=16, ge=1)  # faiss IVF clusters visited per query
    # Candidates scoring at least `pos - |pos| * false_negative_margin` are false negatives: never
    # negatives; "promote" makes them extra positives of the query (needs a judge: `rescore`).
    false_negatives: Literal["drop", "promote"] = "drop"
    false_negative_margin: float | None = None  # None: off with "drop", 0.0 with "promote"

    @field_validator("relative_margin")
    @classmethod
    def _relative(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("false_negative_margin")
    @classmethod
    def _false_negative(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v

    @property
    def false_negative_bound(self) -> float | None:
        """The margin below the positive score above which a candidate is a false negative (None: off)."""
        if self.false_negative_margin is None and self.false_negatives == "promote":
            return 0.0
        return self.false_negative_margin

    @field_validator("absolute_margin")
    @classmethod
    def _absolute(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _window(self) -> MiningParams:
        if self.range_min < 0:
            raise ValueError(f"range_min must be >= 0, got {self.range_min}")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(
                f"range_max must be > range_min when set, got range_max={self.range_max}, range_min={self.range_min}"
            )
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score must be <= max_score, got {self.min_score} > {self.max_score}")
        return self

    def st_range_max(self, max_positives: int, rescoring: bool = False) -> int:
        """sentence-transformers' range_max when none is given (its filters need a deeper pool)."""
        if self.range_max is not None:
            return self.range_max
        deep = (
            self.absolute_margin is not None
            or self.relative_margin is not None
            or self.max_score is not None
            or (rescoring and self.min_score is not None)
        )
        return self.range_min + self.num_negatives * (10 if deep else 1) + max_positives

    def pool_size(self, corpus_size: int, n_exclude: int, max_positives: int = 1) -> int:
        """How many top candidates a row needs from the search so every rule sees what it must."""
        if self.st_compatible:
            return min(corpus_size, self.st_range_max(max_positives) + max_positives)
        window = self.range_max if self.range_max is not None else corpus_size
        return min(corpus_size, window + n_exclude)


class Guards(Strict):
    """False-negative guards applied to each window before the margins (None = off)."""

    near_duplicate_ratio: float | None = Field(default=None, gt=0, le=100)  # rapidfuzz ratio to a positive
    near_duplicate_cosine: float | None = Field(default=None, gt=-1, le=1)  # embedding cosine to a positive


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


class MineSpec(Guards, MiningParams):
    """The `mine_negatives` step: margin-filtered hard negatives from an embedder.

    Also what `synth mine` builds from its options, so both fail on the same checks.
    """

    name: str = "mine_negatives"
    query_column: str = "query"
    positive_column: str = "text"
    positive_id_column: str | None = "source_id"
    corpus: Literal["source"] | CorpusSpec = "source"
    min_negatives: int | None = Field(default=None, ge=1)  # rows with fewer are dropped (default num_negatives)
    embedder: str | None = None  # a named embedder of the recipe (`embedders:`); None = `embedder:`
    rescore: Literal["cross_encoder", "llm"] | None = None  # whose scores drive the margins
    cross_encoder: str | None = None  # CrossEncoder model (alias, folder or hub id)
    llm: str | None = None  # the named LLM that judges (rescore/teachers 'llm'); None = the recipe's `llm:`
    judge_template: str = "judge_relevance.j2"  # LLM judge prompt; variables: query, text
    teachers: list[Literal["cross_encoder", "llm"]] = []  # extra soft-label teachers
    fuse: Literal["mean", "rrf"] | None = None  # fuse every teacher into an "ensemble" score
    formats: list[FormatName] = []  # extra files in <output>/<step name>/
    output_scores: bool = False  # scores in the sentence-transformers formats
    teacher: str | None = None  # whose scores the formats export (default: those that drove margins)

    @model_validator(mode="after")
    def _choices(self) -> MineSpec:
        if self.min_negatives is not None and self.min_negatives > self.num_negatives:
            raise ValueError("min_negatives must be <= num_negatives")
        if "cross_encoder" in [self.rescore, *self.teachers] and not self.cross_encoder:
            raise ValueError("rescore/teachers use cross_encoder: set cross_encoder to a model")
        if self.false_negatives == "promote" and self.rescore is None:
            raise ValueError("false_negatives: promote needs a judge: set rescore (cross_encoder or llm)")
        if self.rescore is not None and self.rescore in self.teachers:
            raise ValueError(f"{self.rescore!r} is already the rescorer; do not list it in teachers too")
        known = ["embedder", *(SCORER_NAMES[k] for k in self.scorers), *(["ensemble"] if self.fuse else [])]
        if self.teacher is not None and self.teacher not in known:
            raise ValueError(f"teacher {self.teacher!r} is not one of this step's scores ({', '.join(known)})")
        return self

    @property
    def scorers(self) -> list[str]:
        """The judges this step uses: the rescorer first, then the teachers."""
        return [k for k in [self.rescore, *self.teachers] if k is not None]
