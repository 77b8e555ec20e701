"""GPL-style scale: several queries per passage, the best kept per passage by the round-trip margin
(literal scores, the hashing embedder, a whole recipe on the doubles), and the row-local quality rules
streamed shard by shard with every column their template reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synth.steps.filter import FilterStep
from synth.steps.filter_roundtrip import group_positions
from synth.steps.filter_spec import FilterSpec
from tests.conftest import make_ctx, write_recipe

DOCS = [
    {"id": "json", "text": "The json module encodes and decodes JSON, a lightweight data interchange format used by web APIs."},
    {"id": "pickle", "text": "The pickle module serializes Python objects to bytes, a format only Python reads; never unpickle untrusted data."},
    {"id": "socket", "text": "Low-level networking interface: BSD sockets, TCP and UDP connections over IP for servers."},
]  # fmt: skip


def run(rules: list[dict[str, Any]], rows: list[dict[str, Any]], embedder: Any) -> Any:
    step = FilterStep(FilterSpec.model_validate({"name": "best", "rules": rules}))
    return step(rows, make_ctx(DOCS, embedder=embedder))  # type: ignore[arg-type]


def test_best_per_group_keeps_the_k_highest_and_ties_go_to_the_earlier_row() -> None:
    groups, scores = [0, 0, 0, 1, 1, 2], [0.1, 0.3, 0.3, -0.2, 0.05, -0.5]
    positions = group_positions(np.asarray(groups), np.asarray(scores))
    assert (positions < 1).tolist() == [False, True, False, False, True, True]
    assert (positions < 2).tolist() == [False, True, True, True, True, True]
    assert group_positions(np.zeros(0, np.int64), np.zeros(0)).tolist() == []


def test_keep_best_per_source_prefers_the_query_that_singles_out_its_passage(hashing_embedder: Any) -> None:
    rows = [
        {"query": "the json module a format", "source_id": "json"},  # highest own score, but pickle scores high too
        {"query": "decodes json", "source_id": "json"},  # lower own score, nothing else close: largest margin
        {"query": "the module a format", "source_id": "json"},  # pickle ranks above its own passage
        {"query": "the pickle module a format", "source_id": "pickle"},
        {"query": "serializes python objects", "source_id": "pickle"},
        {"query": "tcp udp sockets", "source_id": "socket"},
    ]
    rule = {"rule": "roundtrip", "top_k": 3, "keep_best_per_source": 1}
    result = run([rule], rows, hashing_embedder)
    assert [r["query"] for r in result.rows] == ["decodes json", "serializes python objects", "tcp udp sockets"]
    assert all(r["roundtrip_rank"] == 1 and r["roundtrip_margin"] > 0 for r in result.rows)
    assert [d["reason"] for d in result.dropped] == ["roundtrip_not_best"] * 3
    first = result.dropped[0]
    assert first["value"] == "the json module a format" and first["best_query"] == "decodes json"
    assert first["margin"] < first["best_margin"] and first["keep_best_per_source"] == 1
    # without the option every row that passes the round trip is kept, each with its margin
    everything = run([{"rule": "roundtrip", "top_k": 3}], rows, hashing_embedder)
    assert len(everything.rows) == 6 and everything.rows[2]["roundtrip_margin"] < 0
    two = run([{**rule, "keep_best_per_source": 2}], rows, hashing_embedder)
    assert [r["query"] for r in two.rows] == [r["query"] for r in rows[:2] + rows[3:]]
    # a miss is a miss before any choosing: top_k 1 drops the row whose passage is not first
    strict = run([{**rule, "top_k": 1}], rows, hashing_embedder)
    assert sorted(d["reason"] for d in strict.dropped) == ["roundtrip_miss"] + ["roundtrip_not_best"] * 2


def test_keep_best_per_source_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keep_best_per_source"):
        FilterSpec.model_validate({"rules": [{"rule": "roundtrip", "keep_best_per_source": 0}]})


def write_docs(folder: Path, rows: list[dict[str, Any]]) -> None:
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_a_recipe_samples_several_queries_per_passage_and_keeps_the_best(
    tmp_path: Path, dry_backend: Any, hashing_embedder: Any
) -> None:
    """generate n=3 x 2 styles -> truncated, repetition, leakage, querylike, dedup, roundtrip keep-best -> export."""
    from datasets import load_from_disk

    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    write_docs(tmp_path, DOCS)
    text = """
source: {path: docs.jsonl}
llm: {sampling: {max_tokens: 6, stop: ["\\n"]}}
steps:
  - generate:
      {name: queries, template: query.j2, output: query, each: {style: [question, keywords]}, sampling: {n: 3}}
  - filter:
      name: quality
      rules:
        - {rule: length, min_chars: 3}
        - {rule: truncated, step: queries}
        - {rule: repetition}
        - {rule: leakage, template: query.j2}
        - {rule: querylike}
        - {rule: dedup, scope: source}
        - {rule: roundtrip, top_k: 3, keep_best_per_source: 1}
"""
    recipe, recipe_dir = load_recipe(write_recipe(tmp_path, text))
    out = tmp_path / "out"
    result = run_recipe(recipe, recipe_dir, output_dir=out, llm=dry_backend, embedder=hashing_embedder)
    quality = next(r for r in result.reports if r.name == "quality")
    assert quality.rows_in == 18 and quality.rows_out + sum(quality.dropped.values()) == 18
    assert quality.dropped.get("truncated", 0) > 0 and quality.dropped.get("roundtrip_not_best", 0) > 0
    details = load_from_disk(str(out / "details"))
    assert len(details) == quality.rows_out == len(set(details["source_id"])), "one query per passage"
    assert set(details["queries_finish_reason"]) == {"stop"} and min(details["roundtrip_margin"]) > -1
    dropped = [r for r in load_from_disk(str(out / "dropped")) if r["step"] == "quality"]
    assert {r["reason"] for r in dropped} >= {"truncated", "roundtrip_not_best"}


@pytest.mark.parametrize("before", [[], [{"rule": "dedup"}]], ids=["streamed", "after-a-global-rule"])
def test_leakage_sees_the_rows_style_when_streamed_and_after_a_global_rule(
    tmp_path: Path, before: list[dict[str, Any]], dry_backend: Any, hashing_embedder: Any
) -> None:
    """The leakage rule renders the generate template for each row: the `style` column picks the example.

    A keyword reply that copies the keywords example must be caught whether the rule runs shard by
    shard or over all rows after a corpus-aware rule (which is handed only the columns it reads).
    """
    from synth.recipe import load_recipe
    from synth.runner import run_recipe

    passage = "Hepatocytes make up most of the liver's mass and regulate glucose, lipids and detoxification."
    write_docs(
        tmp_path,
        [
            {"id": "a", "text": passage, "style": "keywords", "query": "honey shelf life bacteria"},
            {"id": "b", "text": passage, "style": "keywords", "query": "liver glucose regulation"},
        ],
    )
    rules = json.dumps([*before, {"rule": "leakage", "template": "query.j2"}])
    text = f"source: {{path: docs.jsonl}}\nsteps:\n  - filter: {{name: quality, rules: {rules}}}\n"
    recipe, recipe_dir = load_recipe(write_recipe(tmp_path, text))
    result = run_recipe(recipe, recipe_dir, output_dir=tmp_path / "out", llm=dry_backend, embedder=hashing_embedder)
    quality = next(r for r in result.reports if r.name == "quality")
    assert quality.dropped == {"fewshot_leak": 1} and quality.rows_out == 1
