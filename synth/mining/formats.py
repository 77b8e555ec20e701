"""Training-data layouts of a mining result, one function per trainer's format.

sentence-transformers (same rows and column names as its `mine_hard_negatives`):
  triplet       (anchor, positive, negative[, scores=[pos, neg]]), one row per positive x negative
  n-tuple       (anchor, positive, negative_1..n[, scores=[pos, n1..]]), rows with all n negatives
  labeled-pair  (anchor, positive=document, label 1/0 | score), positives then negatives
  labeled-list  (anchor, positive=[pos, negs...], labels=[1, 0...] | scores=[...])
  pair-score    (sentence1=query, sentence2=document, score): CoSENTLoss / CosineSimilarityLoss as is
FlagEmbedding:  {query, pos: [...], neg: [...], pos_scores, neg_scores, prompt}, one line per query
MarginMSE:      {query, positive, negative, label = score(pos) - score(neg)} (GPL-style)
listwise:       {query, documents: [...], scores: [...]}, one line per query, ordered by the teacher
                (E2Rank-style distillation; CrossEncoder ListNet/LambdaLoss take it as is)
BEIR folder:    corpus.jsonl, queries.jsonl, qrels/train.tsv (positives, score 1)

Promoted false negatives (`false_negatives: promote`) are positives everywhere: one row per
positive in triplet / n-tuple / labeled-pair / marginmse, extra 1-labels in each labeled-list row,
in FlagEmbedding's `pos`, in listwise lists and in the BEIR qrels.

`write_formats` is the one writer of these files, for the recipe step and for `synth mine`.
Scores a judge could not give (NaN) are written as NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.mining.result import MinedQuery, MiningResult
from synth.mining.spec import FORMAT_NAMES

Row = dict[str, Any]


@dataclass(frozen=True)
class FormatOptions:
    anchor: str = "anchor"
    positive: str = "positive"
    output_scores: bool = False
    num_negatives: int = 3
    teacher: str | None = None  # whose scores to export; None = the scores that drove the margins
    prompt: str = ""  # FlagEmbedding's query instruction


def _scores(m: MinedQuery, teacher: str | None) -> tuple[list[float], list[float]]:
    if teacher is None:
        return m.positive_scores, m.negative_scores
    values = m.teachers[teacher]
    return values[: len(m.positives)], values[len(m.positives) :]


def _pairs(result: MiningResult, opts: FormatOptions) -> Iterator[tuple[MinedQuery, str, list[float], list[float]]]:
    for m in result.mined:
        pos, neg = _scores(m, opts.teacher)
        yield m, result.queries[m.query], pos, neg


def triplet(result: MiningResult, opts: FormatOptions) -> list[Row]:
    rows = []
    for m, q, pos, neg in _pairs(result, opts):
        for p, ps in zip(m.positives, pos, strict=True):
            for n, ns in zip(m.negatives, neg, strict=True):
                row = {opts.anchor: q, opts.positive: result.corpus[p], "negative": result.corpus[n]}
                if opts.output_scores:
                    row["scores"] = [ps, ns]
                rows.append(row)
    return rows


def n_tuple(result: MiningResult, opts: FormatOptions) -> list[Row]:
    rows = []
    for m, q, pos, neg in _pairs(result, opts):
        if len(m.negatives) < opts.num_negatives:
            continue
        for p, ps in zip(m.positives, pos, strict=True):
            row = {opts.anchor: q, opts.positive: result.corpus[p]}
            row.update({f"negative_{j}": result.corpus[n] for j, n in enumerate(m.negatives, start=1)})
            if opts.output_scores:
                row["scores"] = [ps, *neg]
            rows.append(row)
    return rows


def labeled_pair(result: MiningResult, opts: FormatOptions) -> list[Row]:
    rows = []
    key = "score" if opts.output_scores else "label"
    for m, q, pos, neg in _pairs(result, opts):
        for d, s, label in [(p, ps, 1) for p, ps in zip(m.positives, pos, strict=True)] + [
            (n, ns, 0) for n, ns in zip(m.negatives, neg, strict=True)
        ]:
            rows.append({opts.anchor: q, opts.positive: result.corpus[d], key: s if opts.output_scores else label})
    return rows


def labeled_list(result: MiningResult, opts: FormatOptions) -> list[Row]:
    """One row per given positive: [it, the promoted positives, the negatives], labels 1.. then 0.."""
    rows = []
    for m, q, pos, neg in _pairs(result, opts):
        if not m.negatives:
            continue
        given = len(m.given)
        extra, extra_scores = m.promoted, pos[given:]
        for p, ps in zip(m.given, pos[:given], strict=True):
            docs = [result.corpus[d] for d in [p, *extra, *m.negatives]]
            row: Row = {opts.anchor: q, opts.positive: docs}
            if opts.output_scores:
                row["scores"] = [ps, *extra_scores, *neg]
            else:
                row["labels"] = [1] * (1 + len(extra)) + [0] * len(m.negatives)
            rows.append(row)
    return rows


def pair_score(result: MiningResult, opts: FormatOptions) -> list[Row]:
    """(sentence1, sentence2, score) per positive and negative: the teacher's score, as scored pairs."""
    return [
        {"sentence1": q, "sentence2": result.corpus[d], "score": s}
        for m, q, pos, neg in _pairs(result, opts)
        for d, s in zip(m.positives + m.negatives, pos + neg, strict=True)
    ]


