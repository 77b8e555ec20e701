"""Evaluate a retriever on a BEIR folder: exact search, nDCG@10, Recall@100, MRR@10 (and accuracy@1).

A retriever is named like an embedder (alias, local folder, hub id, `hashing`) or `bm25`
(bm25s with English stop words and the Snowball stemmer). Dense retrievers embed the whole
corpus and every query of the split (with the optional query/document prompts) and rank by
exact dot product of normalised vectors, so the numbers are those of the model, not of an
index. `synth eval run` prints them; benchmarks call `evaluate_folder` / `evaluate_data`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from synth.eval.beir import BeirData, load_beir, require_split
from synth.eval.metrics import accuracy_at_1, exact_search, recall_at, retrieval_metrics

BM25 = "bm25"


class EvalError(ValueError):
    """A model or option that cannot be evaluated; the message says which and why, in one line."""


class Retriever(Protocol):
    name: str

    def rank(self, doc_ids: Sequence[str], doc_texts: Sequence[str], queries: Sequence[str], k: int) -> list[list[str]]:
        """Top-k document ids per query, best first."""
        ...


class BM25Retriever:
    """Lexical baseline: bm25s (Lucene BM25, k1=1.5, b=0.75), English stop words, Snowball stemming."""

    name = BM25

    def rank(self, doc_ids: Sequence[str], doc_texts: Sequence[str], queries: Sequence[str], k: int) -> list[list[str]]:
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        index = bm25s.BM25()
        index.index(
            bm25s.tokenize(list(doc_texts), stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False
        )
        tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
        found, _ = index.retrieve(tokens, k=min(k, len(doc_ids)), show_progress=False)
        return [[doc_ids[i] for i in row] for row in found]


class DenseRetriever:
    """Any synth embedder: documents and queries embedded with their role's prompt, exact search."""

    def __init__(self, embedder: Any, name: str) -> None:
        self.embedder = embedder
        self.name = name

    def rank(self, doc_ids: Sequence[str], doc_texts: Sequence[str], queries: Sequence[str], k: int) -> list[list[str]]:
        docs = self.embedder.embed(list(doc_texts), role="document")
        query_vectors = self.embedder.embed(list(queries), role="query")
        return exact_search(query_vectors, docs, list(doc_ids), k=min(k, len(doc_ids)))


def make_retriever(
    model: str,
    *,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    device: str | None = None,
) -> Retriever:
    """`bm25`, or the embedder `model` names (loaded now: a name that cannot be loaded is an EvalError)."""
    if model == BM25:
        if query_prompt or document_prompt or max_seq_length:
            raise EvalError("bm25 takes no prompts and no max sequence length")
        return BM25Retriever()
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise EvalError(f"model {model!r} cannot be loaded: no such folder")
    from pydantic import ValidationError

    from synth.embedders import make_embedder
    from synth.specs import EmbedderSpec

    try:
        spec = EmbedderSpec(
            model=model,
            batch_size=batch_size,
            device=device,
            query_prompt=query_prompt,
            document_prompt=document_prompt,
        )
        embedder = make_embedder(spec)
    except ValidationError as e:
        raise EvalError(f"model {model!r}: {e.errors()[0]['msg']}") from None
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(
            f"model {model!r} cannot be loaded ({first}); give an alias (synth models), a folder or a hub id"
        ) from None
    if max_seq_length is not None:
        inner = getattr(embedder, "model", None)
        if inner is None or not hasattr(inner, "max_seq_length"):
            raise EvalError(f"model {model!r} has no max sequence length to set")
        inner.max_seq_length = max_seq_length
    return DenseRetriever(embedder, model)


@dataclass
class EvalResult:
    dataset: str
    split: str
    model: str
    queries: int
    documents: int
    metrics: dict[str, float]
    seconds: float  # indexing/embedding + search, model loading excluded
    ranked: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON line `synth eval run` prints (metrics rounded to 4 places)."""
        metrics = {k: round(v, 4) for k, v in self.metrics.items()}
        return {
            "dataset": self.dataset,
            "split": self.split,
            "model": self.model,
            "queries": self.queries,
            "documents": self.documents,
            **metrics,
            "seconds": round(self.seconds, 2),
        }


def evaluate_data(
    retriever: Retriever,
    data: BeirData,
    split: str = "test",
    *,
    folder: Path | str = "",
    recall_cutoffs: Sequence[int] = (),
) -> EvalResult:
    """Rank the whole corpus for every query of `split` that has qrels; nDCG@10, Recall@100, MRR@10, acc@1."""
    qrels = require_split(data, split, Path(folder))
    qids = list(qrels)
    doc_ids = list(data.corpus)
    depth = max([100, *recall_cutoffs])
    started = time.perf_counter()
    runs = retriever.rank(doc_ids, [data.doc_text(d) for d in doc_ids], [data.queries[q] for q in qids], depth)
    seconds = time.perf_counter() - started
    ranked = dict(zip(qids, runs, strict=True))
    metrics = retrieval_metrics(ranked, qrels)
    metrics["accuracy@1"] = accuracy_at_1(ranked, qrels)
    for k in recall_cutoffs:
        metrics[f"recall@{k}"] = recall_at(ranked, qrels, k)
    return EvalResult(str(folder), split, retriever.name, len(qids), len(doc_ids), metrics, seconds, ranked)


def evaluate_folder(
    folder: Path, retriever: Retriever, split: str = "test", recall_cutoffs: Sequence[int] = ()
) -> EvalResult:
    """Load a BEIR folder (BeirError if it is not one or lacks the split) and evaluate `retriever` on it."""
    return evaluate_data(retriever, load_beir(folder), split, folder=folder, recall_cutoffs=recall_cutoffs)
