"""The recipe `mine_negatives` step on the shared engine: guards, rescoring, teachers, formats.

Real MiniLM embedder (through the runner's on-disk embedding cache), a real CrossEncoder and the
real vLLM engine for the LLM judge; expectations recomputed by hand from the models' own scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from synth.mining.api import mine_dataset
from synth.mining.rescore import LLMJudgeRescorer
from synth.mining.spec import MiningParams
from synth.models import resolve_model
from synth.prompts import PromptLibrary
from synth.recipe import load_recipe
from synth.runner import run_recipe
from tests.conftest import REPO, write_recipe
from tests.test_mine_parity import docstring_pairs


def _source(tmp_path: Path, n: int | None = None) -> list[dict[str, str]]:
    pairs = docstring_pairs(["json", "textwrap"])[:n]
    rows = [{"id": f"d{i}", "text": p["positive"], "query": p["anchor"]} for i, p in enumerate(pairs)]
    # A blank row (dropped by the source as empty_text): synth/report_md.py fails on zero drops.
    blank = {"id": "blank", "text": " ", "query": "nothing"}
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, blank]), encoding="utf-8")
    return rows


def _run(tmp_path: Path, mine: str, **kw: object) -> object:
    text = f"source: {{path: docs.jsonl}}\nsteps:\n  - mine_negatives: {{name: negatives, {mine}}}\noutput: {{columns: {{anchor: query, positive: text}}}}\n"
    recipe, folder = load_recipe(write_recipe(tmp_path, text))
    return run_recipe(recipe, folder, output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def _expected_top(embedder: object, query: str, texts: list[str], own: int, window: int) -> list[int]:
    """The embedder's `window` best documents for `query`, its own positive left out."""
    emb = embedder.embed([query], role="query") @ embedder.embed(texts, role="document").T  # type: ignore[attr-defined]
    cand = np.array([i for i in range(len(texts)) if i != own])
    return [int(cand[j]) for j in np.lexsort((cand, -emb[0, cand]))[:window]]


def test_recipe_step_equals_mine_dataset_and_writes_formats(tmp_path: Path, embedder: object) -> None:
    rows = _source(tmp_path)
    run = _run(
        tmp_path,
        "num_negatives: 2, range_max: 10, relative_margin: 0.05, formats: [flagembedding, marginmse, beir]",
        embedder=embedder,
    )
    out = Path(run.output_dir)  # type: ignore[attr-defined]
    pairs = [{"anchor": r["query"], "positive": r["text"]} for r in rows]
    api = mine_dataset(
        pairs,
        embedder,
        corpus=[r["text"] for r in rows],
        params=MiningParams(num_negatives=2, range_max=10, relative_margin=0.05),
    )  # type: ignore[arg-type]
    want = {
        api.result.queries[m.query]: [api.result.corpus[j] for j in m.negatives]
        for m in api.result.mined
        if len(m.negatives) == 2
    }
    details = load_from_disk(str(out / "details"))
    assert {r["query"]: r["negatives"] for r in details} == want  # same engine, same answer
    assert load_from_disk(str(out)).column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert "teacher_scores" not in details.column_names  # default shape unchanged
    flag = [json.loads(x) for x in (out / "negatives" / "flagembedding.jsonl").read_text().splitlines()]
    assert {f["query"]: f["neg"] for f in flag if len(f["neg"]) == 2} == want
    for m in (json.loads(x) for x in (out / "negatives" / "marginmse.jsonl").read_text().splitlines()):
        assert m["label"] > 0  # relative margin 0.05: every negative scores below its positive
    assert len((out / "negatives" / "beir" / "qrels" / "train.tsv").read_text().splitlines()) == 1 + len(rows)


