"""Filter rules on hand-made rows with known answers; round-trip on real MiniLM; the judge's
scores on the real LLM, its plumbing (threshold, drops, cache, a whole recipe) on the test doubles."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from synth.backends import Completion
from synth.dedup import find_duplicates, same_words
from synth.parsers import yes_probability
from synth.recipe import RecipeError, load_recipe
from synth.steps.base import StepContext
from synth.steps.filter import FilterStep, copy_scores, script_share
from synth.steps.filter_spec import FilterSpec
from tests.conftest import make_ctx, write_recipe

PASSAGE = (
    "The json module encodes and decodes JSON, a lightweight data interchange format. "
    "It exposes an API familiar to users of the marshal and pickle modules."
)


def ctx(documents: list[dict[str, Any]] | None = None, llm: Any = None, embedder: Any = None) -> StepContext:
    return make_ctx(documents, llm=llm, embedder=embedder)  # type: ignore[return-value]


def p_yes(top: dict[str, float], yes: list[str], no: list[str]) -> float | None:
    return yes_probability(Completion(texts=["x"], logprobs=[[top]]), yes, no)


def run(rules: list[dict[str, Any]], rows: list[dict[str, Any]], context: StepContext | None = None):  # type: ignore[no-untyped-def]
    step = FilterStep(FilterSpec.model_validate({"name": "clean", "rules": rules}))
    return step([dict(r, source_id=r.get("source_id", f"d{i}")) for i, r in enumerate(rows)], context or ctx())


def kept(result: Any, column: str = "query") -> list[str]:
    return [r[column] for r in result.rows]


def reasons(result: Any) -> list[str]:
    return [d["reason"] for d in result.dropped]


def test_length_bounds_in_chars_count_code_points_and_ignore_outer_space() -> None:
    rows = [{"query": q} for q in ["", "   ", "ok", "naïve café", "🙂🙂🙂", "x" * 100_000, "a fine query"]]
    result = run([{"rule": "length", "min_chars": 3, "max_chars": 50}], rows)
    assert kept(result) == ["naïve café", "🙂🙂🙂", "a fine query"]
    assert reasons(result) == ["too_short", "too_short", "too_short", "too_long"]
    long_drop = result.dropped[-1]
    assert long_drop["rule"] == "length" and long_drop["step"] == "clean"
    assert long_drop["measured"] == 100_000 and long_drop["bound"] == 50 and long_drop["unit"] == "chars"


def test_length_in_tokens_with_words_and_with_a_real_tokenizer() -> None:
    rows = [{"query": "json"}, {"query": "how to parse json in python"}, {"query": "a b c d e f g h i j k"}]
    words = run([{"rule": "length", "min_tokens": 2, "max_tokens": 8}], rows)
    assert kept(words) == ["how to parse json in python"]
    assert reasons(words) == ["too_few_tokens", "too_many_tokens"]
    # MiniLM's WordPiece splits "unbelievably" into several pieces: 1 word, > 1 token.
    rule = {"rule": "length", "min_tokens": 2, "tokenizer": "all-minilm-l6-v2"}
    result = run([rule], [{"query": "unbelievably"}, {"query": "hello"}])
    assert kept(result) == ["unbelievably"] and result.dropped[0]["measured"] == 1


def test_regex_include_and_exclude_record_the_pattern() -> None:
    rows = [
        {"query": q} for q in ["Why is JSON fast?", "Passage: copied text", "json speed", "Warum ist JSON schnell?"]
    ]
    result = run([{"rule": "regex", "exclude": ["(?i)^passage:"], "include": [r"\?$", r"^\w+ \w+$"]}], rows)
    assert kept(result) == ["Why is JSON fast?", "json speed", "Warum ist JSON schnell?"]
    assert result.dropped[0]["reason"] == "regex_excluded" and result.dropped[0]["pattern"] == "(?i)^passage:"
    assert run([{"rule": "regex", "include": ["^why"]}], rows).dropped[0]["reason"] == "regex_not_included"


def test_script_rule_drops_replies_in_another_script_and_keeps_letterless_text() -> None:
    assert script_share("Why is JSON fast?", ["latin"]) == 1.0
    assert script_share("12345 ?!", ["latin"]) is None
    rows = [
        {"query": q} for q in ["Почему JSON быстрый?", "为什么JSON很快", "Why is JSON fast?", "2024", "crème brûlée"]
    ]
    result = run([{"rule": "script"}], rows)
    assert kept(result) == ["Why is JSON fast?", "2024", "crème brûlée"]
    assert reasons(result) == ["wrong_script", "wrong_script"]
    assert result.dropped[0]["share"] == pytest.approx(4 / 17, abs=1e-3)  # 4 Latin letters (JSON) of 17
    assert kept(run([{"rule": "script", "scripts": ["latin", "cyrillic"]}], rows[:1])) == [rows[0]["query"]]


def test_dedup_exact_after_normalising_and_near_duplicates_first_row_wins() -> None:
    queries = [
        "How does the csv module work?",
        "how does the CSV module work",  # exact after case + punctuation
        "How does the csv module works?",  # near: spelling variant
        "What is the purpose of the json module?",
        "What is the purpose of the csv module?",  # 93% alike by characters, but another query
        "Why is the sky blue?",
        "Why is the sky so blue?",  # near: one inserted word
        "",
        "",  # empty strings are exact duplicates of each other
        "Почему небо голубое?",
        "почему небо голубое",
    ]
    result = run([{"rule": "dedup", "threshold": 92}], [{"query": q} for q in queries])
    assert kept(result) == [queries[i] for i in (0, 3, 4, 5, 7, 9)]
    assert reasons(result) == [
        "exact_duplicate",
        "near_duplicate",
        "near_duplicate",
        "exact_duplicate",
        "exact_duplicate",
    ]
    near = result.dropped[1]
    assert near["duplicate_of"] == queries[0] and 92 <= near["score"] < 100 and near["rule"] == "dedup"
    unguarded = run([{"rule": "dedup", "threshold": 92, "word_guard": False}], [{"query": q} for q in queries[3:5]])
    assert reasons(unguarded) == ["near_duplicate"]
    assert same_words("how does it work", "how does it works") and not same_words("the json module", "the csv module")


def test_dedup_scope_source_only_compares_rows_of_the_same_document() -> None:
    rows = [
        {"query": "what is json", "source_id": "a"},
        {"query": "what is json", "source_id": "b"},
        {"query": "what is json", "source_id": "a"},
    ]
    result = run([{"rule": "dedup", "scope": "source"}], rows)
    assert [r["source_id"] for r in result.rows] == ["a", "b"]
    assert result.dropped[0]["duplicate_of_source_id"] == "a"


def perturb(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text))
    return text[:i] + rng.choice("aeiou") + text[i + 1 :]


def test_minhash_blocking_finds_what_the_exhaustive_comparison_finds() -> None:
    rng = random.Random(0)
    words = "json csv socket thread queue heap zip gzip path file parse encode decode list dict".split()
    base = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 9))) + f" {i}" for i in range(800)]
    texts = base + [perturb(t, rng) for t in base[:300]]
    rng.shuffle(texts)
    exact, stats_exact = find_duplicates(texts, 90, exhaustive_below=10**9, word_guard=False)
    lsh, stats_lsh = find_duplicates(texts, 90, exhaustive_below=0, word_guard=False)
    assert stats_exact.exhaustive and not stats_lsh.exhaustive
    assert stats_lsh.candidate_pairs < stats_exact.candidate_pairs / 20
    found_exact = {(d.index, d.of) for d in exact}
    found_lsh = {(d.index, d.of) for d in lsh}
    assert len(found_exact) >= 290  # the 300 perturbed copies (a few became exact or drifted below 90)
    assert all(d.score >= 90 for d in lsh), "every candidate is verified with the real ratio"
    assert len(found_lsh & found_exact) >= 0.95 * len(found_exact)


def test_copy_rule_drops_spans_of_the_passage_and_keeps_short_keyword_queries() -> None:
    long_passage = ("filler sentence about nothing in particular. " * 2000) + PASSAGE
    rows = [
        {"query": "The json module encodes and decodes JSON, a lightweight data interchange format", "text": PASSAGE},
        {"query": "json module", "text": PASSAGE},  # a span, but only 2 words: a fine keyword query
        {"query": "How do I turn Python objects into JSON text?", "text": PASSAGE},
        {"query": "it exposes an API familiar to users of the marshal and pickle modules", "text": long_passage},
        {"query": "some generated question with no passage at all", "text": ""},
        {"query": "Le module json encode et décode du JSON, un format d'échange léger", "text": PASSAGE},
    ]
    result = run([{"rule": "copy"}], rows)
    assert kept(result) == [rows[i]["query"] for i in (1, 2, 4, 5)]
    assert reasons(result) == ["copied_from_source", "copied_from_source"]
    assert all(d["partial_ratio"] >= 90 for d in result.dropped)
    ratio, overlap = copy_scores(rows[2]["query"], PASSAGE)
    assert ratio < 90 and overlap < 0.5
    shuffled = {"query": "pickle and marshal users decode the lightweight json format", "text": PASSAGE}
    by_overlap = run([{"rule": "copy", "max_token_overlap": 0.8}], [shuffled, rows[2]])
    assert reasons(by_overlap) == ["copied_words_from_source"] and by_overlap.dropped[0]["token_overlap"] >= 0.8


def test_rules_compose_in_order_and_every_drop_names_step_rule_reason_and_values() -> None:
    rows = [{"query": q, "text": PASSAGE} for q in ["json module", "json module", "x", "How do I parse JSON?"]]
    result = run([{"rule": "length", "min_chars": 2}, {"rule": "dedup", "name": "dedup_q"}], rows)
    assert kept(result) == ["json module", "How do I parse JSON?"]
    assert result.stats == {"length": {"rows_in": 4, "rows_out": 3}, "dedup_q": {"rows_in": 3, "rows_out": 2}}
    assert [(d["step"], d["rule"], d["reason"]) for d in result.dropped] == [
        ("clean", "length", "too_short"),
        ("clean", "dedup_q", "exact_duplicate"),
    ]
    assert all(d["value"] is not None and d["column"] == "query" and d["source_id"] for d in result.dropped)
    with pytest.raises(ValueError, match="rule 'length': no column 'title'"):
        run([{"rule": "length", "column": "title"}], rows)


def test_recipe_accepts_a_filter_step_and_reports_bad_rules_with_their_path(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "alpha"}\n')
    head = "source: {path: docs.jsonl}\nsteps:\n  - generate: {name: q, template: query.j2, output: query}\n"
    good = head + "  - filter: {rules: [{rule: length, max_chars: 200}, {rule: dedup}, {rule: judge}]}\n"
    recipe, _ = load_recipe(write_recipe(tmp_path, good))
    spec = recipe.steps[1].spec
    assert isinstance(spec, FilterSpec) and [r.label for r in spec.rules] == ["length", "dedup", "judge"]
    for bad, message in [
        ("[{rule: dedupe}]", r"steps\[1\]\.filter\.rules\[0\]: .*'dedupe'.*'judge'"),
        ("[{rule: regex, exclude: ['(']}]", r"rules\[0\]\.regex\.exclude: bad pattern"),
        ("[{rule: dedup}, {rule: dedup}]", "distinct `name`"),
        ("[{rule: length, min_chars: 9, max_chars: 3}]", "min bound"),
    ]:
        with pytest.raises(RecipeError, match=message):
            load_recipe(write_recipe(tmp_path, head + f"  - filter: {{rules: {bad}}}\n"))
    with pytest.raises(RecipeError, match="`filter`"):
        load_recipe(write_recipe(tmp_path, head + "  - filtre: {rules: []}\n"))


def test_roundtrip_keeps_queries_that_retrieve_their_own_passage(embedder: Any) -> None:
    docs = [
        {"id": "json", "text": PASSAGE},
        {"id": "socket", "text": "Low-level networking interface: BSD sockets, TCP and UDP connections."},
        {"id": "heapq", "text": "Heap queue algorithm, also known as the priority queue algorithm."},
        {"id": "zlib", "text": "Compression compatible with gzip: compress and decompress byte strings."},
    ]
    rows = [
        {"query": "encode python objects as json", "source_id": "json", "text": PASSAGE},
        {"query": "open a tcp connection", "source_id": "socket", "text": docs[1]["text"]},
        {"query": "open a tcp connection", "source_id": "heapq", "text": docs[2]["text"]},  # wrong passage
        {"query": "anything", "source_id": "missing", "text": "not in the corpus"},
    ]
    result = run([{"rule": "roundtrip", "top_k": 1}], rows, ctx(docs, embedder=embedder))
    assert kept(result) == ["encode python objects as json", "open a tcp connection"]
    assert [r["roundtrip_rank"] for r in result.rows] == [1, 1]
    miss, missing = result.dropped
    assert miss["reason"] == "roundtrip_miss" and miss["rank"] > 1 and miss["top_document"] == "socket"
    assert miss["top_score"] > miss["positive_score"]
    assert missing["reason"] == "positive_not_in_corpus"
    loose = run([{"rule": "roundtrip", "top_k": 4}], rows[2:3], ctx(docs, embedder=embedder))
    assert len(loose.rows) == 1
    # corpus: positives ranks against the rows' unique positive texts instead of the source documents
    positives = run([{"rule": "roundtrip", "top_k": 1, "corpus": "positives"}], rows[:3], ctx(embedder=embedder))
    assert kept(positives) == ["encode python objects as json", "open a tcp connection"]
    assert positives.dropped[0]["top_document"].startswith("Low-level networking")


def test_p_yes_reads_yes_and_no_from_top_logprobs() -> None:
    assert p_yes({" Yes": -0.1, "No": -2.5, "The": -3.0}, ["yes"], ["no"]) == pytest.approx(0.9168, abs=1e-3)
    assert p_yes({"yes.": -1.0, "YES": -1.0, "no": -1.0}, ["yes"], ["no"]) == pytest.approx(2 / 3)
    assert p_yes({"The": -0.1, "A": -1.0}, ["yes"], ["no"]) is None


JUDGED = [
    {"query": "how do I encode python objects as json", "text": PASSAGE},
    {"query": "what is the boiling point of water at sea level", "text": PASSAGE},
]


def test_the_real_llm_judge_scores_a_relevant_query_above_an_irrelevant_one(vllm_backend: Any) -> None:
    """What the real model does (the plumbing is tested on the dry-run backend below)."""
    rows = JUDGED
    context = ctx(llm=vllm_backend)
    scored = run([{"rule": "judge", "threshold": 0.0}], rows, context)
    assert len(scored.rows) == 2 and scored.usage.requests == 2 and scored.usage.prompt_tokens > 0
    relevant, irrelevant = (r["judge_score"] for r in scored.rows)
    assert 0.0 <= irrelevant < relevant <= 1.0, (relevant, irrelevant)
    strict = run([{"rule": "judge", "threshold": (relevant + irrelevant) / 2}], rows, context)
    assert kept(strict) == [rows[0]["query"]]
    assert strict.dropped[0]["reason"] == "judge_rejected" and strict.dropped[0]["p_yes"] == irrelevant


def test_judge_threshold_drop_records_and_unscored_replies_on_the_dry_run_backend(dry_backend: Any) -> None:
    """The judge's plumbing: scores, the threshold, what a drop records, and no pass without a score."""
    rows = JUDGED
    context = ctx(llm=dry_backend)
    scored = run([{"rule": "judge", "threshold": 0.0}], rows, context)
    assert len(scored.rows) == 2 and scored.usage.requests == 2 and scored.usage.prompt_tokens > 0
    scores = [r["judge_score"] for r in scored.rows]
    assert all(0.0 < s < 1.0 for s in scores) and scores[0] != scores[1], scores
    high, low = max(scores), min(scores)
    strict = run([{"rule": "judge", "threshold": (high + low) / 2}], rows, context)
    assert kept(strict) == [rows[scores.index(high)]["query"]] and strict.rows[0]["judge_score"] == high
    assert (strict.usage.requests, strict.usage.cache_hits) == (2, 0), "no cache in this context: sent again"
    assert strict.dropped[0]["reason"] == "judge_rejected" and strict.dropped[0]["p_yes"] == low
    assert strict.dropped[0]["value"] == rows[scores.index(low)]["query"] and strict.dropped[0]["rule"] == "judge"
    unscorable = run([{"rule": "judge", "yes": ["zzqx"], "no": ["qqzx"], "threshold": 0.0}], rows, context)
    assert unscorable.rows == [] and reasons(unscorable) == ["judge_unscored", "judge_unscored"]
    assert json.dumps(unscorable.dropped[0]["top_logprobs"]) != "{}"
    assert all(d["raw"] in ("yes", "no") for d in unscorable.dropped), "scored None although the reply said yes/no"


