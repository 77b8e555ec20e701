"""Rules for the failure modes of small generators, on literal replies seen from SmolLM2-135M; the finish
reason's way from each backend (dry-run, an OpenAI-compatible server, the real vLLM engine) and the request
cache to the `truncated` rule."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from synth.prompts import PromptLibrary
from synth.steps.filter import FilterStep
from synth.steps.filter_quality import echoed_prefix, leaked_words, repeated_share
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


def test_leakage_rule_reads_a_plain_text_templates_examples_after_its_answer_prefix() -> None:
    """query_inpars.j2 (for base models such as gemma3-270m) is one user message: its few-shot answers
    follow `Query:`. Without `answer_prefix` the rule would see no example and drop nothing, so
    validation names it. The leaked replies are Gemma 3 270M's own, from the issue-18 benchmark."""

    rows = [
        {"query": "great wall visible from orbit", "text": LIVER, "style": "keywords"},
        {"query": "vitamin d winter deficiency", "text": LIVER, "style": "keywords"},
        {"query": "liver glucose regulation", "text": LIVER, "style": "keywords"},
    ]
    rule = {"rule": "leakage", "template": "query_inpars.j2", "answer_prefix": "Query:"}
    result = run([rule], rows)
    assert [r["query"] for r in result.rows] == ["liver glucose regulation"]
    assert [d["reason"] for d in result.dropped] == ["fewshot_leak", "fewshot_leak"]
    assert "great wall visible from orbit" in result.dropped[0]["examples"] and len(result.dropped[0]["examples"]) == 3
    step = FilterStep(FilterSpec.model_validate({"name": "quality", "rules": [{**rule, "answer_prefix": None}]}))
    [problem] = step.problems(rows[0], PromptLibrary(None))
    assert "shows no few-shot answer" in problem and "answer_prefix" in problem
    assert (
        FilterStep(FilterSpec.model_validate({"name": "q", "rules": [rule]})).problems(rows[0], PromptLibrary(None))
        == []
    )


# --- truncated replies: the finish reason travels from the backend (or the cache) to a row column ---


def test_truncated_rule_drops_replies_cut_at_max_tokens_and_keeps_unknown_ones() -> None:
    rows = [
        {"query": "what regulates glucose in", "queries_finish_reason": "length", "text": LIVER},
        {"query": "what regulates glucose in liver cells?", "queries_finish_reason": "stop", "text": LIVER},
        {"query": "liver glucose lipids", "queries_finish_reason": "unknown", "text": LIVER},  # older cache entry
        {"query": "liver detoxification", "queries_finish_reason": None, "text": LIVER},
    ]
    result = run([{"rule": "truncated", "step": "queries"}], rows)
    assert [r["query"] for r in result.rows] == [r["query"] for r in rows[1:]]
    [cut] = result.dropped
    assert (cut["reason"], cut["rule"], cut["value"]) == ("truncated", "truncated", "what regulates glucose in")
    assert cut["finish_reason"] == "length" and cut["finish_column"] == "queries_finish_reason"
    other = run([{"rule": "truncated", "step": "queries", "reasons": ["length", "content_filter"]}], rows)
    assert len(other.rows) == 3


def test_truncated_rule_names_a_missing_finish_column_and_needs_a_step() -> None:
    with pytest.raises(ValueError, match="step"):
        FilterSpec.model_validate({"rules": [{"rule": "truncated"}]})
    with pytest.raises(ValueError, match="no column 'qs_finish_reason'"):
        run([{"rule": "truncated", "step": "qs"}], [{"query": "x", "queries_finish_reason": "stop"}])


def generate(backend: Any, max_tokens: int, n: int = 1, cache: Any = None) -> Any:
    from synth.recipe import SamplingSpec
    from synth.steps.generate import GenerateSpec, GenerateStep

    spec = GenerateSpec(name="queries", template="query_keywords.j2", output="query", sampling={"n": n})
    sampling = SamplingSpec(max_tokens=max_tokens, stop=[])
    extra = "It also stores glycogen, makes bile, albumin, urea and clotting factors, and clears drugs."
    rows = [{"id": f"d{k}", "text": f"{LIVER} {extra} Part {k}."} for k in range(4)]
    return GenerateStep(spec)(rows, make_ctx(llm=backend, sampling=sampling, cache=cache))  # type: ignore[arg-type]


def test_generate_records_each_samples_finish_reason_and_the_rule_drops_the_cut_ones(dry_backend: Any) -> None:
    # the dry-run backend answers 3-8 words and cuts at max_tokens words: some replies end, some are cut
    result = generate(dry_backend, max_tokens=5, n=3)
    reasons = [r["queries_finish_reason"] for r in result.rows]
    assert set(reasons) == {"stop", "length"} and len(reasons) == 12
    assert all(len(r["query"].split()) == 5 for r in result.rows if r["queries_finish_reason"] == "length")
    filtered = run([{"rule": "truncated", "step": "queries"}], result.rows)
    assert len(filtered.rows) == reasons.count("stop") and len(filtered.dropped) == reasons.count("length")


