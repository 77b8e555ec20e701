"""The `mine_negatives` step: the recipe's face of the mining engine (synth/mining/engine.py).

Why a thin layer: guards, rescoring (a cross-encoder or a named LLM as a judge), teacher scores
and every export format live in synth/mining/, shared with `synth mine`; this module picks the
corpus, groups the rows (synth/mining/engine.py `group_pairs`), turns the result into columns and
drop records, and keeps the result so `write_extras` can write the extra formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synth.backends import Messages
from synth.mining.engine import group_pairs, run_mining
from synth.mining.formats import FormatOptions, write_formats
from synth.mining.rescore import CrossEncoderRescorer, LLMJudgeRescorer, Rescorer
from synth.mining.result import MinedQuery, MiningResult
from synth.mining.spec import CorpusSpec, MineSpec
from synth.mining.stream import Batches, StreamedMining
from synth.progress import Advance, Progress
from synth.prompts import PromptLibrary
from synth.sources import load_documents
from synth.steps.base import Row, Step, StepContext, StepResult, drop, stable_hash

NEW_COLUMNS = ("negatives", "negative_ids", "negative_scores", "positive_score")


class _Named:
    """Progress lines prefixed with the step's name."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress, self.name = progress, name

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        with self.progress.task(f"{self.name}: {description}", total) as advance:
            yield advance


