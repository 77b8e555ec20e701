"""Round-trip consistency (Promptagator): a generated query must retrieve its own passage.

Optionally also GPL-style scale: generate several queries per passage (`sampling.n`, `each`) and
keep only the best `keep_best_per_source` of them per passage, best by the round-trip margin.

Why the margin (own passage's score minus the best other document's score under the scoring
embedder) decides which samples of one passage to keep:
- it is positive exactly when the own passage ranks first, so it refines Promptagator's
  criterion (keep queries whose passage is the top answer) instead of replacing it;
- the rank alone cannot choose: with several samples per passage most of them tie at rank 1;
- the raw score of the own passage would prefer queries that copy the passage's words, which
  score high against its near duplicates too; the margin prefers the query that singles out its
  passage among its nearest competitors, which is what a contrastive loss with (mined) negatives
  learns from, and the same quantity GPL's MarginMSE labels use (positive minus negative score).

Memory: rows come a batch at a time (`roundtrip_rows`; the filter step streams them from its
input shards), the corpus lives on disk (synth/steps/roundtrip_corpus.py), and what is held per
row is its own passage and margin (16 bytes), only when keeping the best per passage.
"""

from __future__ import annotations

import functools
import json
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from synth.embedders import Embedder
from synth.mining.ivf import FaissIndex
from synth.steps.base import Row, StepContext
from synth.steps.filter_common import Outcome, record, text_of
from synth.steps.filter_spec import RoundTripRule
from synth.steps.roundtrip_corpus import Batches, RoundTripCorpus, Scan, ivf_scan, scan

QUERY_BATCH = 16384  # queries embedded and scored at once (24 MiB of vectors at dim 384)
Dropped = Callable[[Row], None]


def roundtrip_rows(
    rule: RoundTripRule, batches: Batches, ctx: StepContext, step: str, dropped: Dropped, total: int = 0
) -> Iterator[Row]:
    """The rows that pass, in input order, with `<label>_rank` and `<label>_margin` columns.

    `batches()` starts a pass over the input rows (one pass; two with `corpus: positives`); every
    drop record goes to `dropped`, in row order, the keep-best ones after the misses. `total` (the
    number of rows, when known) only sizes the progress line.
    """
    embedder = ctx.embedder(rule.embedder)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return embedder.embed(list(texts), role="document")

    with tempfile.TemporaryDirectory(prefix="synth-roundtrip-") as tmp:
        folder = Path(tmp)
        size = len(ctx.documents) if rule.corpus == "source" else 0
        with ctx.progress.task(f"{step}: round-trip embedding corpus", size) as advance:
            if rule.corpus == "source":
                corpus = RoundTripCorpus.of_documents(ctx.documents, folder, embed, advance)
            else:
                corpus = RoundTripCorpus.of_positives(batches, rule.positive_column, folder, embed, advance)
        index = None
        try:
            scanner = ctx.scan or scan  # Ray: a map_batches stage; locally: here
            if rule.search == "faiss" and corpus.vectors is not None and len(corpus.vectors):
                with ctx.progress.task(f"{step}: round-trip clustering corpus (faiss)", 0):
                    index = FaissIndex(corpus.vectors, nprobe=rule.nprobe)
                scanner = functools.partial(ivf_scan, index, top_k=rule.top_k)
            with ctx.progress.task(f"{step}: round-trip scoring queries", total) as advance:
                passed = _passed(rule, corpus, embedder, scanner, batches, step, dropped, advance)
                if rule.keep_best_per_source is None:
                    yield from (row for row, _, _ in passed)
                else:
                    yield from _keep_best(rule, passed, folder / "passed.jsonl", step, dropped)
        finally:
            if index is not None:
                index.close()
            corpus.close()


