"""The generate step: explode, fan-out and recorded parse failures on the `dry-run` backend;
guided JSON decoding on the real vLLM engine (the one thing here that is about the real model)."""

from __future__ import annotations

from synth.recipe import SamplingSpec
from synth.steps.generate import GenerateSpec, GenerateStep
from tests.conftest import make_ctx

DOCS = [
    {"id": "tea", "text": "Green tea is made from unoxidised leaves and contains less caffeine than coffee."},
    {"id": "moon", "text": "The Moon orbits Earth every 27.3 days and always shows the same face to us."},
]


def run(spec: GenerateSpec, backend, sampling: SamplingSpec | None = None):  # type: ignore[no-untyped-def]
    ctx = make_ctx(DOCS, llm=backend, sampling=sampling or SamplingSpec(max_tokens=48, stop=["\n"]))
    rows = [dict(d, source_id=d["id"]) for d in DOCS]
    return GenerateStep(spec)(rows, ctx)  # type: ignore[arg-type]


def test_n_samples_explode_into_rows_that_keep_the_source_id(dry_backend) -> None:  # type: ignore[no-untyped-def]
    spec = GenerateSpec(name="para", template="paraphrase.j2", output="paraphrase", sampling={"n": 3})
    result = run(spec, dry_backend)
    assert result.usage.requests == 2
    assert len(result.rows) + len(result.dropped) == 6
    for row in result.rows:
        assert row["source_id"] in ("tea", "moon") and row["paraphrase"].strip()
        assert row["para_sample"] in (0, 1, 2) and len(row["para_template"]) == 16
    assert result.usage.completion_tokens > 0


SCHEMA = {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 2, "maxItems": 3}


def test_guided_json_always_parses_and_list_replies_explode(vllm_backend) -> None:  # type: ignore[no-untyped-def]
    """The real engine's guided decoding: a 135M model's replies parse because vLLM constrains them."""
    schema = SCHEMA
    spec = GenerateSpec(name="qs", template="queries_json.j2", output="query", parser="json", json_schema=schema)
    result = run(spec, vllm_backend, SamplingSpec(max_tokens=120, temperature=0.3))
    assert result.dropped == [], [d["raw"] for d in result.dropped]
    per_doc = {d["id"]: sum(r["source_id"] == d["id"] for r in result.rows) for d in DOCS}
    assert all(2 <= n <= 3 for n in per_doc.values()), per_doc
    assert all(isinstance(r["query"], str) and len(r["query"]) >= 3 for r in result.rows)


def test_each_item_of_a_json_list_reply_becomes_a_row(dry_backend) -> None:  # type: ignore[no-untyped-def]
    """The plumbing under guided JSON: the schema reaches the backend (without it the dry-run
    backend answers plain text, which the json parser drops) and every list item is one row."""
    spec = GenerateSpec(name="qs", template="queries_json.j2", output="query", parser="json", json_schema=SCHEMA)
    result = run(spec, dry_backend, SamplingSpec(max_tokens=120, temperature=0.3))
    assert result.dropped == [] and result.usage.requests == 2
    for doc in DOCS:
        rows = [r for r in result.rows if r["source_id"] == doc["id"]]
        assert 2 <= len(rows) <= 3 and all(isinstance(r["query"], str) and len(r["query"]) >= 3 for r in rows)
        assert {r["qs_sample"] for r in rows} == {0} and {r["qs_parse"] for r in rows} == {"ok"}, "one reply, many rows"


def test_unparseable_replies_are_kept_aside_with_raw_text_and_reason(dry_backend) -> None:  # type: ignore[no-untyped-def]
    spec = GenerateSpec(
        name="q", template="query_question.j2", output="query", parser="regex", pattern=r"NEVER_IN_A_REPLY_(\d+)"
    )
    result = run(spec, dry_backend)
    assert result.rows == []
    assert [d["source_id"] for d in result.dropped] == ["tea", "moon"]
    assert all(d["reason"] == "parse_no_match" and d["step"] == "q" and d["raw"] for d in result.dropped)


def test_each_fans_out_prompts_and_records_the_value(dry_backend) -> None:  # type: ignore[no-untyped-def]
    spec = GenerateSpec(name="q", template="query.j2", output="query", each={"style": ["question", "claim"]})
    result = run(spec, dry_backend)
    assert result.usage.requests == 4
    assert {(r["source_id"], r["style"]) for r in result.rows} <= {
        ("tea", "question"),
        ("tea", "claim"),
        ("moon", "question"),
        ("moon", "claim"),
    }
    assert len(result.rows) + len(result.dropped) == 4


def test_a_cross_shard_stream_lets_go_of_each_batch_once_it_is_yielded(dry_backend) -> None:  # type: ignore[no-untyped-def]
    """One request stream over many shards (the vLLM path) must not keep the shards it already
    handed back: before, every batch's result (its rows) stayed referenced until the step ended,
    so a 10^6-row generate step held all of its rows."""
    import gc
    import weakref

    spec = GenerateSpec(name="para", template="paraphrase.j2", output="paraphrase")
    ctx = make_ctx(DOCS, llm=dry_backend, sampling=SamplingSpec(max_tokens=16))
    batches = [(i, [dict(DOCS[i % 2], id=f"d{i}", source_id=f"d{i}")]) for i in range(6)]
    seen = []
    for index, result in GenerateStep(spec).stream_batches(iter(batches), ctx, across=True):  # type: ignore[arg-type]
        assert len(result.rows) + len(result.dropped) == 1
        seen.append((index, weakref.ref(result)))
        del result
        gc.collect()
        assert [i for i, ref in seen[:-2] if ref() is not None] == [], "an earlier batch's result is still held"
    assert [i for i, _ in seen] == list(range(6))
