"""The `similarity` step: keep a row only if the embedder finds its column pairs similar enough.

Why: a generated text that should mean the same as another one (a back-translation and the
original sentence, a paraphrase and its source) can be checked for the price of two embeddings.
Each pair's cosine is recorded (`<name>_score`: the lowest over the pairs, `<name>_scores`: one
per pair); a row under `min_score` is a drop record with the `reason` the recipe gives (default
`low_similarity`), both texts of every pair and their scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from synth.prompts import PromptLibrary
from synth.specs import Strict
from synth.steps.base import Row, Step, StepContext, StepResult, drop


class SimilaritySpec(Strict):
    name: str = "similarity"
    pairs: list[tuple[str, str]] = Field(min_length=1)  # [[column a, column b], ...]
    min_score: float = Field(ge=-1, le=1)  # cosine of the embedder's vectors, every pair at least this
    embedder: str | None = None  # one of the recipe's `embedders:` (default: the recipe's `embedder:`)
    reason: str = Field(default="low_similarity", pattern=r"^[a-z0-9_]+$")


class SimilarityStep(Step):
    key = "similarity"
    spec_type = SimilaritySpec
    row_wise = True  # each row's pairs are judged on their own
    spec: SimilaritySpec

    def __call__(self, rows: Sequence[Row], ctx: StepContext) -> StepResult:
        result = StepResult(rows=[])
        if not rows:
            return result
        if missing := self.missing_columns(rows[0], [c for pair in self.spec.pairs for c in pair]):
            raise ValueError(missing[0])
        texts = list(dict.fromkeys(str(r[c]) for r in rows for pair in self.spec.pairs for c in pair))
        at = {t: i for i, t in enumerate(texts)}
        with ctx.progress.task(f"{self.name}: embedding", len(texts)) as advance:
            vectors = ctx.embedder(self.spec.embedder).embed(texts, role="document", progress=advance)
        for row in rows:
            scores = [
                round(float(np.dot(vectors[at[str(row[a])]], vectors[at[str(row[b])]])), 6) for a, b in self.spec.pairs
            ]
            if min(scores) >= self.spec.min_score:
                result.rows.append({**row, f"{self.name}_score": min(scores), f"{self.name}_scores": scores})
                continue
            evidence = [
                {"a": row[a], "b": row[b], "score": s} for (a, b), s in zip(self.spec.pairs, scores, strict=True)
            ]
            result.dropped.append(
                drop(self.name, self.spec.reason, row, score=min(scores), threshold=self.spec.min_score, pairs=evidence)
            )
        return result

    def preview(self, row: Row) -> Row:
        return {**row, f"{self.name}_score": 0.0, f"{self.name}_scores": [0.0] * len(self.spec.pairs)}

    def problems(self, row: Row, prompts: PromptLibrary) -> list[str]:
        return self.missing_columns(row, [c for pair in self.spec.pairs for c in pair])