def test_recipe_cross_encoder_rescoring_guard_and_teachers(tmp_path: Path, embedder: object) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)  # new classification head on MiniLM: seeded, saved, loaded by name
    ce = CrossEncoder(resolve_model("all-minilm-l6-v2"), num_labels=1, device="cpu")
    ce.save(str(tmp_path / "ce"))
    ce = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    rows = _source(tmp_path, 14)
    texts = [r["text"] for r in rows]
    mine = f"num_negatives: 2, range_max: 6, rescore: cross_encoder, cross_encoder: {tmp_path / 'ce'}, teachers: [], fuse: mean, near_duplicate_cosine: 0.9"
    details = load_from_disk(str(Path(_run(tmp_path, mine, embedder=embedder).output_dir) / "details"))  # type: ignore[attr-defined]
    assert len(details) == len(rows)
    for r, info in zip(rows, details, strict=True):
        own = texts.index(r["text"])
        top = _expected_top(embedder, r["query"], texts, own, 6)
        cos = embedder.embed([texts[i] for i in top], role="document") @ embedder.embed([r["text"]], role="document").T  # type: ignore[attr-defined]
        top = [t for t, c in zip(top, cos[:, 0], strict=True) if c < 0.9]  # the near-duplicate guard
        s = ce.predict([(r["query"], texts[i]) for i in top], convert_to_numpy=True)
        pick = [top[j] for j in np.lexsort((np.array(top), -s))[:2]]
        assert info["negative_ids"] == [f"d{i}" for i in pick]
        np.testing.assert_allclose(info["negative_scores"], sorted(s, reverse=True)[:2], rtol=1e-4, atol=1e-5)
        assert set(info["teacher_scores"]) == {"embedder", "cross_encoder", "ensemble"}
        np.testing.assert_allclose(
            info["teacher_scores"]["cross_encoder"][0], ce.predict([(r["query"], r["text"])])[0], rtol=1e-4
        )


@pytest.mark.usefixtures("vllm_backend")
def test_llm_judge_rescoring_on_the_real_engine(tmp_path: Path, embedder: object, vllm_backend: object) -> None:
    from synth.backends import SamplingParams

    rows = _source(tmp_path, 5)
    texts = [r["text"] for r in rows]
    run = _run(tmp_path, "num_negatives: 2, range_max: 3, rescore: llm", embedder=embedder, llm=vllm_backend)
    details = load_from_disk(str(Path(run.output_dir) / "details"))  # type: ignore[attr-defined]
    prompts = PromptLibrary(REPO / "prompts")
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=20)
    kept = {r["query"]: r for r in details}
    report = {x.name: x for x in run.reports}["negatives"]  # type: ignore[attr-defined]
    assert report.requests == len(rows) * 4 and report.prompt_tokens > 0  # 3 candidates + positive each
    for r in rows:
        top = _expected_top(embedder, r["query"], texts, texts.index(r["text"]), 3)
        convs = [prompts.render("judge_relevance.j2", {"query": r["query"], "text": texts[i]}) for i in top]
        replies = vllm_backend.generate(convs, params)  # type: ignore[attr-defined]
        p = []
        for c in replies:  # P(yes) / (P(yes) + P(no)) by hand from the first token's top-20
            top20 = c.logprobs[0][0]
            y = sum(math.exp(v) for t, v in top20.items() if t.strip().lower() == "yes")
            n = sum(math.exp(v) for t, v in top20.items() if t.strip().lower() == "no")
            p.append(y / (y + n) if y + n else 0.5)
        assert 0 < min(p) and max(p) < 1  # real probabilities, not the 0.5 fallback
        ranked = [top[j] for j in np.lexsort((np.array(top), -np.array(p)))[:2]]
        assert kept[r["query"]]["negative_ids"] == [f"d{i}" for i in ranked]
        np.testing.assert_allclose(kept[r["query"]]["negative_scores"], sorted(p, reverse=True)[:2], atol=1e-3)
    from synth.llm import CachedLLM
    from synth.specs import LLMSpec

    judge = LLMJudgeRescorer(CachedLLM("judge", LLMSpec(), backend=vllm_backend))  # built-in template, no cache
    s = judge.score([(rows[0]["query"], texts[0]), (rows[0]["query"], "Bananas are yellow.")])
    assert s.shape == (2,) and judge.unscored == 0 and judge.usage.requests == 2
