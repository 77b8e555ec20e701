"""Rescorers and teacher scores: a second opinion on (query, document) pairs.

Why: an embedder's top candidates are often unlabelled positives ("almost all mined negatives were
false negatives"). A cross-encoder or an LLM judge reads query and document together and scores
relevance better; its scores can drive the margins, and every teacher's scores can be exported as
soft labels (MarginMSE, distillation). Several teachers fuse into one score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from synth.progress import Advance

if TYPE_CHECKING:
    from synth.backends import Messages
    from synth.llm import CachedLLM

Pair = tuple[str, str]


class Rescorer(Protocol):
    name: str

    def score(self, pairs: Sequence[Pair], advance: Advance | None = None) -> np.ndarray:
        """One float per (query, document) pair, higher = more relevant; NaN = could not score.

        `advance(n)` reports progress in pairs. A NaN candidate is never a negative.
        """
        ...


class CrossEncoderRescorer:
    """A sentence-transformers CrossEncoder (a model object, a local folder or a hub id)."""

    def __init__(self, model: Any, batch_size: int = 32, name: str = "cross_encoder") -> None:
        if isinstance(model, str):
            from sentence_transformers import CrossEncoder

            from synth.models import resolve_model

            model = CrossEncoder(resolve_model(model))
        self.model = model
        self.batch_size = batch_size
        self.name = name

    def score(self, pairs: Sequence[Pair], advance: Advance | None = None) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float64)
        out = self.model.predict(
            [list(p) for p in pairs], batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        if advance:
            advance(len(pairs))
        return np.asarray(out, dtype=np.float64).reshape(len(pairs), -1)[:, -1]


JUDGE_TEMPLATE = (
    "Does the document answer the query? Reply with yes or no.\n\n"
    "Query: {{ query }}\n\nDocument: {{ document }}\n\nAnswer (yes or no):"
)


class LLMJudgeRescorer:
    """An LLM as a relevance judge: P(yes) of its first generated token, through the request cache.

    `llm` is a `synth.llm.CachedLLM` (the one cached path: replies are stored as they arrive, so a
    rerun or a resumed run asks nothing twice). `render(query, document)` builds the messages (a
    recipe passes its judge template); without it the built-in JUDGE_TEMPLATE is one user message.
    A reply with no yes/no among the top log-probabilities (or a failed request) is unscored: NaN,
    counted in `unscored`, never a pass. Requests and tokens are counted in `usage`.
    """

    def __init__(
        self,
        llm: CachedLLM,
        template: str = JUDGE_TEMPLATE,
        top_logprobs: int = 20,
        name: str = "llm_judge",
        render: Callable[[str, str], Messages] | None = None,
    ) -> None:
        from synth.llm import Usage

        if render is None:
            from jinja2 import StrictUndefined
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
            compiled = env.from_string(template)
            render = lambda q, d: [{"role": "user", "content": compiled.render(query=q, document=d)}]  # noqa: E731
        self.llm = llm
        self.render = render
        self.top_logprobs = top_logprobs
        self.name = name
        self.usage = Usage()
        self.unscored = 0

    def score(self, pairs: Sequence[Pair], advance: Advance | None = None) -> np.ndarray:
        from synth.backends import SamplingParams
        from synth.parsers import yes_probability

        if not pairs:
            return np.zeros(0, dtype=np.float64)
        conversations = [self.render(q, d) for q, d in pairs]
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=self.top_logprobs)
        completions = self.llm.complete(conversations, params, self.usage, advance)
        scores = [yes_probability(c) for c in completions]
        self.unscored += sum(s is None for s in scores)
        return np.array([np.nan if s is None else s for s in scores], dtype=np.float64)


def _zscore(values: np.ndarray) -> np.ndarray:
    """z-scores over the scored values; an unscored (NaN) value stays NaN."""
    scored = values[~np.isnan(values)]
    std = scored.std() if len(scored) else 0.0
    if std > 0:
        return (values - scored.mean()) / std
    return np.where(np.isnan(values), np.nan, 0.0)


def fuse_mean(teachers: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    """Mean over teachers of each teacher's scores z-normalised over all its pairs (scales differ).

    A teacher that could not score a pair (NaN) is left out of that pair's mean.
    """
    names = list(teachers)
    sizes = [len(a) for a in teachers[names[0]]]
    if not sizes:
        return []
    normed = np.array([_zscore(np.concatenate(teachers[n]).astype(np.float64)) for n in names])
    counts = (~np.isnan(normed)).sum(axis=0)
    total = np.nansum(normed, axis=0)
    fused = np.divide(total, counts, out=np.full(total.shape, np.nan), where=counts > 0)
    return np.split(fused, np.cumsum(sizes)[:-1])


def fuse_rrf(teachers: dict[str, list[np.ndarray]], k: int = 60) -> list[np.ndarray]:
    """Reciprocal rank fusion within each query's list: sum of 1 / (k + rank), rank from 1.

    An unscored (NaN) pair ranks last in that teacher's list.
    """
    rows = len(next(iter(teachers.values())))
    fused = []
    for i in range(rows):
        total = np.zeros(len(teachers[next(iter(teachers))][i]))
        for scores in teachers.values():
            ranks = np.empty(len(scores[i]), dtype=np.int64)
            s = np.nan_to_num(np.asarray(scores[i], dtype=np.float64), nan=-np.inf)
            ranks[np.lexsort((np.arange(len(s)), -s))] = np.arange(1, len(s) + 1)
            total += 1.0 / (k + ranks)
        fused.append(total)
    return fused


FUSERS: dict[str, Callable[[dict[str, list[np.ndarray]]], list[np.ndarray]]] = {"mean": fuse_mean, "rrf": fuse_rrf}
