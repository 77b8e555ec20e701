"""BEIR-layout datasets (corpus, queries, qrels; plain or gzip) and a model's scores on them.

Metrics and search: synth/eval/metrics.py.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.eval.metrics import exact_search, retrieval_metrics


def _open(folder: Path, name: str):  # type: ignore[no-untyped-def]
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return gzip.open(candidate, "rt", encoding="utf-8") if candidate.suffix == ".gz" else candidate.open()
    raise FileNotFoundError(f"{folder}: no {name} or {name}.gz")


@dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> doc id -> relevance

    def doc_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']}. {doc['text']}".strip(". ") if doc.get("title") else doc["text"]


def load_beir(folder: Path) -> BeirData:
    corpus = {}
    with _open(folder, "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            corpus[str(row["_id"])] = {"title": row.get("title", ""), "text": row["text"]}
    queries = {}
    with _open(folder, "queries.jsonl") as f:
        for line in f:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "dev", "test"):
        for name in (f"qrels_{split}.tsv", f"qrels/{split}.tsv"):
            try:
                f = _open(folder, name)
            except FileNotFoundError:
                continue
            table: dict[str, dict[str, int]] = defaultdict(dict)
            with f:
                next(f)  # header
                for line in f:
                    qid, did, score = line.rstrip("\n").split("\t")
                    table[qid][did] = int(score)
            qrels[split] = dict(table)
            break
    return BeirData(corpus, queries, qrels)


def evaluate(model, data: BeirData, split: str = "test", batch_size: int = 64) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Embed the whole corpus and the split's queries with a SentenceTransformer, exact search, metrics."""
    qrels = data.qrels[split]
    doc_ids = list(data.corpus)
    qids = [q for q in qrels if q in data.queries]
    doc_emb = model.encode([data.doc_text(d) for d in doc_ids], batch_size=batch_size, normalize_embeddings=True)
    query_emb = model.encode([data.queries[q] for q in qids], batch_size=batch_size, normalize_embeddings=True)
    ranked = dict(zip(qids, exact_search(np.asarray(query_emb), np.asarray(doc_emb), doc_ids), strict=True))
    return retrieval_metrics(ranked, {q: qrels[q] for q in qids})