def test_a_recipe_with_a_filter_step_runs_end_to_end(tmp_path: Path, dry_backend: Any, hashing_embedder: Any) -> None:
    """Generate -> every rule -> mine -> export, on the test doubles: counts, drop records, columns, report."""
    from datasets import load_from_disk

    from synth.runner import run_recipe

    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"id": i, "text": t})
            for i, t in [
                ("json", PASSAGE),
                ("socket", "Low-level networking interface: BSD sockets, TCP and UDP connections over IP."),
                ("heapq", "Heap queue algorithm, also known as the priority queue algorithm, on plain lists."),
                ("zlib", "Compression compatible with gzip: compress and decompress byte strings in memory."),
            ]
        )
    )
    text = """
source: {path: docs.jsonl}
llm: {sampling: {max_tokens: 32, stop: ["\\n"]}}
steps:
  - generate: {name: queries, template: query.j2, output: query, each: {style: [question, keywords]}}
  - filter:
      name: clean
      rules:
        - {rule: length, min_chars: 3, max_chars: 200}
        - {rule: dedup}
        - {rule: copy}
        - {rule: roundtrip, top_k: 2}
        - {rule: judge, threshold: 0.0}
  - mine_negatives: {name: negatives, num_negatives: 1}
"""
    recipe, recipe_dir = load_recipe(write_recipe(tmp_path, text))
    out = tmp_path / "out"
    result = run_recipe(recipe, recipe_dir, output_dir=out, llm=dry_backend, embedder=hashing_embedder)
    clean = next(r for r in result.reports if r.name == "clean")
    assert clean.kind == "filter" and clean.rows_in == 8
    assert clean.rows_out + sum(clean.dropped.values()) == clean.rows_in
    details = load_from_disk(str(out / "details"))
    assert len(details) == clean.rows_out > 0, "rows reached the output"
    assert all(0.0 <= s <= 1.0 for s in details["judge_score"]) and set(details["roundtrip_rank"]) <= {1, 2}
    dropped = load_from_disk(str(out / "dropped"))
    filter_drops = [r for r in dropped if r["step"] == "clean"]
    assert len(filter_drops) == sum(clean.dropped.values())
    assert all(r["rule"] in {"length", "dedup", "copy", "roundtrip", "judge"} and r["values"] for r in filter_drops)
    assert "| clean | filter |" in (out / "report.md").read_text()


def test_judge_replies_come_from_the_request_cache_on_a_rerun(dry_backend: Any, tmp_path: Path) -> None:
    from synth.cache import RequestCache

    rows = [{"query": "how do I encode python objects as json", "text": PASSAGE}]
    cache = RequestCache(tmp_path / "requests.sqlite")
    context = make_ctx(llm=dry_backend, cache=cache)
    first = run([{"rule": "judge", "threshold": 0.0}], rows, context)  # type: ignore[arg-type]
    context = make_ctx(llm=NoEngine(dry_backend), cache=cache)  # a second run must not need the LLM at all
    second = run([{"rule": "judge", "threshold": 0.0}], rows, context)  # type: ignore[arg-type]
    assert (first.usage.requests, first.usage.cache_hits) == (1, 0)
    assert (second.usage.requests, second.usage.cache_hits) == (0, 1)
    assert second.rows[0]["judge_score"] == first.rows[0]["judge_score"]
    cache.close()


class NoEngine:
    """A backend with the real one's identity that fails if asked anything: proves a run needed no LLM."""

    def __init__(self, real: Any) -> None:
        self.kind, self.model_id = real.kind, real.model_id

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this run must be served from the cache")

    def close(self) -> None:
        pass
