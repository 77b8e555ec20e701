"""Mine step: the recipe's face of the mining engine (synth/mine_engine.py).

Why a thin layer: guards, rescoring (cross-encoder or the recipe's LLM as a judge), teacher scores
and every export format live in the engine, shared with `synth mine`; this module gathers texts,
groups identical queries (their positives are shared: none may be another copy's negative, and
margins use the lowest positive score), turns the result into columns and drop records, and keeps
the mined result so the runner can write the extra formats into the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from synth.formats import ROW_FORMATS, FormatOptions, write_beir, write_jsonl
from synth.io import load_documents
from synth.mine_engine import Advance, Guards, MiningResult, run_mining
from synth.mining import MiningParams
from synth.recipe import CorpusSpec, MineSpec
from synth.rescore import CrossEncoderRescorer, LLMJudgeRescorer, Rescorer
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
            st_compatible=spec.st_compatible,
            search=spec.search,
            nprobe=spec.nprobe,
        )
        self.result: MiningResult | None = None  # kept for write_extras

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

    def _scorer(self, kind: str, ctx: StepContext) -> Rescorer:
        if kind == "cross_encoder":
            assert self.spec.cross_encoder is not None
            return CrossEncoderRescorer(self.spec.cross_encoder)
        template = self.spec.judge_template

        def render(query: str, text: str) -> list[dict[str, str]]:
            return ctx.prompts.render(template, {"query": query, "text": text})  # type: ignore[return-value]

        return LLMJudgeRescorer(ctx.llm(), render=render)

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        spec = self.spec
        self._check_columns(rows)
        result = StepResult(rows=[])
        if not rows:
            return result
        docs = self.corpus(rows, ctx)
        texts = [str(d["text"]) for d in docs]
        by_id = {str(d["id"]): i for i, d in enumerate(docs)}
        by_text: dict[str, int] = {}
        for i, t in enumerate(texts):
            by_text.setdefault(t, i)
        # Positives that are not documents are appended after the corpus: embedded, never searched.
        extra: dict[str, int] = {}
        groups: dict[str, int] = {}
        positives: list[list[int]] = []
        by_id_exclude: list[set[int]] = []
        row_at: list[tuple[int, int]] = []  # (group, positive index) per row
        for row in rows:
            q, p = str(row[spec.query_column]), str(row[spec.positive_column])
            pi = by_text.get(p)
            if pi is None:
                pi = extra.setdefault(p, len(texts) + len(extra))
            g = groups.setdefault(q, len(groups))
            if g == len(positives):
                positives.append([])
                by_id_exclude.append(set())
            if pi not in positives[g]:
                positives[g].append(pi)
            if spec.positive_id_column and row.get(spec.positive_id_column) is not None:
                di = by_id.get(str(row[spec.positive_id_column]))
                if di is not None:
                    by_id_exclude[g].add(di)
            row_at.append((g, pi))

        rescorer = self._scorer(spec.rescore, ctx) if spec.rescore else None
        teachers = [self._scorer(t, ctx) for t in spec.teachers]

        def task(description: str, total: int) -> AbstractContextManager[Advance]:
            return ctx.progress.task(f"{self.name}: {description}", total)

        mined = run_mining(
            list(groups),
            positives,
            texts + list(extra),
            ctx.embedder(),
            self.params,
            searchable=len(texts),
            exclude_extra=by_id_exclude,
            guards=Guards(spec.near_duplicate_ratio, spec.near_duplicate_cosine),
            rescorer=rescorer,
            teachers=teachers,
            fuse=spec.fuse,
            task=task,
        )
        self.result = mined
        for scorer in [rescorer, *teachers]:
            if isinstance(scorer, LLMJudgeRescorer):
                result.requests += scorer.requests
                result.prompt_tokens += scorer.prompt_tokens
                result.completion_tokens += scorer.completion_tokens

        need = spec.min_negatives or spec.num_negatives
        with_teachers = rescorer is not None or bool(teachers)
        for row, (g, pi) in zip(rows, row_at, strict=True):
            m = mined.mined[g]
            at = m.positives.index(pi)
            if len(m.negatives) < need:
                result.dropped.append(
                    drop(
                        self.name,
                        "too_few_negatives",
                        row,
                        detail=f"{len(m.negatives)} of {need} needed survived the filters",
                        query=row[spec.query_column],
                        positive_score=m.positive_scores[at],
                        removed=m.removed,
                    )
                )
                continue
            new = dict(row)
            new["negatives"] = [texts[j] for j in m.negatives]
            new["negative_ids"] = [str(docs[j]["id"]) for j in m.negatives]
            new["negative_scores"] = [round(s, 6) for s in m.negative_scores]
            new["positive_score"] = round(m.positive_scores[at], 6)
            if with_teachers:  # soft labels: this row's positive, then its negatives, per teacher
                k = len(m.positives)
                new["teacher_scores"] = {name: [round(v, 6) for v in [s[at], *s[k:]]] for name, s in m.teachers.items()}
            result.rows.append(new)
        result.stats = {"corpus_size": len(docs), "queries": len(groups), "removed": mined.stats["removed"]}
        return result

    def write_extras(self, folder: Path) -> list[Path]:
        """The recipe's `formats` into <output>/<step name>/ (called on the temp output folder)."""
        if not self.spec.formats or self.result is None:
            return []
        target = Path(folder) / self.name
        target.mkdir(parents=True, exist_ok=True)
        opts = FormatOptions(
            output_scores=self.spec.output_scores, num_negatives=self.spec.num_negatives, teacher=self.spec.teacher
        )
        written = []
        for name in self.spec.formats:
            if name == "beir":
                written.append(write_beir(self.result, target / "beir"))
            else:
                written.append(write_jsonl(target / f"{name}.jsonl", ROW_FORMATS[name](self.result, opts)))
        return written
