"""The data recipes of the embedding papers (issue 15), plumbing on the test doubles, training on MiniLM.

Steps and layouts run on the `dry-run` backend and the `hashing` embedder (real implementations
of the protocols, instant, deterministic). Each shipped recipe then runs end to end the same way,
its output loads with `load_from_disk`, and all-MiniLM-L6-v2 trains a couple of steps on it with
the loss it is made for: MNRL (several positives per anchor), CoSENTLoss (pair-score), ListNet
(listwise) and MarginMSE. STS-B is read from /work/shared/data/stsb by path (never copied here).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from synth.backends import Completion, Messages, ResultCallback, SamplingParams
from synth.export import write_output
from synth.export_layout import Layout, prefix
from synth.recipe import SamplingSpec, SourceSpec, load_recipe
from synth.runner import run_recipe, validate_recipe
from synth.sources import SourceError, check_source_spec, load_documents, load_source_spec, seed_records
from synth.steps.generate import GenerateSpec, GenerateStep
from synth.steps.map import MapSpec, MapStep
from synth.steps.similarity import SimilaritySpec, SimilarityStep
from tests.conftest import REPO, make_ctx

RECIPES = REPO / "recipes"
STSB = Path("/work/shared/data/stsb/train.tsv.gz")
DOUBLES = ["llm.backend=dry-run", "embedder.model=hashing"]


# --- generate: E5 knobs and malformed JSON -----------------------------------------------------

KNOBS = {"query_type": ["common", "long-tail", "extremely long-tail"], "num_words": [50, 100, 200, 300, 400, 500]}


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "source_id": str(i), "text": f"task number {i} about topic {i * 7}"} for i in range(n)]


def test_sampled_knobs_are_drawn_per_row_and_follow_the_row_not_its_position(dry_backend) -> None:  # type: ignore[no-untyped-def]
    spec = GenerateSpec(name="ex", template="paraphrase.j2", output="out", sample=KNOBS)
    rows = _rows(30)
    first = GenerateStep(spec)(rows, make_ctx(rows, llm=dry_backend)).rows  # type: ignore[arg-type]
    again = GenerateStep(spec)(rows[::-1], make_ctx(rows, llm=dry_backend)).rows  # type: ignore[arg-type]
    knobs = {r["id"]: (r["query_type"], r["num_words"]) for r in first}
    assert knobs == {r["id"]: (r["query_type"], r["num_words"]) for r in again}
    assert len(knobs) == 30 and all(q in KNOBS["query_type"] and w in KNOBS["num_words"] for q, w in knobs.values())
    assert len({q for q, _ in knobs.values()}) == 3 and len({w for _, w in knobs.values()}) >= 4  # drawn, not fixed
    reseeded = GenerateSpec(name="ex", template="paraphrase.j2", output="out", sample=KNOBS, sample_seed=1)
    other = GenerateStep(reseeded)(rows, make_ctx(rows, llm=dry_backend)).rows  # type: ignore[arg-type]
    assert {r["id"]: (r["query_type"], r["num_words"]) for r in other} != knobs


def test_sampled_knobs_reach_the_prompt_and_are_checked(tmp_path: Path) -> None:
    from synth.prompts import PromptLibrary

    (tmp_path / "knob.j2").write_text("Write {{ num_words }} words about: {{ text }}")
    spec = GenerateSpec(name="ex", template="knob.j2", output="out", sample={"num_words": [50, 500]})
    step, prompts, row = GenerateStep(spec), PromptLibrary(tmp_path), _rows(1)[0]
    (messages,) = step.messages(row, prompts, "0")
    assert messages[-1]["content"] in (
        "Write 50 words about: task number 0 about topic 0",
        "Write 500 words about: task number 0 about topic 0",
    )
    assert step.preview(row)["num_words"] == 50
    bad = GenerateStep(GenerateSpec(name="ex", template="knob.j2", output="out", sample={"num_word": [50]}))
    assert any("num_words" in p for p in bad.problems(row, prompts))
    with pytest.raises(ValidationError, match="both `each` and `sample`"):
        GenerateSpec(name="ex", template="knob.j2", output="o", each={"a": [1]}, sample={"a": [2]})
    with pytest.raises(ValidationError, match="at least one value"):
        GenerateSpec(name="ex", template="knob.j2", output="o", sample={"a": []})


class ScriptedBackend:
    """A real LLMBackend whose reply to a prompt is looked up by a word the row's text holds."""

    kind = "scripted"
    model_id = "scripted"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    def generate(
        self, conversations: Sequence[Messages], params: SamplingParams, on_result: ResultCallback | None = None
    ) -> list[Completion]:
        out = []
        for i, messages in enumerate(conversations):
            key = next(k for k in self.replies if k in messages[-1]["content"])
            out.append(Completion(texts=[self.replies[key]], finish_reasons=["stop"]))
            if on_result:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        """Nothing to release."""


