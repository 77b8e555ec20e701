"""A pooled, downsampled BEIR split (MMTEB): judged documents plus each retriever's top candidates.

Why: evaluating on a large corpus costs one embedding per document per model. MMTEB showed the
ranking of models survives when the corpus is cut down to the documents that matter for the
split's queries: every judged document, plus the top-k candidates that a few different
retrievers (BM25 and dense models) return for each query; optionally fewer queries too. The
result is a BEIR folder with a card (README.md) and `pooling.json` saying how it was built, so a
reader can judge it; `synth eval run` evaluates it like any BEIR folder.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synth.eval.beir import BeirData, load_beir, require_split, write_beir_files, write_folder
from synth.eval.evaluate import Retriever


@dataclass
class PoolStats:
    source: str
    split: str
    top_k: int
    seed: int
    retrievers: list[str]
    queries: int
    queries_in_source: int
    documents: int
    documents_in_source: int
    judged_documents: int
    added_by: dict[str, int] = field(default_factory=dict)  # documents only this pass added, per retriever
    seconds: float = 0.0


def pool_documents(
    data: BeirData, qrels: dict[str, dict[str, int]], retrievers: Sequence[Retriever], top_k: int
) -> tuple[set[str], dict[str, int]]:
    """Judged documents of the queries in `qrels`, plus each retriever's top_k for each query."""
    keep = {d for docs in qrels.values() for d in docs if d in data.corpus}
    doc_ids = list(data.corpus)
    texts = [data.doc_text(d) for d in doc_ids]
    queries = [data.queries[q] for q in qrels]
    added: dict[str, int] = {}
    for retriever in retrievers:
        before = len(keep)
        for run in retriever.rank(doc_ids, texts, queries, top_k):
            keep.update(run)
        added[retriever.name] = len(keep) - before
    return keep, added


def sample_queries(qrels: dict[str, dict[str, int]], max_queries: int | None, seed: int) -> dict[str, dict[str, int]]:
    if max_queries is None or max_queries >= len(qrels):
        return qrels
    chosen = set(random.Random(seed).sample(sorted(qrels), max_queries))
    return {q: docs for q, docs in qrels.items() if q in chosen}


def build_pooled(
    source: Path,
    out: Path,
    retrievers: Sequence[Retriever],
    *,
    split: str = "test",
    top_k: int = 250,
    max_queries: int | None = None,
    seed: int = 0,
) -> PoolStats:
    """Write the pooled split of the BEIR folder `source` to `out` (BEIR layout + card); returns its stats."""
    if top_k < 1:
        raise ValueError(f"top_k must be 1 or more, got {top_k}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be 1 or more, got {max_queries}")
    if not retrievers:
        raise ValueError("pooling needs at least one retriever")
    started = time.perf_counter()
    data = load_beir(source)
    all_qrels = require_split(data, split, source)
    qrels = sample_queries(all_qrels, max_queries, seed)
    keep, added = pool_documents(data, qrels, retrievers, top_k)
    stats = PoolStats(
        source=str(source),
        split=split,
        top_k=top_k,
        seed=seed,
        retrievers=[r.name for r in retrievers],
        queries=len(qrels),
        queries_in_source=len(all_qrels),
        documents=len(keep),
        documents_in_source=len(data.corpus),
        judged_documents=len({d for docs in qrels.values() for d in docs if d in data.corpus}),
        added_by=added,
    )
    corpus = [
        {"_id": d, "title": data.corpus[d]["title"], "text": data.corpus[d]["text"]} for d in data.corpus if d in keep
    ]
    queries = {q: data.queries[q] for q in qrels}
    stats.seconds = round(time.perf_counter() - started, 1)

    def fill(folder: Path) -> None:
        write_beir_files(folder, corpus, queries, qrels, split)
        (folder / "pooling.json").write_text(json.dumps(asdict(stats), indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(pool_card(stats), encoding="utf-8")

    write_folder(out, fill, inputs=[source])
    return stats


def pool_card(s: PoolStats) -> str:
    """The card: what was kept, from what, by which retrievers, and what that means for the numbers."""
    share = s.documents / s.documents_in_source if s.documents_in_source else 0.0
    added = "\n".join(f"| {name} | {n} |" for name, n in s.added_by.items())
    query_line = (
        f"all {s.queries} queries of the split"
        if s.queries == s.queries_in_source
        else f"{s.queries} of {s.queries_in_source} queries, sampled with seed {s.seed}"
    )
    return f"""# Pooled split of `{s.source}` ({s.split})

Built by `synth eval pool` the MMTEB way: every document judged for the kept queries, plus the top
{s.top_k} candidates that each retriever below returns for each kept query from the full corpus.

- Queries: {query_line}
- Documents: {s.documents} of {s.documents_in_source} ({share:.1%}); {s.judged_documents} judged for the kept queries
- Retrievers pooled (in order) and the documents each added beyond those before it:

| retriever | documents added |
|---|---:|
{added}

Layout: `corpus.jsonl`, `queries.jsonl`, `qrels/{s.split}.tsv` (the source's qrels for the kept
queries, unchanged); `pooling.json` holds these numbers.

What it means for the numbers: absolute scores differ from those on the full corpus (fewer
distractors raise them; a sample of queries moves them either way), so compare models with each
other on this split, not with scores on the full one.
The pooled retrievers' own top {s.top_k} are always present, which can favour them slightly;
check a few models on both splits (`synth eval run`) before trusting the ranking for new ones.

    synth eval run <this folder> --model all-minilm-l6-v2 --model bm25
"""