def test_cached_replies_keep_their_finish_reason_and_old_entries_read_as_unknown(
    dry_backend: Any, tmp_path: Path
) -> None:
    import json

    from synth.cache import RequestCache
    from tests.test_filters import NoEngine

    cache = RequestCache(tmp_path / "requests.sqlite")
    first = generate(dry_backend, max_tokens=5, cache=cache)
    again = generate(NoEngine(dry_backend), max_tokens=5, cache=cache)  # every reply from the cache
    assert again.usage.cache_hits == 4 and again.usage.requests == 0
    assert [r["queries_finish_reason"] for r in again.rows] == [r["queries_finish_reason"] for r in first.rows]
    # A reply cached by a synth that did not keep finish reasons: the stored value has no such field.
    for key, value in cache.conn.execute("SELECT key, value FROM replies").fetchall():
        old = {k: v for k, v in json.loads(value).items() if k != "finish_reasons"}
        cache.conn.execute("UPDATE replies SET value = ? WHERE key = ?", (json.dumps(old), key))
    old = generate(NoEngine(dry_backend), max_tokens=5, cache=cache)
    assert [r["query"] for r in old.rows] == [r["query"] for r in first.rows]
    assert {r["queries_finish_reason"] for r in old.rows} == {"unknown"}
    assert len(run([{"rule": "truncated", "step": "queries"}], old.rows).rows) == 4, "unknown is not truncated"
    cache.close()


class FinishChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: choice 0 ends on `length`, choice 1 with no finish reason (null)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = [
            {"index": i, "message": {"role": "assistant", "content": f"liver glucose {i}"}, "finish_reason": reason}
            for i, reason in zip(range(body.get("n") or 1), ["length", None], strict=False)
        ]
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices}
        data = json.dumps({**reply, "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_the_openai_backend_passes_the_servers_finish_reasons_through() -> None:
    from synth.backends.openai import OpenAIBackend
    from synth.recipe import LLMSpec

    server = ThreadingHTTPServer(("127.0.0.1", 0), FinishChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        backend = OpenAIBackend(LLMSpec(backend="openai", model="served", base_url=url))
        result = generate(backend, max_tokens=3, n=2)
        backend.close()
    finally:
        server.shutdown()
    assert [r["queries_finish_reason"] for r in result.rows] == ["length", "unknown"] * 4
    assert len(run([{"rule": "truncated", "step": "queries"}], result.rows).rows) == 4


def test_the_real_engine_reports_length_for_a_reply_cut_at_max_tokens(vllm_backend: Any) -> None:
    result = generate(vllm_backend, max_tokens=2)
    assert [r["queries_finish_reason"] for r in result.rows] == ["length"] * 4
    assert run([{"rule": "truncated", "step": "queries"}], result.rows).rows == []


# --- few-shot echo at the start of a reply, and replies that are no query at all ---


def test_a_reply_that_opens_with_the_example_answer_is_an_echo_even_with_a_real_query_glued_on() -> None:
    examples = ["honey shelf life bacteria"]
    reply = "honey shelf life bacteria effectiveness gemcitabine plus erlotinib for treating pancreatic cancer"
    assert echoed_prefix(reply, examples, LIVER) == ["honey", "shelf", "life", "bacteria"]
    assert echoed_prefix("liver honey shelf life", examples, LIVER) == [], "only an opening run counts"
    assert echoed_prefix("honey shelf life", examples, "Honey keeps: its shelf life is long.") == []
    rows = [{"query": reply, "text": LIVER}, {"query": "honey shelf glucose liver lipids regulation", "text": LIVER}]
    result = run([{"rule": "leakage", "template": "query_keywords.j2"}], rows)
    assert [r["query"] for r in result.rows] == [rows[1]["query"]], "a two-word echo is below prefix_words (3)"
    [echo] = result.dropped
    assert echo["reason"] == "fewshot_prefix" and echo["echoed_prefix"] == ["honey", "shelf", "life", "bacteria"]
    assert echo["leaked_share"] < 0.5, "the share test alone would have kept it"
    assert run([{"rule": "leakage", "template": "query_keywords.j2", "prefix_words": None}], rows[:1]).dropped == []


@pytest.mark.parametrize(
    ("reply", "reason", "matched"),
    [
        ("Why is the answer to this question not answered by the given passage?", "meta_reply", "this question"),
        ("honey - 2 to 6 words:", "meta_reply", "2 to 6 words"),
        ("building on the above.", "meta_reply", "the above"),
        ("Sure! Here is a question about the liver", "meta_reply", "Here is"),
        ("Query: liver glucose", "meta_reply", "Query:"),
        ("Lymphoma and Prostate Cancer Treatment:", "lead_in", "te Cancer Treatment:"),
        ("Why does the liver store glycogen?", None, None),
        ("The Answer to the Pritikin Puzzle", None, None),  # a real NFCorpus query
        ("hepatocyte glucose regulation", None, None),
    ],
)
def test_querylike_drops_replies_that_talk_about_the_prompt_or_lead_into_a_list(
    reply: str, reason: str | None, matched: str | None
) -> None:
    result = run([{"rule": "querylike"}], [{"query": reply, "text": LIVER}])
    assert [d["reason"] for d in result.dropped] == ([reason] if reason else [])
    if reason:
        assert result.dropped[0]["matched"] == matched and result.dropped[0]["rule"] == "querylike"


def test_querylike_lets_a_phrase_through_when_the_passage_has_it_too() -> None:
    passage = "In this article we review the above-mentioned trials of statins."
    rows = [{"query": "statin trials in this article", "text": passage}, {"query": "statin trials: ", "text": passage}]
    result = run([{"rule": "querylike", "lead_in": False}], rows)
    assert len(result.rows) == 2
    with pytest.raises(ValueError, match="bad pattern"):
        FilterSpec.model_validate({"rules": [{"rule": "querylike", "meta_phrases": ["("]}]})