class MineNegativesStep(Step):
    key = "mine_negatives"
    spec_type = MineSpec
    spec: MineSpec

    def __init__(self, spec: MineSpec) -> None:
        super().__init__(spec)
        self.result: MiningResult | None = None  # kept for write_extras

    def fingerprint(self, ctx: StepContext) -> str:
        judged = "llm" in self.spec.scorers
        template = ctx.prompts.fingerprint(self.spec.judge_template) if judged else None
        return stable_hash({"spec": self.spec.model_dump(mode="json"), "template": template})

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

    def streams(self) -> bool:
        """Whether this step can read its rows a batch at a time (synth/mining/stream.py): the plain
        case, embedder scores (exact or faiss search). Judges, guards, extra formats and a corpus
        made of a column's texts need every row at once (`__call__`)."""
        spec = self.spec
        column_corpus = spec.corpus != "source" and getattr(spec.corpus, "column", None) is not None
        guarded = spec.near_duplicate_ratio is not None or spec.near_duplicate_cosine is not None
        return not (spec.scorers or spec.formats or guarded or column_corpus)

    def stream(self, batches: Batches, ctx: StepContext, drops: Path, total: int = 0) -> StepResult | None:
        """The step over rows it reads from its input a pass at a time (`batches()` starts one), in
        bounded memory; None when it cannot (see `streams`). The result's `rows` is an iterator
        (the output rows, in input order) that writes the drop records to `drops` as it goes.
        `total` (the input's rows) sizes the grouping pass's progress line.
        """
        if not self.streams():
            return None
        spec = self.spec
        drops.parent.mkdir(parents=True, exist_ok=True)
        first = next((b[0] for b in batches() if b), None)
        if first is None:
            drops.write_text("", encoding="utf-8")
            return StepResult(rows=[])
        if missing := self.missing_columns(first, [spec.query_column, spec.positive_column]):
            raise ValueError(missing[0])
        mining = StreamedMining(
            spec,
            ctx.embedder(spec.embedder),
            query_column=spec.query_column,
            positive_column=spec.positive_column,
            positive_id_column=spec.positive_id_column,
            progress=_Named(ctx.progress, self.name),
            search=ctx.search if spec.search == "exact" else None,
        )
        try:
            if spec.corpus == "source":
                docs: Iterable[Row] = ctx.documents
            else:
                assert isinstance(spec.corpus, CorpusSpec) and spec.corpus.path is not None
                c = spec.corpus
                docs, _ = load_documents(c.path, c.format, c.text_column, c.id_column)
            documents = mining.add_documents(docs)
            del docs
            with ctx.progress.task(f"{self.name}: grouping rows", total) as advance:  # ~1 min at 2M rows

                def counted() -> Iterator[list[Row]]:
                    for batch in batches():
                        yield batch
                        advance(len(batch))

                plan = mining.plan_rows(counted, documents)
            mined = mining.run(batches)
        except BaseException:
            mining.close()
            raise
        stats: dict[str, Any] = {"corpus_size": len(mining.store), "queries": plan.groups, "removed": mined.totals()}
        if mining.searched_elsewhere:  # by the executor (Ray: a map_batches stage), not in this process
            stats["executor_search_batches"] = mining.searched_elsewhere
        if spec.false_negative_bound is not None:  # as run_mining reports it; nothing is promoted without a judge
            found = int(mined.removed[:, mined.removed_keys.index("false_negative")].sum())
            fn = {"mode": spec.false_negatives, "margin": spec.false_negative_bound, "found": found}
            stats["false_negatives"] = {**fn, "promoted": 0, "queries_with_promoted": 0, "promoted_rows": 0}
        return StepResult(rows=self._streamed_rows(mining, batches, drops), stats=stats)  # type: ignore[arg-type]

    def _streamed_rows(self, mining: StreamedMining, batches: Batches, drops: Path) -> Iterator[Row]:
        """`mining`'s output rows; a row short of negatives becomes a drop record in `drops`, as `__call__` words it."""
        spec, need = self.spec, self.spec.min_negatives or self.spec.num_negatives
        try:
            with drops.open("w", encoding="utf-8") as f:

                def dropped(row: Row, found: int, positive_score: float, removed: dict[str, int]) -> None:
                    record = drop(
                        self.name,
                        "too_few_negatives",
                        row,
                        detail=f"{found} of {need} needed survived the filters",
                        query=row[spec.query_column],
                        positive_score=positive_score,
                        removed=removed,
                    )
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")

                yield from mining.rows(batches, need, dropped)
        finally:
            mining.close()

    def _judge_messages(self, prompts: PromptLibrary, query: str, text: str) -> Messages:
        return prompts.render(self.spec.judge_template, {"query": query, "text": text})  # type: ignore[return-value]

    def _scorer(self, kind: str, ctx: StepContext) -> Rescorer:
        if kind == "cross_encoder":
            assert self.spec.cross_encoder is not None
            return CrossEncoderRescorer(self.spec.cross_encoder)
        return LLMJudgeRescorer(ctx.llm(self.spec.llm), render=lambda q, t: self._judge_messages(ctx.prompts, q, t))

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        spec = self.spec
        if rows and (missing := self.missing_columns(rows[0], [spec.query_column, spec.positive_column])):
            raise ValueError(missing[0])
        result = StepResult(rows=[])
        if not rows:
            return result
        docs = self.corpus(rows, ctx)
        pairs = group_pairs(
            [str(r[spec.query_column]) for r in rows],
            [str(r[spec.positive_column]) for r in rows],
            [str(d["text"]) for d in docs],
            positives_are_documents=False,
        )
        # A row's own source document is never its negative, whatever its text (ids differ).
        by_id = {str(d["id"]): i for i, d in enumerate(docs)}
        exclude: list[set[int]] = [set() for _ in pairs.queries]
        if spec.positive_id_column:
            for row, (g, _) in zip(rows, pairs.pair_at, strict=True):
                di = by_id.get(str(row.get(spec.positive_id_column)))
                if row.get(spec.positive_id_column) is not None and di is not None:
                    exclude[g].add(di)

        rescorer = self._scorer(spec.rescore, ctx) if spec.rescore else None
        teachers = [self._scorer(t, ctx) for t in spec.teachers]
        mined = run_mining(
            pairs.queries,
            pairs.positives,
            pairs.corpus,
            ctx.embedder(spec.embedder),
            spec,
            searchable=pairs.searchable,
            exclude_extra=exclude,
            guards=spec,
            rescorer=rescorer,
            teachers=teachers,
            fuse=spec.fuse,
            progress=_Named(ctx.progress, self.name),
        )
        self.result = mined
        for scorer in [rescorer, *teachers]:
            if isinstance(scorer, LLMJudgeRescorer):
                result.usage.add(scorer.usage)

        texts = pairs.corpus
        need = spec.min_negatives or spec.num_negatives
        with_teachers = rescorer is not None or bool(teachers)
        promoting = spec.false_negatives == "promote"
        first_of_group: set[int] = set()
        for row, (g, pi) in zip(rows, pairs.pair_at, strict=True):
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
            if promoting:
                new["promoted"] = False
            result.rows.append(new)
            if m.promoted and g not in first_of_group:  # one row per promoted positive, once per query
                first_of_group.add(g)
                result.rows.extend(self._promoted_rows(new, m, texts, docs, with_teachers))
        result.stats = {"corpus_size": len(docs), "queries": len(pairs.queries), "removed": mined.stats["removed"]}
        if "false_negatives" in mined.stats:  # + the promoted rows written (a query short of negatives has none)
            written = sum(bool(r.get("promoted")) for r in result.rows)
            result.stats["false_negatives"] = {**mined.stats["false_negatives"], "promoted_rows": written}  # type: ignore[dict-item]
        if "unscored" in mined.stats:
            result.stats["unscored"] = mined.stats["unscored"]
        return result

    def _promoted_rows(
        self, row: Row, m: MinedQuery, texts: Sequence[str], docs: Sequence[Row], with_teachers: bool
    ) -> list[Row]:
        """The query's row again for each promoted positive: the plain anchor/positive layout, one row per positive."""
        out = []
        k = len(m.positives)
        for j, d in enumerate(m.promoted):
            at = k - len(m.promoted) + j
            new = {**row, self.spec.positive_column: texts[d], "promoted": True, "promoted_id": str(docs[d]["id"])}
            new["positive_score"] = round(m.positive_scores[at], 6)
            if with_teachers:
                new["teacher_scores"] = {name: [round(v, 6) for v in [s[at], *s[k:]]] for name, s in m.teachers.items()}
            out.append(new)
        return out

    def preview(self, row: Row) -> Row:
        new = dict(row)
        new["negatives"] = [f"<negative mined by {self.name}>"]
        new["negative_ids"] = [f"<id of a negative mined by {self.name}>"]
        new["negative_scores"] = [0.0]
        new["positive_score"] = 0.0
        if self.spec.scorers:
            new["teacher_scores"] = {"embedder": [0.0, 0.0]}
        if self.spec.false_negatives == "promote":
            new["promoted"] = False
        return new

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        found = self.missing_columns(row, [self.spec.query_column, self.spec.positive_column])
        if not found and "llm" in self.spec.scorers:
            try:
                self.messages(row, prompts, "0")
            except ValueError as e:
                found.append(f"step {self.name!r}: {e}")
        return found

    def messages(self, row: Row, prompts: PromptLibrary, label: str) -> list[Messages]:
        """The LLM judge's question about this row's own positive (the step asks it of every candidate)."""
        if "llm" not in self.spec.scorers:
            return super().messages(row, prompts, label)
        query, text = str(row[self.spec.query_column]), str(row[self.spec.positive_column])
        return [self._judge_messages(prompts, query, text)]

    def write_extras(self, folder: Path) -> list[Path]:
        """The recipe's `formats` into <output>/<step name>/ (called on the temp output folder)."""
        if not self.spec.formats or self.result is None:
            return []
        opts = FormatOptions(
            output_scores=self.spec.output_scores, num_negatives=self.spec.num_negatives, teacher=self.spec.teacher
        )
        return write_formats(self.result, Path(folder) / self.name, self.spec.formats, opts)
