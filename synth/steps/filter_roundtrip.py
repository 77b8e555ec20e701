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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synth.steps.base import Row, StepContext
from synth.steps.filter_common import Outcome, record, text_of
from synth.steps.filter_spec import RoundTripRule

_CHUNK = 1024  # queries scored against the corpus per matrix product


def _corpus(rule: RoundTripRule, rows: Sequence[Row], ctx: StepContext) -> tuple[list[str], list[int]]:
    """(corpus texts, each row's own-passage index into them; -1 when it is not in the corpus)."""
    if rule.corpus == "source":
        corpus = [text_of(d, "text") for d in ctx.documents]
        by_id = {str(d["id"]): i for i, d in enumerate(ctx.documents)}
    else:
        corpus = list(dict.fromkeys(text_of(r, rule.positive_column) for r in rows))
        by_id = {}
    by_text: dict[str, int] = {}
    for i, t in enumerate(corpus):
        by_text.setdefault(t, i)
    targets = []
    for row in rows:
        target = by_id.get(text_of(row, rule.id_column))
        targets.append(target if target is not None else by_text.get(text_of(row, rule.positive_column), -1))
    return corpus, targets


def margins(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row of `scores` (queries x documents): own-passage score, its rank (1 = best), and the
    margin own - best other document (own alone when the corpus holds one document). Every target >= 0."""
    rows = np.arange(len(targets))
    own = scores[rows, targets]  # a copy (fancy indexing)
    rank = np.sum(scores > own[:, None], axis=1) + 1
    if scores.shape[1] < 2:
        return own, rank, own.copy()
    scores[rows, targets] = -np.inf  # in place, then restored: no second queries x corpus matrix
    best_other = scores.max(axis=1)
    scores[rows, targets] = own
    return own, rank, own - best_other


def apply_roundtrip(rule: RoundTripRule, rows: Sequence[Row], ctx: StepContext, step: str) -> Outcome:
    out = Outcome()
    if not rows:
        return out
    corpus, targets = _corpus(rule, rows, ctx)
    queries = [text_of(r, rule.query_column) for r in rows]
    embedder = ctx.embedder(rule.embedder)
    with ctx.progress.task(f"{step}: round-trip embedding corpus", len(corpus)) as advance:
        doc_emb = embedder.embed(corpus, role="document", progress=advance)
    with ctx.progress.task(f"{step}: round-trip embedding queries", len(queries)) as advance:
        query_emb = embedder.embed(queries, role="query", progress=advance)
    kept_margin: list[float] = []  # per row of out.kept: its margin and own-passage index
    kept_target: list[int] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = range(start, min(start + _CHUNK, len(rows)))
        found = [k for k in chunk if targets[k] >= 0]
        scores = query_emb[found] @ doc_emb.T
        own, rank, margin = margins(scores, np.asarray([targets[k] for k in found], dtype=np.int64))
        at = {k: j for j, k in enumerate(found)}
        for k in chunk:  # drop records in row order
            row = rows[k]
            if k not in at:
                out.dropped.append(
                    record(step, rule, "positive_not_in_corpus", row, column=rule.query_column, value=queries[k])
                )
                continue
            j = at[k]
            r, m = int(rank[j]), float(margin[j])
            if r <= rule.top_k:
                kept_margin.append(m)
                kept_target.append(targets[k])
                out.kept.append({**row, f"{rule.label}_rank": r, f"{rule.label}_margin": round(m, 6)})
                continue
            best = int(np.argmax(scores[j]))
            out.dropped.append(
                record(
                    step, rule, "roundtrip_miss", row, column=rule.query_column, value=queries[k], rank=r,
                    top_k=rule.top_k, positive_score=round(float(own[j]), 6), top_score=round(float(scores[j][best]), 6),
                    margin=round(m, 6),
                    top_document=str(ctx.documents[best]["id"]) if rule.corpus == "source" else corpus[best][:200],
                )
            )  # fmt: skip
    if rule.keep_best_per_source is not None:
        _keep_best(rule, out, kept_margin, kept_target, step)
    return out


def best_per_group(groups: Sequence[int], scores: Sequence[float], k: int) -> list[bool]:
    """Which items to keep: the `k` highest scores of each group; ties go to the earlier item."""
    keep = [False] * len(groups)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for items in members.values():
        for i in sorted(items, key=lambda i: (-scores[i], i))[:k]:
            keep[i] = True
    return keep


def _keep_best(rule: RoundTripRule, out: Outcome, margin: list[float], target: list[int], step: str) -> None:
    """Keep the `keep_best_per_source` rows with the largest margin per own passage; record the others."""
    k = rule.keep_best_per_source or 0
    keep = best_per_group(target, margin, k)
    winner: dict[int, int] = {}  # own passage -> index of its best row
    for i, t in enumerate(target):
        if t not in winner or margin[i] > margin[winner[t]]:
            winner[t] = i
    survivors = []
    for i, row in enumerate(out.kept):
        if keep[i]:
            survivors.append(row)
            continue
        best = winner[target[i]]
        out.dropped.append(
            record(
                step, rule, "roundtrip_not_best", row, column=rule.query_column, value=text_of(row, rule.query_column),
                margin=round(margin[i], 6), best_margin=round(margin[best], 6), keep_best_per_source=k,
                best_query=text_of(out.kept[best], rule.query_column),
            )
        )  # fmt: skip
    out.kept = survivors