def _passed(
    rule: RoundTripRule,
    corpus: RoundTripCorpus,
    embedder: Embedder,
    scanner: Callable[..., Scan],
    batches: Batches,
    step: str,
    dropped: Dropped,
    advance: Callable[[int], None],
) -> Iterator[tuple[Row, int, float]]:
    """(row with rank and margin, own passage, margin) of every row within `top_k`; the others dropped."""
    for batch in batches():
        for start in range(0, len(batch), QUERY_BATCH):
            rows = batch[start : start + QUERY_BATCH]
            targets = corpus.targets(rows, rule.id_column, rule.positive_column)
            found = np.flatnonzero(targets >= 0)
            queries = [text_of(rows[k], rule.query_column) for k in found]
            if corpus.vectors is not None and len(found):
                vectors = embedder.embed(queries, role="query")
                result = scanner(vectors, targets[found], corpus.vectors)
            at = {int(k): j for j, k in enumerate(found)}
            for k, row in enumerate(rows):  # drop records in row order
                query = text_of(row, rule.query_column)
                if k not in at:
                    dropped(record(step, rule, "positive_not_in_corpus", row, column=rule.query_column, value=query))
                    continue
                j = at[k]
                rank, margin = int(result.rank[j]), float(result.margin[j])
                if rank <= rule.top_k:
                    scored = {**row, f"{rule.label}_rank": rank, f"{rule.label}_margin": round(margin, 6)}
                    yield scored, int(targets[k]), margin
                    continue
                dropped(
                    record(
                        step, rule, "roundtrip_miss", row, column=rule.query_column, value=query, rank=rank,
                        top_k=rule.top_k, positive_score=round(float(result.own[j]), 6),
                        top_score=round(float(result.best_other[j]), 6), margin=round(margin, 6),
                        top_document=corpus.name(int(result.best_other_index[j])),
                    )
                )  # fmt: skip
            advance(len(rows))


def group_positions(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each item's place in its group, best score first (ties: the earlier item first); 0 = the best,
    so `< k` keeps the k best of each group."""
    if not len(groups):
        return np.zeros(0, np.int64)
    order = np.lexsort((np.arange(len(groups)), -scores, groups))
    sorted_groups = groups[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, len(order)]))
    positions = np.empty(len(order), np.int64)
    positions[order] = np.arange(len(order)) - starts
    return positions


def _keep_best(
    rule: RoundTripRule, passed: Iterator[tuple[Row, int, float]], spill: Path, step: str, dropped: Dropped
) -> Iterator[Row]:
    """Of the rows that passed, the `keep_best_per_source` with the largest margin per own passage.

    The rows wait in a file (`spill`) until every margin is known; memory holds 16 bytes a row.
    """
    k = rule.keep_best_per_source or 0
    targets, margins = array("q"), array("d")
    with spill.open("w", encoding="utf-8") as f:
        for row, target, margin in passed:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            targets.append(target)
            margins.append(margin)
    groups, scores = np.asarray(targets, np.int64), np.asarray(margins, np.float64)
    positions = group_positions(groups, scores)
    winners = np.flatnonzero(positions == 0)
    winner_of = dict(zip(groups[winners].tolist(), winners.tolist(), strict=True))  # passage -> best row
    crowded = set(groups[positions >= k].tolist())  # passages with a dropped row: their best query is named
    best_query: dict[int, str] = {}
    with spill.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if positions[i] == 0 and int(groups[i]) in crowded:
                best_query[int(groups[i])] = text_of(json.loads(line), rule.query_column)
    with spill.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if positions[i] < k:
                yield row
                continue
            best = winner_of[int(groups[i])]
            dropped(
                record(
                    step, rule, "roundtrip_not_best", row, column=rule.query_column,
                    value=text_of(row, rule.query_column), margin=round(float(scores[i]), 6),
                    best_margin=round(float(scores[best]), 6), keep_best_per_source=k,
                    best_query=best_query[int(groups[i])],
                )
            )  # fmt: skip


def apply_roundtrip(rule: RoundTripRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    """The rule over rows already in memory (a filter whose earlier rules needed every row)."""
    out = Outcome()
    if rows:
        out.kept = list(roundtrip_rows(rule, lambda: iter([list(rows)]), ctx, step, out.dropped.append, len(rows)))
    return out
