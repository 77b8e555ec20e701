"""BEIR loading and retrieval metrics, checked against values worked out by hand."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from synth.eval.beir import load_beir
from synth.eval.metrics import exact_search, retrieval_metrics


def test_metrics_on_a_hand_computed_ranking() -> None:
    qrels = {"q1": {"a": 2, "b": 1, "z": 1}, "q2": {"c": 1}}
    ranked = {"q1": ["b", "x", "a"], "q2": ["x", "y"]}
    m = retrieval_metrics(ranked, qrels, k_ndcg=10, k_recall=2)
    dcg = 1 / math.log2(2) + 2 / math.log2(4)  # b (rel 1) at rank 1, a (rel 2) at rank 3
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 0.0) / 2)
    assert m["recall@2"] == pytest.approx((1 / 3 + 0.0) / 2)  # only b is in q1's top 2
    assert m["mrr@10"] == pytest.approx((1.0 + 0.0) / 2)


def test_exact_search_orders_by_score() -> None:
    docs = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[0, 1], [1, 0]], dtype=np.float32)
    assert exact_search(queries, docs, ["d0", "d1", "d2"], k=2) == [["d1", "d2"], ["d0", "d2"]]


def test_load_beir_gzip_layout(tmp_path: Path) -> None:
    def gz(name: str, text: str) -> None:
        with gzip.open(tmp_path / name, "wt") as f:
            f.write(text)

    gz("corpus.jsonl.gz", json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n")
    gz("queries.jsonl.gz", json.dumps({"_id": "q1", "text": "what?"}) + "\n")
    gz("qrels_test.tsv.gz", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    data = load_beir(tmp_path)
    assert data.qrels == {"test": {"q1": {"d1": 2}}}
    assert data.doc_text("d1") == "T. body" and data.queries == {"q1": "what?"}


def test_nfcorpus_is_read_with_published_counts() -> None:
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "nfcorpus"
    if not folder.exists():  # the shared data sits beside the clone on our machines and in CI
        folder = Path("/work/shared/data/nfcorpus")
    data = load_beir(folder)
    assert len(data.corpus) == 3633 and len(data.qrels["test"]) == 323
    assert sum(len(v) for v in data.qrels["test"].values()) == 12334
