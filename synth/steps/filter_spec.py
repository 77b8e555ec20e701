"""Recipe models of the `filter` step: one list of rules, each a mapping with a `rule` key.

Why its own module: the rule specs are many small models; keeping them here keeps recipe.py short.
Why `rule:` as the discriminator: a recipe reads `- {rule: dedup, column: query}`, and a typo in
the rule name fails with the list of rule kinds. Defaults are documented on each field and in
the README; each is chosen to drop obvious junk and keep borderline rows.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Rule(_Strict):
    name: str | None = None  # recorded as `rule` in drop records; defaults to the rule kind

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "rule"))  # noqa: B009 - every subclass has `rule`

    def columns(self) -> list[str]:
        """Row columns this rule reads (checked by `synth validate` before any model loads)."""
        return [getattr(self, "column")]  # noqa: B009 - rules without `column` override this


def compiles(patterns: list[str]) -> list[str]:
    """The patterns, unchanged, once each compiles; else one error naming the bad one."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"bad pattern {p!r}: {e}") from None
    return patterns


class LengthRule(_Rule):
    """Bounds on characters and tokens (inclusive). Tokens are `\\w+` words unless `tokenizer` names a model."""

    rule: Literal["length"]
    column: str = "query"
    min_chars: int | None = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    tokenizer: str = "words"  # or a model alias / folder / hub id with a Hugging Face tokenizer

    @model_validator(mode="after")
    def _bounds(self) -> LengthRule:
        for lo, hi in ((self.min_chars, self.max_chars), (self.min_tokens, self.max_tokens)):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError("a min bound is above its max bound")
        return self


class RegexRule(_Rule):
    """Keep a row only if it matches one `include` pattern (when given) and no `exclude` pattern."""

    rule: Literal["regex"]
    column: str = "query"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return compiles(patterns)

    @model_validator(mode="after")
    def _some(self) -> RegexRule:
        if not self.include and not self.exclude:
            raise ValueError("give `include` and/or `exclude` patterns")
        return self


class ScriptRule(_Rule):
    """Cheap language check: the share of letters written in the allowed scripts (Unicode names)."""

    rule: Literal["script"]
    column: str = "query"
    scripts: list[str] = Field(default_factory=lambda: ["latin"])  # latin, cyrillic, greek, cjk, arabic, ...
    min_share: float = Field(default=0.9, ge=0, le=1)


class DedupRule(_Rule):
    """Exact (after normalising case, spaces, punctuation) and near duplicates; the first row wins."""

    rule: Literal["dedup"]
    column: str = "query"
    threshold: float = Field(default=92.0, gt=0, le=100)  # rapidfuzz ratio; 100 = exact only
    scope: Literal["all", "source"] = "all"  # "source": only within rows of the same source_id
    exhaustive_below: int = Field(default=5000, ge=0)  # compare all pairs below this many rows
    word_guard: bool = True  # near pairs may not swap a content word ('json module' vs 'csv module')


class CopyRule(_Rule):
    """Drop generated text that is mostly a span of its passage (rapidfuzz partial ratio)."""

    rule: Literal["copy"]
    column: str = "query"
    source_column: str = "text"
    threshold: float = Field(default=90.0, gt=0, le=100)  # partial_ratio at or above -> copied
    max_token_overlap: float | None = Field(default=None, gt=0, le=1)  # share of words found in the passage
    min_words: int = Field(default=5, ge=1)  # shorter texts (keyword queries) are never called copies

    def columns(self) -> list[str]:
        return [self.column, self.source_column]


class RoundTripRule(_Rule):
    """Promptagator-style consistency: the query must retrieve its own passage in the top k."""

    rule: Literal["roundtrip"]
    query_column: str = "query"
    positive_column: str = "text"
    id_column: str = "source_id"
    corpus: Literal["source", "positives"] = "source"  # source documents, or the unique positives
    top_k: int = Field(default=3, ge=1)
    embedder: str | None = None  # one of the recipe's `embedders:` (default: the recipe's `embedder:`)
    # GPL-style scale: of the queries that pass, keep per own passage only the K whose passage wins
    # by the largest margin (own score - best other document's score); None keeps every one that passes.
    keep_best_per_source: int | None = Field(default=None, ge=1)
    # faiss: each query scans only the `nprobe` IVF clusters nearest it (linear time on 10^6+
    # documents; needs synth[faiss]); a document in a cluster not probed cannot outrank the passage.
    search: Literal["exact", "faiss"] = "exact"
    nprobe: int = Field(default=16, ge=1)

    def columns(self) -> list[str]:
        return [self.query_column]


class JudgeRule(_Rule):
    """Ask an LLM of the recipe a yes/no question per row; keep rows with P(yes) >= threshold."""

    rule: Literal["judge"]
    column: str = "query"  # the judged text, recorded as `value` in drop records
    template: str = "judge_relevance.j2"
    threshold: float = Field(default=0.5, ge=0, le=1)
    inputs: dict[str, str] = Field(default_factory=dict)  # template variable -> row column
    vars: dict[str, Any] = Field(default_factory=dict)
    yes: list[str] = Field(default_factory=lambda: ["yes"])
    no: list[str] = Field(default_factory=lambda: ["no"])
    top_logprobs: int = Field(default=5, ge=1, le=20)
    llm: str | None = None  # one of the recipe's `llms:` (default: the recipe's `llm:`)

    def columns(self) -> list[str]:
        return [self.column, *self.inputs.values()]  # the template's own variables are checked when it renders


