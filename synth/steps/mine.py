"""Mine step: embed queries, positives and a corpus, then pick margin-filtered hard negatives.

The selection rules live in synth/mining.py (pure numpy, tested on literal scores); this module
only gathers texts, builds the exclusion sets (own positive by id and by exact text) and turns
the result into columns and drop records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synth.io import load_documents
from synth.mining import MiningParams, mine
from synth.recipe import CorpusSpec, MineSpec
from synth.steps import Row, StepContext, StepResult, drop, stable_hash


class MineStep:
    def __init__(self, spec: MineSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = MiningParams(
            num_negatives=spec.num_negatives,
            range_min=spec.range_min,
            range_max=spec.range_max,
            max_score=spec.max_score,
            min_score=spec.min_score,
            absolute_margin=spec.absolute_margin,
            relative_margin=spec.relative_margin,
            sampling=spec.sampling,
            seed=spec.seed,
            chunk_size=spec.chunk_size,
        )

    def fingerprint(self, ctx: StepContext) -> str:
        return stable_hash({"spec": self.spec.model_dump(mode="json")})

    def corpus(self, rows: Sequence[Row], ctx: StepContext) -> list[Row]:
        """The documents negatives are drawn from: source docs, a column's unique texts, or a file."""
        corpus = self.spec.corpus
        if corpus == "source":
            return list(ctx.documents)
        assert isinstance(corpus, CorpusSpec)
        if corpus.column is not None:
            texts = dict.fromkeys(str(r[corpus.column]) for r in rows if r.get(corpus.column))
            return [{"id": f"{corpus.column}:{i}", "text": t} for i, t in enumerate(texts)]
        assert corpus.path is not None
        docs, _ = load_documents(corpus.path, corpus.format, corpus.text_column, corpus.id_column)
        return docs

    def _check_columns(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        for column in (self.spec.query_column, self.spec.positive_column):
            if column not in rows[0]:
                raise ValueError(
                    f"step {self.name!r}: no column {column!r} in the rows (columns: {', '.join(rows[0])})"
                )

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        spec = self.spec
        self._check_columns(rows)
        result = StepResult(rows=[])
        if not rows:
            return result
        docs = self.corpus(rows, ctx)
        doc_index_by_id = {str(d["id"]): i for i, d in enumerate(docs)}
        doc_index_by_text: dict[str, int] = {}
        for i, d in enumerate(docs):
            doc_index_by_text.setdefault(d["text"], i)
        queries = [str(r[spec.query_column]) for r in rows]
        positives = [str(r[spec.positive_column]) for r in rows]

        embedder = ctx.embedder()
        with ctx.progress.task(f"{self.name}: embedding corpus", len(docs)) as advance:
            corpus_emb = embedder.embed([d["text"] for d in docs], role="document", progress=advance)
        with ctx.progress.task(f"{self.name}: embedding queries", len(queries)) as advance:
            query_emb = embedder.embed(queries, role="query", progress=advance)
        # Positives already in the corpus reuse its vectors; only the others are embedded.
        missing = sorted({p for p in positives if p not in doc_index_by_text})
        extra = embedder.embed(missing, role="document") if missing else corpus_emb[:0]
        extra_index = {t: i for i, t in enumerate(missing)}
        positive_emb = (
            np.stack(
                [
                    corpus_emb[doc_index_by_text[p]] if p in doc_index_by_text else extra[extra_index[p]]
                    for p in positives
                ]
            )
            if positives
            else corpus_emb[:0]
        )

        exclude: list[set[int]] = []
        for row, positive in zip(rows, positives, strict=True):
            banned = set()
            if spec.positive_id_column and row.get(spec.positive_id_column) is not None:
                idx = doc_index_by_id.get(str(row[spec.positive_id_column]))
                if idx is not None:
                    banned.add(idx)
            if positive in doc_index_by_text:
                banned.add(doc_index_by_text[positive])
            exclude.append(banned)

        with ctx.progress.task(f"{self.name}: searching", len(rows)) as advance:
            mined = mine(query_emb, corpus_emb, positive_emb, exclude, self.params)
            advance(len(rows))

        need = spec.min_negatives or spec.num_negatives
        for row, m in zip(rows, mined, strict=True):
            if len(m.negatives) < need:
                result.dropped.append(
                    drop(
                        self.name,
                        "too_few_negatives",
                        row,
                        detail=f"{len(m.negatives)} of {need} needed survived the filters",
                        query=row[spec.query_column],
                        positive_score=m.positive_score,
                    )
                )
                continue
            new = dict(row)
            new["negatives"] = [docs[j]["text"] for j in m.negatives]
            new["negative_ids"] = [str(docs[j]["id"]) for j in m.negatives]
            new["negative_scores"] = [round(s, 6) for s in m.scores]
            new["positive_score"] = round(m.positive_score, 6)
            result.rows.append(new)
        result.stats = {"corpus_size": len(docs), "queries": len(rows)}
        return result
