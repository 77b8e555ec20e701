"""BEIR-layout datasets (corpus, queries, qrels; plain or gzip) and exact-search retrieval metrics.

Metrics follow BEIR / pytrec_eval: nDCG@k with linear graded gains, Recall@k over relevant
(score > 0) documents, MRR@k of the first relevant hit; averaged over queries with qrels.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def retrieval_metrics(
    ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k_ndcg: int = 10, k_recall: int = 100
) -> dict[str, float]:
    ndcg, recall, mrr = [], [], []
    for qid, rels in qrels.items():
        run = ranked.get(qid, [])
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(run[:k_ndcg]))
        ideal = sorted(rels.values(), reverse=True)[:k_ndcg]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        ndcg.append(dcg / idcg if idcg > 0 else 0.0)
        relevant = {d for d, r in rels.items() if r > 0}
        recall.append(len(relevant & set(run[:k_recall])) / len(relevant) if relevant else 0.0)
        first = next((i for i, d in enumerate(run[:k_ndcg]) if d in relevant), None)
        mrr.append(1 / (first + 1) if first is not None else 0.0)
    return {
        f"ndcg@{k_ndcg}": float(np.mean(ndcg)),
        f"recall@{k_recall}": float(np.mean(recall)),
        f"mrr@{k_ndcg}": float(np.mean(mrr)),
    }


def exact_search(query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str], k: int = 100) -> list[list[str]]:
    """Top-k doc ids per query by dot product (embeddings are normalised), in chunks."""
    out: list[list[str]] = []
    for start in range(0, len(query_emb), 256):
        scores = query_emb[start : start + 256] @ doc_emb.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, cand in zip(scores, top, strict=True):
            order = cand[np.argsort(-row[cand], kind="stable")]
            out.append([doc_ids[i] for i in order])
    return out


def evaluate(model, data: BeirData, split: str = "test", batch_size: int = 64) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Embed the whole corpus and the split's queries with a SentenceTransformer, exact search, metrics."""
    qrels = data.qrels[split]
    doc_ids = list(data.corpus)
    qids = [q for q in qrels if q in data.queries]
    doc_emb = model.encode([data.doc_text(d) for d in doc_ids], batch_size=batch_size, normalize_embeddings=True)
    query_emb = model.encode([data.queries[q] for q in qids], batch_size=batch_size, normalize_embeddings=True)
    ranked = dict(zip(qids, exact_search(np.asarray(query_emb), np.asarray(doc_emb), doc_ids), strict=True))
    return retrieval_metrics(ranked, {q: qrels[q] for q in qids})