EXAMPLE_KEYS = ["user_query", "positive_document", "hard_negative_document"]
EXAMPLE_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in EXAMPLE_KEYS},
    "required": EXAMPLE_KEYS,
}
REPLIES = {
    "good": '{"user_query": "q", "positive_document": "p", "hard_negative_document": "n"}',
    "missing": '{"user_query": "q", "positive_document": "p"}',
    "wrongtype": '{"user_query": ["q1", "q2"], "positive_document": "p", "hard_negative_document": "n"}',
    "alist": '["q", "p", "n"]',
    "blank": '{"user_query": "  ", "positive_document": "p", "hard_negative_document": "n"}',
    "broken": '{"user_query": "q", "positive_document": ',
    "prose": "Sure! Here is a great example for you.",
}


@pytest.mark.parametrize("schema", [None, EXAMPLE_SCHEMA], ids=["no-schema", "schema"])
def test_malformed_json_is_a_counted_drop_with_the_raw_reply(schema: dict[str, Any] | None) -> None:
    rows = [{"id": k, "source_id": k, "text": k} for k in REPLIES]
    spec = GenerateSpec(
        name="example", template="paraphrase.j2", output=EXAMPLE_KEYS, parser="json", json_schema=schema, guided=False
    )
    ctx = make_ctx(rows, llm=ScriptedBackend(REPLIES), sampling=SamplingSpec())
    result = GenerateStep(spec)(rows, ctx)  # type: ignore[arg-type]
    assert [r["source_id"] for r in result.rows] == ["good"]
    assert {k: result.rows[0][k] for k in EXAMPLE_KEYS} == {
        "user_query": "q",
        "positive_document": "p",
        "hard_negative_document": "n",
    }
    reasons = {d["source_id"]: d["reason"] for d in result.dropped}
    checked = "parse_schema_mismatch" if schema else None
    assert reasons == {
        "missing": checked or "parse_missing_keys",
        "wrongtype": checked or "parse_wrong_type",
        "alist": checked or "parse_not_an_object",
        "blank": "parse_empty_value",
        "broken": "parse_invalid_json",
        "prose": "parse_invalid_json",
    }
    assert all(d["raw"] == REPLIES[d["source_id"]] and d["detail"] for d in result.dropped)
    assert result.usage.requests == len(REPLIES)


# --- sources: seeds inline and in a YAML file ----------------------------------------------------


