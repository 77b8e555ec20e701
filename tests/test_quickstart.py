"""End to end on the real bundled models: the quickstart recipe through vLLM and MiniLM, then training."""

from __future__ import annotations

import json
import math

import numpy as np
from datasets import load_from_disk

from synth.recipe import load_recipe
from synth.sources import load_documents
from tests.conftest import QUICKSTART


def test_quickstart_gives_every_document_a_query_positive_and_negatives(quickstart_run) -> None:  # type: ignore[no-untyped-def]
    recipe, _ = load_recipe(QUICKSTART)
    docs, _ = load_documents(recipe.source.path)
    texts = {d["id"]: d["text"] for d in docs}
    out = quickstart_run.output_dir
    train = load_from_disk(str(out))
    details = load_from_disk(str(out / "details"))
    assert train.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert len(train) == len(details) >= len(docs)
    assert set(details["source_id"]) == set(texts), "every document yields at least one row"
    for row, info in zip(train, details, strict=True):
        assert row["anchor"].strip() and row["positive"] == texts[info["source_id"]]
        negatives = [row[f"negative_{j}"] for j in (1, 2, 3)]
        assert row["positive"] not in negatives and len(set(negatives)) == 3
        assert info["source_id"] not in info["negative_ids"]
        pos, scores = info["positive_score"], info["negative_scores"]
        assert scores == sorted(scores, reverse=True)
        assert all(s <= pos - abs(pos) * 0.05 + 1e-6 for s in scores), "relative_margin 0.05 holds"


def test_quickstart_reports_counts_tokens_and_drops(quickstart_run) -> None:  # type: ignore[no-untyped-def]
    reports = {r.name: r for r in quickstart_run.reports}
    queries, negatives = reports["queries"], reports["negatives"]
    # One request per style; the session's cache may already hold some (other tests ran the recipe).
    assert queries.requests + queries.cache_hits == 2 * reports["source"].rows_out
    assert queries.prompt_tokens > 0 and queries.completion_tokens > 0
    assert negatives.rows_in == queries.rows_out
    assert negatives.rows_out + sum(negatives.dropped.values()) == negatives.rows_in
    out = quickstart_run.output_dir
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == len(quickstart_run.dropped)
    assert all(d["step"] and d["reason"] and d["source_id"] for d in dropped)
    card = (out / "README.md").read_text()
    assert "smollm2-135m-instruct" in card and "all-minilm-l6-v2" in card
    assert "| queries | generate |" in card and "| negatives | mine_negatives |" in card  # kind = YAML key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(quickstart_run.rows)


def test_output_trains_minilm_with_multiple_negatives_ranking_loss(quickstart_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    from synth.models import resolve_model

    # As small as the check allows: 3 steps of 4 rows, passages cut to 64 tokens (the trainer,
    # the loss and the columns are what is tested, not what the model learns).
    train = load_from_disk(str(quickstart_run.output_dir)).select(range(12))
    model = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    model.max_seq_length = 64
    before = model.encode(["a probe sentence"], normalize_embeddings=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "ckpt"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=losses.MultipleNegativesRankingLoss(model)
    )
    output = trainer.train()
    assert output.global_step == 3 and math.isfinite(output.training_loss) and output.training_loss > 0
    after = model.encode(["a probe sentence"], normalize_embeddings=True)
    assert not np.allclose(before, after), "training changed the weights"
