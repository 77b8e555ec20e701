"""LIMIT-style stress sets: "Who likes X?" over documents listing what each person likes.

Why: Weller et al. (2025, "On the Theoretical Limitations of Embedding-Based Retrieval") show
that a single vector cannot represent every top-k subset of documents once there are enough of
them, and build a set where that bites with trivial language: each query names one attribute,
and exactly k documents like it. The relevant sets are the first `queries` k-subsets of the n
"core" documents, with n the smallest number such that C(n, k) >= queries (46 for 1000 queries
and k = 2), so every pair of core documents must come back together for some query. Each
document then gets more attributes (never a query's) up to `attributes_per_doc`. The small
version is the n core documents; the full one adds distractor people up to `documents`.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from synth.eval.beir import EvalSetError, write_beir_files, write_folder
from synth.eval.longembed import DATA, person_names

Size = Literal["small", "full"]


def smallest_n(queries: int, k: int) -> int:
    """The smallest n with C(n, k) >= queries."""
    n = k
    while math.comb(n, k) < queries:
        n += 1
    return n


def load_vocabulary(path: Path | None = None) -> list[str]:
    """Attributes one per line (blank lines and duplicates ignored): the shipped list or your own file."""
    path = path or DATA / "attributes.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalSetError(f"{path}: cannot read the attribute vocabulary ({e})") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


@dataclass
class LimitStats:
    size: str
    queries: int
    k: int
    core_documents: int  # n: smallest with C(n, k) >= queries
    documents: int
    attributes_per_doc: int
    vocabulary: int
    vocabulary_source: str
    seed: int


def build_limit_set(
    *,
    queries: int = 1000,
    k: int = 2,
    size: Size = "small",
    documents: int = 50_000,
    attributes_per_doc: int = 45,
    vocabulary: list[str] | None = None,
    seed: int = 0,
) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]], int]:
    """(corpus rows, queries, qrels, n): the set in memory; EvalSetError when sizes and vocabulary do not fit."""
    vocab = vocabulary if vocabulary is not None else load_vocabulary()
    if queries < 1 or k < 1:
        raise EvalSetError(f"queries and k must be 1 or more (got queries={queries}, k={k})")
    if k > len(vocab):
        raise EvalSetError(f"k={k} is larger than the attribute vocabulary ({len(vocab)} attributes)")
    n = smallest_n(queries, k)
    total = n if size == "small" else documents
    if size == "full" and documents < n:
        raise EvalSetError(f"the full set needs at least the {n} core documents; --documents is {documents}")
    if queries > len(vocab):
        raise EvalSetError(
            f"{queries} queries need {queries} distinct attributes; the vocabulary has {len(vocab)} "
            "(give a larger one or fewer queries)"
        )
    rng = np.random.default_rng(seed)
    shuffled = [vocab[int(i)] for i in rng.permutation(len(vocab))]
    query_items, fillers = shuffled[:queries], shuffled[queries:]
    if size == "full" and len(fillers) < attributes_per_doc:
        raise EvalSetError(
            f"distractor documents need {attributes_per_doc} attributes outside the {queries} queried ones; "
            f"the vocabulary has {len(fillers)} left (give a larger one, fewer queries or --attributes-per-doc)"
        )
    likes: list[list[str]] = [[] for _ in range(total)]
    core = rng.permutation(n)  # which document plays core position i: relevant sets land on random names
    qrels: dict[str, dict[str, int]] = {}
    for q, combo in enumerate(itertools.islice(itertools.combinations(range(n), k), queries)):
        for position in combo:
            likes[int(core[position])].append(query_items[q])
        qrels[f"q{q}"] = {f"d{int(core[p])}": 1 for p in combo}
    for items in likes:
        need = attributes_per_doc - len(items)
        if need > 0:
            picks = rng.choice(len(fillers), size=min(need, len(fillers)), replace=False)
            items.extend(fillers[int(i)] for i in picks)
    names = person_names(total, rng)
    corpus = []
    for d, (name, items) in enumerate(zip(names, likes, strict=True)):
        order = [items[int(i)] for i in rng.permutation(len(items))]
        listed = order[0] if len(order) == 1 else f"{', '.join(order[:-1])} and {order[-1]}"
        corpus.append({"_id": f"d{d}", "title": "", "text": f"{name} likes {listed}."})
    query_texts = {f"q{q}": f"Who likes {item}?" for q, item in enumerate(query_items)}
    return corpus, query_texts, qrels, n


def build_limit(
    out: Path,
    *,
    queries: int = 1000,
    k: int = 2,
    size: Size = "small",
    documents: int = 50_000,
    attributes_per_doc: int = 45,
    vocabulary_path: Path | None = None,
    seed: int = 0,
) -> LimitStats:
    """Write a LIMIT-style BEIR folder (test split) with a card to `out`; returns its stats."""
    vocab = load_vocabulary(vocabulary_path)
    corpus, query_texts, qrels, n = build_limit_set(
        queries=queries,
        k=k,
        size=size,
        documents=documents,
        attributes_per_doc=attributes_per_doc,
        vocabulary=vocab,
        seed=seed,
    )
    source = str(vocabulary_path) if vocabulary_path else "shipped (synth/eval/data/attributes.txt)"
    stats = LimitStats(size, queries, k, n, len(corpus), attributes_per_doc, len(vocab), source, seed)

    def fill(folder: Path) -> None:
        write_beir_files(folder, corpus, query_texts, qrels)
        (folder / "limit.json").write_text(json.dumps(asdict(stats), indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(limit_card(stats), encoding="utf-8")

    write_folder(out, fill, inputs=[vocabulary_path] if vocabulary_path else [])
    return stats


def limit_card(s: LimitStats) -> str:
    extra = (
        f"the {s.core_documents} core documents only"
        if s.size == "small"
        else f"the {s.core_documents} core documents plus {s.documents - s.core_documents} distractor people"
    )
    return f"""# LIMIT-style set ({s.size}): {s.queries} queries, k = {s.k}, {s.documents} documents

Built by `synth eval limit` after Weller et al. (2025), "On the Theoretical Limitations of
Embedding-Based Retrieval". Documents read "NAME likes A, B, ... and Z."; each query is "Who likes
X?" and exactly {s.k} documents like X. The relevant sets are the first {s.queries} {s.k}-subsets of
the n = {s.core_documents} core documents, n being the smallest with C(n, {s.k}) >= {s.queries}; every
document lists {s.attributes_per_doc} attributes (or more, when it is relevant to more queries),
those beyond its queries drawn from attributes no query uses. This folder holds {extra}.

- Attribute vocabulary: {s.vocabulary} attributes, {s.vocabulary_source}; seed {s.seed}
- Layout: `corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`; `limit.json` holds these numbers

Lexical matching solves it (BM25 is near perfect in the paper); single-vector embedders fall far
short, and the paper reports they cannot solve even the small version. Report recall@2 and @10:

    synth eval run <this folder> --model bm25 --model all-minilm-l6-v2 --recall-at 2 --recall-at 10
"""
