"""Rules for the failure modes of small generators, on literal replies seen from SmolLM2-135M."""

from __future__ import annotations

from typing import Any

import pytest

from synth.prompts import PromptLibrary
from synth.steps.filter import FilterStep, leaked_words, repeated_share
from synth.steps.filter_spec import FilterSpec
from tests.conftest import make_ctx

LIVER = "Hepatocytes make up most of the liver's mass and regulate glucose, lipids and detoxification."


def run(rules: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Any:
    step = FilterStep(FilterSpec.model_validate({"name": "clean", "rules": rules}))
    return step([dict(r, source_id=f"d{i}") for i, r in enumerate(rows)], make_ctx(prompts=PromptLibrary(None)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("liver cells liver cells liver cells liver cells", 0.7143),
        ("liver liver liver liver liver", 0.75),
        ("what regulates glucose in liver cells", 0.0),
        ("liver", 0.0),
        ("", 0.0),
    ],
)
def test_repeated_share_of_word_bigrams(text: str, share: float) -> None:
    assert repeated_share(text, 2) == share


def test_repetition_rule_drops_loops_and_keeps_queries() -> None:
    rows = [
        {"query": "liver cells liver cells liver cells liver cells liver cells liver cells", "text": LIVER},
        {"query": "how do hepatocytes regulate glucose", "text": LIVER},
        {"query": "liver glucose liver lipids", "text": LIVER},  # a repeated word, but no repeated bigram: kept
    ]
    result = run([{"rule": "repetition"}], rows)
    assert [r["query"] for r in result.rows] == [rows[1]["query"], rows[2]["query"]]
    [dropped] = result.dropped
    assert dropped["reason"] == "repetitive" and dropped["rule"] == "repetition" and dropped["repeated_share"] >= 0.8


def test_leaked_words_come_from_the_example_and_not_the_passage() -> None:
    examples = ["honey shelf life bacteria"]
    assert leaked_words("honey shelf life bacteria", examples, LIVER) == ["honey", "shelf", "life", "bacteria"]
    # words the passage itself contains are never leakage, even when the example has them too
    assert leaked_words("liver bacteria detoxification", examples, LIVER + " bacteria") == []


def test_leakage_rule_drops_a_copied_few_shot_answer_and_keeps_real_queries() -> None:
    rows = [
        {"query": "honey shelf life bacteria", "text": LIVER},  # the template's example answer, verbatim
        {"query": "honey shelf life liver", "text": LIVER},  # 3 of 4 words from the example
        {"query": "liver glucose regulation", "text": LIVER},
        {"query": "honey liver glucose lipids", "text": LIVER},  # one leaked word: below min_leaked_words
    ]
    result = run([{"rule": "leakage", "template": "query_keywords.j2"}], rows)
    assert [r["query"] for r in result.rows] == ["liver glucose regulation", "honey liver glucose lipids"]
    assert [d["reason"] for d in result.dropped] == ["fewshot_leak", "fewshot_leak"]
    assert result.dropped[0]["leaked_share"] == 1.0 and result.dropped[0]["examples"] == ["honey shelf life bacteria"]


def test_leakage_rule_follows_the_each_value_of_the_row() -> None:
    rows = [{"query": "Why does honey never spoil?", "text": LIVER, "style": "question"}]
    result = run([{"rule": "leakage", "template": "query.j2"}], rows)
    assert result.rows == [] and result.dropped[0]["examples"] == ["Why does honey never spoil?"]
