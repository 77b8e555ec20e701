"""The test doubles users can run too: the `dry-run` LLM backend and the hashing embedder.

Both are real implementations of their protocols; these tests pin what other tests and users
rely on: same request -> same reply, replies that parse, yes/no judges that score, vectors that
rank texts sharing words first. Also the backend registry: one table, clear errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from synth.backends import (
    BACKEND_NAMES,
    Completion,
    SamplingParams,
    backend_class,
    backend_identity,
    make_backend,
)
from synth.backends.dry_run import DryRunBackend
from synth.cache import EmbeddingCache
from synth.embedders import (
    CachedEmbedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    embedder_class,
    embedder_model_id,
    make_embedder,
)
from synth.parsers import parse_reply, validate, yes_probability
from synth.prompts import PromptLibrary
from synth.recipe import EmbedderSpec, LLMSpec

PASSAGES = [
    "The json module: JSON (JavaScript Object Notation) is a subset of JavaScript syntax used as a "
    "lightweight data interchange format. It exposes an API familiar to users of marshal and pickle.",
    "The csv module: CSV parsing and writing. This module provides classes that assist in the reading "
    "and writing of Comma Separated Value files.",
    "The sqlite3 module: a DB-API 2.0 interface for SQLite databases, a C library that provides a "
    "lightweight disk-based database that does not require a separate server process.",
    "The heapq module: an implementation of the heap queue algorithm, also known as the priority "
    "queue algorithm, on top of regular Python lists.",
]
PROMPTS = PromptLibrary()


def words_of(text: str) -> set[str]:
    return {w.casefold() for w in re.findall(r"\w+", text)}


@pytest.fixture
def backend() -> DryRunBackend:
    built = make_backend(LLMSpec(backend="dry-run", model="tiny-test-model"))
    assert isinstance(built, DryRunBackend)
    return built


def query_prompt(text: str, style: str = "question") -> list[dict[str, str]]:
    return PROMPTS.render("query.j2", {"text": text, "style": style})


# --- registry -------------------------------------------------------------------------------------


def test_every_registered_backend_is_a_recipe_choice_with_its_own_kind() -> None:
    assert set(BACKEND_NAMES) >= {"vllm", "openai", "dry-run"}
    for name in BACKEND_NAMES:
        assert LLMSpec(backend=name).backend == name
        assert backend_class(name).kind == name  # the cache-key kind is the registry name


def test_unknown_backend_is_a_clear_error_naming_the_known_ones() -> None:
    for call in (lambda: backend_class("llamafile"), lambda: LLMSpec(backend="llamafile")):
        with pytest.raises(ValueError) as err:
            call()
        assert "llamafile" in str(err.value)
        for name in BACKEND_NAMES:
            assert name in str(err.value)


def test_dry_run_identity_is_known_without_building_and_names_the_model() -> None:
    spec = LLMSpec(backend="dry-run", model="no/such-model-anywhere")  # never resolved or loaded
    kind, model_id = backend_identity(spec)
    assert kind == "dry-run"
    assert "no/such-model-anywhere" in model_id
    assert make_backend(spec).model_id == model_id
    assert backend_identity(LLMSpec(backend="dry-run", model="other"))[1] != model_id


# --- dry-run backend ------------------------------------------------------------------------------


def test_same_request_same_reply_across_instances(backend: DryRunBackend) -> None:
    conversations = [query_prompt(p) for p in PASSAGES]
    params = SamplingParams(max_tokens=48, n=2, seed=3)
    first = backend.generate(conversations, params)
    again = make_backend(LLMSpec(backend="dry-run", model="tiny-test-model")).generate(conversations, params)
    assert [c.texts for c in first] == [c.texts for c in again]
    assert len({c.texts[0] for c in first}) == len(PASSAGES)  # different prompts, different replies


def test_seeds_and_samples_vary_the_reply(backend: DryRunBackend) -> None:
    messages = query_prompt(PASSAGES[0])
    by_seed = {backend.generate([messages], SamplingParams(seed=s))[0].texts[0] for s in range(6)}
    assert len(by_seed) >= 5
    completion = backend.generate([messages], SamplingParams(n=4))[0]
    assert len(completion.texts) == len(completion.finish_reasons) == 4
    assert len(set(completion.texts)) >= 3


def test_plain_replies_are_words_of_the_passage(backend: DryRunBackend) -> None:
    for passage in PASSAGES:
        for style in ("question", "keywords"):
            text = backend.generate([query_prompt(passage, style)], SamplingParams(n=3))[0].texts
            for reply in text:
                assert reply and words_of(reply) <= words_of(passage), (reply, passage)
                assert parse_reply(reply, "text") == [reply]


def test_max_tokens_and_stop_cut_the_reply(backend: DryRunBackend) -> None:
    messages = query_prompt(PASSAGES[1])
    full = backend.generate([messages], SamplingParams(max_tokens=100))[0]
    assert full.finish_reasons == ["stop"]
    words = full.texts[0].split()
    assert len(words) >= 3

    short = backend.generate([messages], SamplingParams(max_tokens=2))[0]
    assert short.texts == [" ".join(words[:2])]
    assert short.finish_reasons == ["length"]
    assert short.completion_tokens == 2

    stop = words[1]
    cut = backend.generate([messages], SamplingParams(max_tokens=100, stop=("\n", stop)))[0]
    assert cut.texts == [full.texts[0][: full.texts[0].find(stop)]]
    assert cut.finish_reasons == ["stop"]


def test_token_counts_are_word_counts(backend: DryRunBackend) -> None:
    messages = query_prompt(PASSAGES[2])
    completion = backend.generate([messages], SamplingParams(n=3))[0]
    assert completion.prompt_tokens == sum(len(m["content"].split()) for m in messages)
    assert completion.completion_tokens == sum(len(t.split()) for t in completion.texts)
    assert completion.logprobs is None and completion.error is None


SCHEMAS = [
    {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1},
    {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 5},
    {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 40},
            "keywords": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
            "difficulty": {"type": "number"},
            "rank": {"type": "integer"},
            "hard": {"type": "boolean"},
            "style": {"enum": ["question", "claim"]},
            "note": {"type": ["null", "string"]},
        },
        "required": ["query", "keywords", "difficulty", "answer"],
        "additionalProperties": {"type": "string"},
    },
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["array", "min-max-items", "object"])
def test_json_schema_replies_are_valid(backend: DryRunBackend, schema: dict) -> None:
    conversations = [PROMPTS.render("queries_json.j2", {"text": p}) for p in PASSAGES]
    for seed in range(3):
        for completion in backend.generate(conversations, SamplingParams(json_schema=schema, seed=seed, n=2)):
            assert completion.finish_reasons == ["stop", "stop"]
            for text in completion.texts:
                value = json.loads(text)
                validate(value, schema)  # raises on any mismatch
                assert parse_reply(text, "json", schema=schema)
                if isinstance(value, dict):
                    assert set(schema["required"]) <= set(value)


def test_logprobs_give_yes_no_judges_a_score(backend: DryRunBackend) -> None:
    conversations = [
        PROMPTS.render("judge_relevance.j2", {"query": query, "text": passage})
        for passage in PASSAGES
        for query in ("json parsing", "priority queue", "csv files", "disk database")
    ]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=5)
    answers = set()
    for completion in backend.generate(conversations, params):
        top = completion.logprobs[0][0]  # type: ignore[index]
        assert {" yes", " no"} <= set(top) and len(top) == 5
        score = yes_probability(completion)
        assert score is not None and 0.0 < score < 1.0
        assert completion.texts == ["yes" if score >= 0.5 else "no"]
        answers.add(completion.texts[0])
    assert answers == {"yes", "no"}
    one = backend.generate(conversations[:1], SamplingParams(max_tokens=1, logprobs=1))[0]
    assert {" yes", " no"} <= set(one.logprobs[0][0])  # type: ignore[index]  # a score needs both
    longer = backend.generate(conversations[:1], SamplingParams(max_tokens=4, logprobs=2))[0]
    assert len(longer.logprobs[0]) == len(longer.texts[0].split())  # type: ignore[index]


def test_on_result_fires_once_per_conversation_in_order(backend: DryRunBackend) -> None:
    seen: list[tuple[int, Completion]] = []
    conversations = [query_prompt(p) for p in PASSAGES]
    results = backend.generate(conversations, SamplingParams(), on_result=lambda i, c: seen.append((i, c)))
    assert [i for i, _ in seen] == list(range(len(PASSAGES)))
    assert [c for _, c in seen] == results
    assert backend.requests == len(PASSAGES)
    backend.close()


# --- hashing embedder -----------------------------------------------------------------------------


def test_hashing_embedder_is_selected_by_name_without_loading_a_model() -> None:
    assert embedder_class("hashing") is HashingEmbedder
    assert embedder_class("hashing-64") is HashingEmbedder
    assert embedder_class("all-minilm-l6-v2") is SentenceTransformerEmbedder
    assert embedder_class("my-hashing-model") is SentenceTransformerEmbedder
    spec = EmbedderSpec(model="hashing-64")
    embedder = make_embedder(spec)
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.model_id == embedder_model_id(spec) != embedder_model_id(EmbedderSpec(model="hashing"))
    with pytest.raises(ValueError, match="hashing-<dim>"):
        make_embedder(EmbedderSpec(model="hashing-3"))


def test_hashing_vectors_are_unit_float32_and_deterministic() -> None:
    texts = [*PASSAGES, "", "   ", "a"]
    vectors = make_embedder(EmbedderSpec(model="hashing")).embed(texts, role="document")
    assert vectors.shape == (len(texts), 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    again = make_embedder(EmbedderSpec(model="hashing")).embed(texts, role="document")
    assert np.array_equal(vectors, again)
    empty = make_embedder(EmbedderSpec(model="hashing-32")).embed([], role="query")
    assert empty.shape == (0, 32)


def test_hashing_ranks_texts_sharing_words_first() -> None:
    embedder = make_embedder(EmbedderSpec(model="hashing"))
    queries = ["json data interchange format", "heap queue algorithm", "sqlite database server process"]
    q = embedder.embed(queries, role="query")
    d = embedder.embed(PASSAGES, role="document")
    assert list((q @ d.T).argmax(axis=1)) == [0, 3, 2]
    pair = embedder.embed(["python json parsing", "parsing json in python", "bees make honey"], role="query")
    assert pair[0] @ pair[1] > pair[0] @ pair[2] + 0.2


def test_hashing_honours_query_and_document_prompts() -> None:
    plain = make_embedder(EmbedderSpec(model="hashing"))
    prompted = make_embedder(EmbedderSpec(model="hashing", query_prompt="query: ", document_prompt="passage: "))
    text = ["heap queue algorithm"]
    assert np.array_equal(plain.embed(text, role="query"), plain.embed(text, role="document"))
    assert not np.array_equal(prompted.embed(text, role="query"), prompted.embed(text, role="document"))
    assert not np.array_equal(prompted.embed(text, role="query"), plain.embed(text, role="query"))


def test_hashing_reports_progress_per_batch() -> None:
    done: list[int] = []
    make_embedder(EmbedderSpec(model="hashing", batch_size=3)).embed(
        PASSAGES * 2, role="document", progress=done.append
    )
    assert done == [3, 3, 2]


def test_hashing_embedder_behind_the_embedding_cache(tmp_path: Path) -> None:
    spec = EmbedderSpec(model="hashing")
    loads: list[HashingEmbedder] = []

    def load() -> HashingEmbedder:
        loads.append(HashingEmbedder(spec))
        return loads[-1]

    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    cached = CachedEmbedder(load, embedder_model_id(spec), cache, {"query": None, "document": None})
    first = cached.embed(PASSAGES, role="document")
    assert loads and cache.misses == len(PASSAGES)
    loads.clear()
    second = cached.embed(PASSAGES, role="document")
    assert not loads and cache.hits == len(PASSAGES)  # answered from disk, nothing built
    assert np.array_equal(first, second)
    assert np.array_equal(first, HashingEmbedder(spec).embed(PASSAGES, role="document"))