def test_inline_seeds_are_rows_with_the_checks_of_any_source() -> None:
    spec = SourceSpec(seeds=["short-long retrieval", {"id": "sts", "text": "matching", "family": "short-short"}])
    rows, dropped = load_source_spec(spec)
    assert rows == [
        {"id": "0", "text": "short-long retrieval"},
        {"id": "sts", "text": "matching", "family": "short-short"},
    ]
    assert dropped == [] and check_source_spec(spec) == []
    blank, dropped = load_source_spec(SourceSpec(seeds=["a topic", "  "]))
    assert [r["text"] for r in blank] == ["a topic"] and [d["reason"] for d in dropped] == ["empty_text"]
    with pytest.raises(SourceError, match="duplicate id"):
        load_source_spec(SourceSpec(seeds=[{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]))
    assert list(seed_records([["nested"]])) == [(("item", 1), "a seed is a string or a mapping, not a list")]
    with pytest.raises(ValidationError, match="exactly one of"):
        SourceSpec()
    with pytest.raises(ValidationError, match="exactly one of"):
        SourceSpec(path=Path("a.jsonl"), seeds=["x"])


def test_a_yaml_seeds_file_is_a_source(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text("- a persona who cooks\n- id: p2\n  text: a persona who sails\n  age: 40\n", encoding="utf-8")
    rows, _ = load_documents(seeds)
    assert rows == [{"id": "0", "text": "a persona who cooks"}, {"id": "p2", "text": "a persona who sails", "age": 40}]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("- &a {id: x, text: y}\n- *a\n", encoding="utf-8")
    with pytest.raises(SourceError, match="aliases"):
        load_documents(bomb)
    nested = tmp_path / "nested.yaml"
    nested.write_text("- [a, b]\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"nested.yaml \(row 1\): a seed is a string or a mapping"):
        load_documents(nested)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("seeds: [a, b]\n", encoding="utf-8")
    with pytest.raises(SourceError, match="expected a YAML list"):
        load_documents(mapping)


# --- map and similarity steps ---------------------------------------------------------------------


def test_map_computes_native_values_in_order_and_records_failures() -> None:
    spec = MapSpec(
        name="fmt",
        columns={
            "label": "score | float / 5",
            "anchor": "'Instruct: %s\\nQuery: %s' | format(task, query)",
            "double": "label * 2",
        },
    )
    rows = [
        {"id": "a", "score": "3.5", "task": "Find recipes", "query": "pasta"},
        {"id": "b", "score": "1", "task": "Find recipes"},  # no `query`
    ]
    result = MapStep(spec)(rows, make_ctx(rows))  # type: ignore[arg-type]
    assert result.rows == [{**rows[0], "label": 0.7, "anchor": "Instruct: Find recipes\nQuery: pasta", "double": 1.4}]
    (dropped,) = result.dropped
    assert dropped["reason"] == "map_error" and dropped["column"] == "anchor" and "query" in dropped["detail"]
    from synth.prompts import PromptLibrary

    assert MapStep(spec).problems(rows[1], PromptLibrary(None)) != []
    assert MapStep(MapSpec(columns={"x": "1 +"})).problems(rows[0], PromptLibrary(None)) != []
    assert MapStep(spec).problems(rows[0], PromptLibrary(None)) == []


def test_similarity_keeps_close_pairs_and_records_why_others_left(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"id": "same", "text": "the cat sleeps on the sofa", "back": "the cat sleeps on the sofa"},
        {"id": "far", "text": "the cat sleeps on the sofa", "back": "quarterly revenue grew by nine percent"},
    ]
    spec = SimilaritySpec(name="bt", pairs=[("text", "back")], min_score=0.5, reason="bad_back_translation")
    result = SimilarityStep(spec)(rows, make_ctx(rows, embedder=hashing_embedder))  # type: ignore[arg-type]
    assert [r["id"] for r in result.rows] == ["same"] and result.rows[0]["bt_score"] == pytest.approx(1.0)
    (dropped,) = result.dropped
    assert dropped["reason"] == "bad_back_translation" and dropped["score"] < 0.5 and dropped["threshold"] == 0.5
    assert dropped["pairs"][0]["b"] == "quarterly revenue grew by nine percent"


# --- export: instruction and score columns ------------------------------------------------------


def test_instruction_export_in_all_three_forms_and_a_score_column(tmp_path: Path) -> None:
    from datasets import load_from_disk

    rows = [
        {"task": "Find recipes", "q": "pasta", "p": "Boil pasta.", "n": "Pasta is Italian.", "s": "4.5"},
        {"task": "Classify reviews", "q": "great phone", "p": "positive", "n": "negative", "s": "1"},
        {"task": "Find recipes", "q": "soup", "p": "Heat stock.", "n": "Soup is warm.", "s": "0.5"},
    ]
    out = tmp_path / "out"
    write_output(
        out, rows, [], anchor="q", positive="p", negative_columns=["n"], formats=[], card="", recipe_yaml="",
        summary={}, layout=Layout(score="s", instruction="task"),
    )  # fmt: skip
    train = load_from_disk(str(out))
    assert train[0] == {
        "anchor": "Instruct: Find recipes\nQuery: pasta",
        "positive": "Boil pasta.",
        "negative_1": "Pasta is Italian.",
        "score": 4.5,
    }
    assert train.features["score"].dtype == "float64"
    views = load_from_disk(str(out / "by_instruction"))
    assert set(views) == {"task_0", "task_1"} and views["task_0"]["anchor"] == ["pasta", "soup"]
    assert json.loads((out / "prompts.json").read_text()) == {
        "task_0": {"anchor": "Instruct: Find recipes\nQuery: "},
        "task_1": {"anchor": "Instruct: Classify reviews\nQuery: "},
    }
    flag = [json.loads(x) for x in (out / "flagembedding.jsonl").read_text().splitlines()]
    assert flag[1] == {"query": "great phone", "pos": ["positive"], "neg": ["negative"], "prompt": "Classify reviews"}
    assert prefix("a {x}", "<{instruction}|{instruction.__class__}>") == "<a {x}|{instruction.__class__}>"
    with pytest.raises(ValueError, match="not a number"):
        write_output(
            tmp_path / "bad", [{**rows[0], "s": "high"}], [], anchor="q", positive="p", formats=[], card="",
            recipe_yaml="", summary={}, layout=Layout(score="s"),
        )  # fmt: skip


# --- the shipped recipes, end to end on the doubles, then a few training steps --------------------


def _run(name: str, tmp_path: Path, *overrides: str, limit: int | None = None) -> Any:
    recipe, folder = load_recipe(RECIPES / f"{name}.yaml", [*DOUBLES, *overrides])
    assert validate_recipe(recipe, folder) == []
    return run_recipe(recipe, folder, limit=limit, output_dir=tmp_path / name, cache_dir=tmp_path / "cache")


def _minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    from synth.models import resolve_model

    model = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    model.max_seq_length = 48  # a few tiny steps: the shape of the data is under test, not the model
    return model


def _train(model: Any, dataset: Any, loss: Any, tmp_path: Path, **args: Any) -> float:
    """Two optimiser steps; returns the training loss (finite) and checks the weights moved."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    before = [p.detach().clone() for p in model.parameters()]
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "train"), max_steps=2, per_device_train_batch_size=4, report_to="none",
        save_strategy="no", disable_tqdm=True, learning_rate=1e-4, **args,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset, loss=loss)
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
    return result.training_loss


def test_e5_synthetic_tasks_run_and_train_with_their_instructions(tmp_path: Path) -> None:
    from datasets import load_from_disk
    from sentence_transformers.sentence_transformer import losses

    result = _run("e5-synthetic", tmp_path)
    out = tmp_path / "e5-synthetic"
    details = load_from_disk(str(out / "details"))
    assert details.num_rows >= 4
    assert set(details["family"]) == {"short-long", "long-long", "short-short", "classification"}
    for knob in ("query_type", "query_length", "clarity", "num_words", "difficulty", "language"):
        assert knob in details.column_names and None not in details[knob]
    assert len(set(details["num_words"])) > 1  # drawn per row
    train = load_from_disk(str(out))
    assert train.column_names == ["anchor", "positive", "negative_1"]
    assert all(
        a == f"Instruct: {t}\nQuery: {q}"
        for a, t, q in zip(train["anchor"], details["task"], details["user_query"], strict=True)
    )
    steps = {r.name: r for r in result.reports}
    assert steps["brainstorm"].rows_out > steps["brainstorm"].rows_in  # one reply, several tasks
    model = _minilm()
    _train(model, train, losses.MultipleNegativesRankingLoss(model), tmp_path)  # the prefixed form
    views = load_from_disk(str(out / "by_instruction"))
    prompts = json.loads((out / "prompts.json").read_text())
    assert set(prompts) == set(views)
    _train(model, views, losses.MultipleNegativesRankingLoss(model), tmp_path, prompts=prompts)  # the prompts= form


def _stsb_jsonl(folder: Path, n: int) -> Path:
    """The first n STS-B train pairs as jsonl (read from the shared folder, written to tmp)."""
    path = folder / "stsb.jsonl"
    with gzip.open(STSB, "rt", encoding="utf-8") as f, path.open("w", encoding="utf-8") as out:
        assert next(f).rstrip("\n").split("\t") == ["score", "sentence1", "sentence2"]
        for _, line in zip(range(n), f, strict=False):
            score, a, b = line.rstrip("\n").split("\t")
            out.write(json.dumps({"sentence1": a, "sentence2": b, "score": float(score)}) + "\n")
    return path


def test_translated_stsb_keeps_gold_scores_filters_by_back_translation_and_trains_cosent(tmp_path: Path) -> None:
    from datasets import load_from_disk
    from sentence_transformers.sentence_transformer import losses

    source = _stsb_jsonl(tmp_path, 40)
    _run("stsb-translate", tmp_path, f"source.path={source}", "steps.5.similarity.min_score=0.2")
    out = tmp_path / "stsb-translate"
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    bad = [d for d in dropped if d["reason"] == "bad_back_translation"]
    assert bad and all(d["score"] < 0.2 and len(d["pairs"]) == 2 and d["step"] == "back_translation" for d in bad)
    train = load_from_disk(str(out))
    details = load_from_disk(str(out / "details"))
    assert train.column_names == ["anchor", "positive", "score"] and train.num_rows >= 4
    assert train.num_rows + len(dropped) == 40
    gold = {json.loads(x)["sentence1"]: json.loads(x)["score"] for x in source.read_text().splitlines()}
    assert train["score"] == pytest.approx([gold[t] / 5 for t in details["text"]])
    assert min(details["back_translation_score"]) >= 0.2
    model = _minilm()
    _train(model, train, losses.CoSENTLoss(model), tmp_path)


def test_paraphrase_and_graded_negatives_are_judged_and_train_mnrl(tmp_path: Path) -> None:
    from datasets import load_from_disk
    from sentence_transformers.sentence_transformer import losses

    result = _run("paraphrase-negatives", tmp_path)
    out = tmp_path / "paraphrase-negatives"
    judged = Counter(d["rule"] for d in result.dropped if d["reason"] == "judge_rejected")
    assert set(judged) == {"paraphrase_same", "topical_differs", "lexical_differs"}
    details = load_from_disk(str(out / "details"))
    for rule in ("paraphrase_same", "topical_differs", "lexical_differs"):
        assert min(details[f"{rule}_score"]) >= 0.5  # kept: P(same) for the paraphrase, P(different) for negatives
    train = load_from_disk(str(out))
    assert train.column_names == ["anchor", "positive", "negative_1", "negative_2"] and train.num_rows >= 4
    assert train["negative_1"] == details["negative_topical"] and train["negative_2"] == details["negative_lexical"]
    model = _minilm()
    _train(model, train, losses.MultipleNegativesRankingLoss(model), tmp_path)


def test_promoted_false_negatives_train_mnrl_with_several_positives_and_listwise(tmp_path: Path) -> None:
    from datasets import Dataset, load_from_disk
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    _run("promote-listwise", tmp_path, limit=16)
    out = tmp_path / "promote-listwise"
    summary = json.loads((out / "summary.json").read_text())
    found = next(s for s in summary["steps"] if s["name"] == "negatives")["stats"]["false_negatives"]
    assert found["mode"] == "promote" and found["promoted"] > 0 and found["found"] == found["promoted"]
    assert f"{found['promoted']} promoted to positives" in (out / "README.md").read_text()
    details = load_from_disk(str(out / "details"))
    promoted = [r for r in details if r["promoted"]]
    assert len(promoted) == found["promoted_rows"] and 0 < found["promoted_rows"] <= found["promoted"]
    corpus = {
        json.loads(x)["id"]: json.loads(x)["text"]
        for x in (RECIPES / "data/python_stdlib.jsonl").read_text().splitlines()
    }
    assert all(corpus[r["promoted_id"]] == r["text"] and r["promoted_id"] != r["source_id"] for r in promoted)
    train = load_from_disk(str(out))
    per_anchor = Counter(train["anchor"])
    assert max(per_anchor.values()) > 1  # one row per positive
    model = _minilm()
    _train(
        model, train, losses.MultipleNegativesRankingLoss(model), tmp_path, batch_sampler=BatchSamplers.NO_DUPLICATES
    )

    layouts = out / "negatives"
    assert {p.name for p in layouts.iterdir()} >= {"listwise.jsonl", "pair-score.jsonl", "labeled-list.jsonl", "beir"}
    listwise = Dataset.from_json(str(layouts / "listwise.jsonl"))
    assert listwise.column_names == ["query", "documents", "scores"]
    assert all(s == sorted(s, reverse=True) for s in listwise["scores"])
    qrels = (layouts / "beir" / "qrels" / "train.tsv").read_text().splitlines()[1:]
    assert len(qrels) >= len(details)  # every positive of every mined query, promoted ones included
    pairs = Dataset.from_json(str(layouts / "pair-score.jsonl"))
    assert pairs.column_names == ["sentence1", "sentence2", "score"]
    _train(model, pairs.select(range(8)), losses.CoSENTLoss(model), tmp_path)
    margins = Dataset.from_json(str(layouts / "marginmse.jsonl"))
    _train(model, margins.select(range(8)), losses.MarginMSELoss(model), tmp_path)
    _train_listwise(listwise.select(range(2)), tmp_path)


def _train_listwise(listwise: Any, tmp_path: Path) -> None:
    """The listwise layout as is (one query, its documents, the teacher's scores): ListNet on a MiniLM cross-encoder."""
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    from synth.models import resolve_model

    model = CrossEncoder(resolve_model("all-minilm-l6-v2"), num_labels=1, max_length=32, device="cpu")
    arguments = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path / "ce"), max_steps=2, per_device_train_batch_size=1, report_to="none",
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(model=model, args=arguments, train_dataset=listwise, loss=ListNetLoss(model))
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)


def test_beir_queries_runs_with_its_small_model_failure_rules(tmp_path: Path) -> None:
    """The shipped beir-queries recipe: its failure rules are wired to the generate step and every
    reply ends as a row or a counted drop."""
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        {"id": f"d{i}", "title": f"Study {i} of diet", "text": f"Passage {i} says that fibre intake {i} lowers risk."}
        for i in range(6)
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    result = _run("beir-queries", tmp_path, f"source.path={corpus}")
    recipe, _ = load_recipe(RECIPES / "beir-queries.yaml", [*DOUBLES, f"source.path={corpus}"])
    quality = next(s for s in recipe.steps if s.kind == "filter")
    kinds = [r.rule for r in quality.spec.rules]
    assert kinds[:4] == ["truncated", "repetition", "leakage", "querylike"]
    assert quality.spec.rules[0].step == "queries"
    by_name = {r.name: r for r in result.reports}
    assert by_name["queries"].rows_out == 12
    assert by_name["quality"].rows_in == 12
    assert by_name["quality"].rows_out + sum(by_name["quality"].dropped.values()) == 12