class RepetitionRule(_Rule):
    """Drop degenerate text that repeats itself ("liver cells liver cells liver cells").

    The score is the share of word n-grams that repeat an earlier n-gram of the same text
    (0: every n-gram is new; 0.8: mostly loops), the signal Gopher-style quality filters use.
    """

    rule: Literal["repetition"]
    column: str = "query"
    n: int = Field(default=2, ge=1, le=5)  # n-gram size in words
    max_share: float = Field(default=0.3, gt=0, le=1)  # drop at or above this share of repeated n-grams


class LeakageRule(_Rule):
    """Drop replies that copy the prompt's few-shot example instead of answering about the passage.

    Small models often echo the example answer ("honey shelf life ..."). The rule renders the
    step's template for the row, takes its few-shot answers (its assistant turns, or the lines
    after `answer_prefix`), and measures the share of the reply's words that come from an example
    but not from the passage.
    """

    rule: Literal["leakage"]
    column: str = "query"
    template: str  # the template the column was generated with (its assistant turns are the examples)
    source_column: str = "text"  # the passage: words found there are not leakage
    max_share: float = Field(default=0.5, gt=0, le=1)  # drop at or above this share of leaked words
    min_leaked_words: int = Field(default=2, ge=1)  # fewer leaked words than this never count as leakage
    # A reply that opens with this many words of an example answer, none of them in the passage, is
    # an echo with a real query glued on ("honey shelf life bacteria gemcitabine erlotinib ..."); None: off.
    prefix_words: int | None = Field(default=3, ge=1)
    vars: dict[str, Any] = Field(default_factory=dict)  # extra template variables (as the generate step's)
    # A plain-text few-shot template (a base model's, e.g. query_inpars.j2) has no assistant turns:
    # its examples are the rest of each rendered line that starts with this cue ("Query:").
    answer_prefix: str | None = None

    def columns(self) -> list[str]:
        return [self.column, self.source_column]


class TruncatedRule(_Rule):
    """Drop replies the LLM stopped because they hit `max_tokens` (finish reason `length`).

    A cut reply is a fragment (half a question, a claim without its verb), and a small model
    mostly hits the cap when it loops. The generate step records each reply's finish reason in
    `<step>_finish_reason`; rows whose reason is `unknown` (older cached replies) are kept.
    """

    rule: Literal["truncated"]
    step: str  # the generate step whose replies are checked (its `<step>_finish_reason` column)
    column: str = "query"  # the generated text, recorded as `value` in drop records
    reasons: list[str] = Field(default_factory=lambda: ["length"], min_length=1)  # finish reasons that drop

    @property
    def finish_column(self) -> str:
        return f"{self.step}_finish_reason"

    def columns(self) -> list[str]:
        return [self.finish_column, self.column]


# Phrases by which a reply talks about the prompt instead of asking about the passage, as SmolLM2-135M
# writes them ("Why is the answer to this question not answered by the given passage?", "honey - 2 to 6
# words:", "building on the above."). Case-insensitive regular expressions.
META_PHRASES = [
    r"\b(this|given|above|following) (passage|text|article|abstract|document|question|answer|query|keywords?)\b",
    r"\bthe (passage|above|given|following)\b",
    r"\b\d+ (to|-) \d+ words\b",
    r"\bhere(\s+is|\s+are|'s)\b",
    r"^\W*(sure|certainly|okay)\b",
    r"^\W*(question|query|answer|keywords?|search query|passage|title)\s*:",
    r"\bas an ai\b",
]


class QueryLikeRule(_Rule):
    """Drop replies that are not a query at all, by two literal checks (no model).

    `meta_reply`: the reply talks about the prompt (`meta_phrases`), unless the passage itself
    contains the phrase. `lead_in`: it ends with a colon, the head of a list the stop string cut off.
    Measured (benchmarks/filter_rules_real.py): 0 of the 3,237 real NFCorpus queries flagged; 4 of
    120 SmolLM2-135M replies to the shipped query template: 3 meta replies and one keyword query
    with a trailing colon (the one arguable drop).
    """

    rule: Literal["querylike"]
    column: str = "query"
    source_column: str | None = "text"  # the passage: a phrase it contains is not meta talk
    meta_phrases: list[str] = Field(default_factory=lambda: list(META_PHRASES))
    lead_in: bool = True

    @field_validator("meta_phrases")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return compiles(patterns)

    def columns(self) -> list[str]:
        return [self.column, *([self.source_column] if self.source_column else [])]


Rule = Annotated[
    LengthRule
    | RegexRule
    | ScriptRule
    | DedupRule
    | CopyRule
    | RepetitionRule
    | LeakageRule
    | TruncatedRule
    | QueryLikeRule
    | RoundTripRule
    | JudgeRule,
    Field(discriminator="rule"),
]


class FilterSpec(_Strict):
    """Run rules in order; each sees only the rows the previous rules kept."""

    name: str = "filter"
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_labels(self) -> FilterSpec:
        labels = [r.label for r in self.rules]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"rules share the name(s) {dup}: give each a distinct `name`")
        return self
