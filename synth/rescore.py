"""Rescorers and teacher scores: a second opinion on (query, document) pairs.

Why: an embedder's top candidates are often unlabelled positives ("almost all mined negatives were
false negatives"). A cross-encoder or an LLM judge reads query and document together and scores
relevance better; its scores can drive the margins, and every teacher's scores can be exported as
soft labels (MarginMSE, distillation). Several teachers fuse into one score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

Pair = tuple[str, str]


class Rescorer(Protocol):
    name: str

    def score(self, pairs: Sequence[Pair]) -> np.ndarray:
        """One float per (query, document) pair, higher = more relevant."""
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

    def score(self, pairs: Sequence[Pair]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float64)
        out = self.model.predict(
            [list(p) for p in pairs], batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float64).reshape(len(pairs), -1)[:, -1]


JUDGE_TEMPLATE = (
    "Does the document answer the query? Reply with yes or no.\n\n"
    "Query: {{ query }}\n\nDocument: {{ document }}\n\nAnswer (yes or no):"
)


def yes_probability(top_logprobs: dict[str, float], yes: str = "yes", no: str = "no") -> float:
    """P(yes) / (P(yes) + P(no)) over the first token's top candidates; 0.5 when neither shows."""
    p_yes = sum(math.exp(lp) for tok, lp in top_logprobs.items() if tok.strip().lower() == yes)
    p_no = sum(math.exp(lp) for tok, lp in top_logprobs.items() if tok.strip().lower() == no)
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5


class LLMJudgeRescorer:
    """The recipe's LLM as a relevance judge: probability of "yes" for one generated token.

    `render(query, document)` builds the chat messages (a recipe passes its judge template);
    without it the built-in JUDGE_TEMPLATE is one user message. Requests and tokens are counted
    for the step's report.
    """

    def __init__(
        self,
        backend: Any,
        template: str = JUDGE_TEMPLATE,
        top_logprobs: int = 20,
        name: str = "llm_judge",
        render: Callable[[str, str], list[dict[str, str]]] | None = None,
    ) -> None:
        import jinja2

        self.backend = backend
        self.template = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(template)
        self.render = render or (lambda q, d: [{"role": "user", "content": self.template.render(query=q, document=d)}])
        self.top_logprobs = top_logprobs
        self.name = name
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.unscored = 0  # replies with neither yes nor no among the top tokens (scored 0.5)

    def score(self, pairs: Sequence[Pair]) -> np.ndarray:
        from synth.backends import SamplingParams

        if not pairs:
            return np.zeros(0, dtype=np.float64)
        conversations = [self.render(q, d) for q, d in pairs]
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=self.top_logprobs)
        completions = self.backend.generate(conversations, params)
        out = []
        for c in completions:
            self.requests += 1
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens
            if c.error or not c.logprobs or not c.logprobs[0]:
                self.unscored += 1
                out.append(0.5)
            else:
                out.append(yes_probability(c.logprobs[0][0]))
        return np.asarray(out, dtype=np.float64)


def _zscore(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def fuse_mean(teachers: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    """Mean over teachers of each teacher's scores z-normalised over all its pairs (scales differ)."""
    names = list(teachers)
    sizes = [len(a) for a in teachers[names[0]]]
    cuts = np.cumsum(sizes)[:-1]
    normed = [_zscore(np.concatenate(teachers[n]) if sizes else np.zeros(0)) for n in names]
    return np.split(np.mean(normed, axis=0), cuts) if sizes else []


def fuse_rrf(teachers: dict[str, list[np.ndarray]], k: int = 60) -> list[np.ndarray]:
    """Reciprocal rank fusion within each query's list: sum of 1 / (k + rank), rank from 1."""
    rows = len(next(iter(teachers.values())))
    fused = []
    for i in range(rows):
        total = np.zeros(len(teachers[next(iter(teachers))][i]))
        for scores in teachers.values():
            ranks = np.empty(len(scores[i]), dtype=np.int64)
            ranks[np.lexsort((np.arange(len(scores[i])), -scores[i]))] = np.arange(1, len(scores[i]) + 1)
            total += 1.0 / (k + ranks)
        fused.append(total)
    return fused


FUSERS: dict[str, Callable[[dict[str, list[np.ndarray]]], list[np.ndarray]]] = {"mean": fuse_mean, "rrf": fuse_rrf}
