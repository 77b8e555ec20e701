"""The LLM rescorer: through the one cached LLM path, and an unscorable reply is never a pass.

A judge whose reply has no yes/no among the first token's top log-probabilities cannot say
whether a candidate is relevant. It used to be scored 0.5 (a silent pass: the candidate became a
negative); now it is recorded as unscored, counted, and the candidate is never a negative.
The hand-built world of tests/test_mine_formats.py; the judge is a real LLMBackend answering
from a table of P(yes) per document.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synth.backends import Completion, Messages, ResultCallback, SamplingParams
from synth.cache import RequestCache
from synth.llm import CachedLLM
from synth.mining.api import mine_dataset
from synth.mining.rescore import LLMJudgeRescorer
from synth.mining.spec import MineSpec, MiningParams
from synth.prompts import PromptLibrary
from synth.specs import LLMSpec
from synth.steps.base import StepContext
from synth.steps.mine import MineNegativesStep
from tests.test_mine_formats import CORPUS, ROWS, TableEmbedder

# P(yes) the judge gives each document; "zeta" gets a reply with neither yes nor no in its top tokens.
P_YES = {"alpha one": 0.9, "alpha one!": 0.2, "gamma": 0.3, "delta": 0.95, "epsilon": 0.4}
UNSCORABLE = "zeta"


class TableJudge:
    """A real LLMBackend: one token, with top log-probabilities from P_YES by the document asked about."""

    kind = "table-judge"
    model_id = "table-judge@1"

    def __init__(self) -> None:
        self.requests = 0

    def generate(
        self, conversations: Sequence[Messages], params: SamplingParams, on_result: ResultCallback | None = None
    ) -> list[Completion]:
        out = []
        for i, messages in enumerate(conversations):
            last = [m["content"] for m in messages if m["role"] == "user"][-1]
            doc = re.search(r"(?:Passage|Document): (.*)", last).group(1).strip()  # type: ignore[union-attr]
            if doc == UNSCORABLE:
                top = {" The": math.log(0.6), " It": math.log(0.4)}
            else:
                top = {" yes": math.log(P_YES[doc]), " no": math.log(1 - P_YES[doc])}
            completion = Completion(
                texts=[max(top, key=top.get).strip()], prompt_tokens=10, completion_tokens=1, logprobs=[[top]]
            )
            self.requests += 1
            out.append(completion)
            if on_result:
                on_result(i, completion)
        return out

    def close(self) -> None:
        pass


def _judge(cache: RequestCache | None = None) -> tuple[LLMJudgeRescorer, TableJudge]:
    backend = TableJudge()
    return LLMJudgeRescorer(CachedLLM("judge", LLMSpec(), cache=cache, backend=backend)), backend


def test_an_unscorable_reply_is_never_a_negative_and_is_counted() -> None:
    judge, _ = _judge()
    out = mine_dataset(ROWS, TableEmbedder(), corpus=CORPUS, params=MiningParams(num_negatives=3), rescorer=judge)
    negatives = [[out.result.corpus[n] for n in m.negatives] for m in out.result.mined]
    # qb's candidates by P(yes): alpha one .9, epsilon .4, gamma .3, alpha one! .2; zeta is unscored.
    # (Scored 0.5, zeta would be qb's second negative.)
    assert negatives[1] == ["alpha one", "epsilon", "gamma"]
    assert all(UNSCORABLE not in n for n in negatives)
    assert [m.removed.get("unscored") for m in out.result.mined] == [1, 1]  # zeta, once per query
    assert out.result.stats["unscored"] == 2 and judge.unscored == 2
    assert out.result.mined[1].negative_scores == [0.9, 0.4, 0.3]


def test_the_rescorer_goes_through_the_request_cache(tmp_path: Path) -> None:
    """A second run asks the backend nothing: rescoring is cached and resumable like generation."""
    cache = RequestCache(tmp_path / "requests.sqlite")
    first, backend = _judge(cache)
    once = mine_dataset(ROWS, TableEmbedder(), corpus=CORPUS, params=MiningParams(num_negatives=3), rescorer=first)
    asked = backend.requests
    assert asked > 0 and first.usage.requests == asked and first.usage.cache_hits == 0
    again, backend = _judge(cache)
    twice = mine_dataset(ROWS, TableEmbedder(), corpus=CORPUS, params=MiningParams(num_negatives=3), rescorer=again)
    assert backend.requests == 0 and again.usage.requests == 0 and again.usage.cache_hits == asked
    assert [m.negatives for m in twice.result.mined] == [m.negatives for m in once.result.mined]
    assert again.unscored == 2  # the unscorable reply was cached as it came; it stays unscored


def test_the_step_reports_unscored_and_usage() -> None:
    backend = TableJudge()
    llm = CachedLLM("default", LLMSpec(), backend=backend)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(CORPUS)]
    spec = MineSpec(query_column="anchor", positive_column="positive", num_negatives=3, rescore="llm", teachers=[])
    ctx = StepContext(
        prompts=PromptLibrary(), documents=docs, llm=lambda name: llm, embedder=lambda name: TableEmbedder()
    )
    result = MineNegativesStep(spec)(ROWS, ctx)
    assert result.stats["unscored"] == 2 and result.stats["removed"]["unscored"] == 2
    assert result.usage.requests == backend.requests > 0
    assert all(UNSCORABLE not in r["negatives"] for r in result.rows)
    assert [r["negatives"] for r in result.rows if r["anchor"] == "qb"] == [["alpha one", "epsilon", "gamma"]]


def test_unscored_teacher_labels_are_nan_and_fusion_skips_them() -> None:
    judge, _ = _judge()
    out = mine_dataset(
        ROWS, TableEmbedder(), corpus=CORPUS, params=MiningParams(num_negatives=5), teachers=[judge], fuse="mean"
    )
    qa = out.result.mined[0]
    labels = dict(zip(qa.positives + qa.negatives, qa.teachers["llm_judge"], strict=True))
    assert np.isnan(labels[CORPUS.index(UNSCORABLE)]) and out.result.stats["unscored"] == 2
    ensemble = dict(zip(qa.positives + qa.negatives, qa.teachers["ensemble"], strict=True))
    assert not np.isnan(ensemble[CORPUS.index(UNSCORABLE)])  # the embedder's opinion alone