def listwise(result: MiningResult, opts: FormatOptions) -> list[Row]:
    """Every positive and negative of a query, best first by the teacher (unscored, NaN, last)."""
    rows = []
    for m, q, pos, neg in _pairs(result, opts):
        if not m.negatives:
            continue
        docs, scores = m.positives + m.negatives, pos + neg
        # Stable sort: ties keep positives first; NaN (unscored) sorts after every score.
        order = sorted(range(len(docs)), key=lambda j: math.inf if math.isnan(scores[j]) else -scores[j])
        rows.append(
            {"query": q, "documents": [result.corpus[docs[j]] for j in order], "scores": [scores[j] for j in order]}
        )
    return rows


def flag_embedding(result: MiningResult, opts: FormatOptions) -> list[Row]:
    return [
        {
            "query": q,
            "pos": [result.corpus[p] for p in m.positives],
            "neg": [result.corpus[n] for n in m.negatives],
            "pos_scores": pos,
            "neg_scores": neg,
            "prompt": opts.prompt,
        }
        for m, q, pos, neg in _pairs(result, opts)
        if m.negatives
    ]


def margin_mse(result: MiningResult, opts: FormatOptions) -> list[Row]:
    return [
        {"query": q, "positive": result.corpus[p], "negative": result.corpus[n], "label": ps - ns}
        for m, q, pos, neg in _pairs(result, opts)
        for p, ps in zip(m.positives, pos, strict=True)
        for n, ns in zip(m.negatives, neg, strict=True)
    ]


ROW_FORMATS: dict[str, Callable[[MiningResult, FormatOptions], list[Row]]] = {
    "triplet": triplet,
    "n-tuple": n_tuple,
    "labeled-pair": labeled_pair,
    "labeled-list": labeled_list,
    "flagembedding": flag_embedding,
    "marginmse": margin_mse,
    "listwise": listwise,
    "pair-score": pair_score,
}
FORMATS = FORMAT_NAMES  # the row formats above, then "beir" (a test holds them equal)


def write_beir(result: MiningResult, folder: str | Path) -> Path:
    """BEIR layout: every corpus text (ids d0..), queries with a positive (q0..), train qrels."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, text in enumerate(result.corpus):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for m in result.mined:
            f.write(json.dumps({"_id": f"q{m.query}", "text": result.queries[m.query]}, ensure_ascii=False) + "\n")
    with (folder / "qrels" / "train.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for m in result.mined:
            for p in m.positives:
                f.write(f"q{m.query}\td{p}\t1\n")
    return folder


def write_jsonl(path: str | Path, rows: list[Row]) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_formats(result: MiningResult, folder: str | Path, formats: Sequence[str], opts: FormatOptions) -> list[Path]:
    """Write each asked format beside each other: <format>.jsonl, or beir/ for the BEIR folder."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in formats:
        if name == "beir":
            written.append(write_beir(result, folder / "beir"))
        else:
            written.append(write_jsonl(folder / f"{name}.jsonl", ROW_FORMATS[name](result, opts)))
    return written
