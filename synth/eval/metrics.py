"""Retrieval metrics and exact search, as BEIR / pytrec_eval compute them.

nDCG@k with linear graded gains, Recall@k over relevant (score > 0) documents, MRR@k of the
first relevant hit; averaged over queries with qrels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def recall_at(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int) -> float:
    """Mean share of each query's relevant documents found in its top k (LIMIT reports @2, @10)."""
    return retrieval_metrics(ranked, qrels, k_recall=k)[f"recall@{k}"]


def accuracy_at_1(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    """Share of queries whose first hit is relevant (LongEmbed's passkey/needle score, = nDCG@1 there)."""
    hits = [bool(ranked.get(q)) and rels.get(ranked[q][0], 0) > 0 for q, rels in qrels.items()]
    return float(np.mean(hits)) if hits else 0.0
