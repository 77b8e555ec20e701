"""Engine, guards, rescoring, teacher scores and every export format on a hand-built world.

Vectors are chosen so every score is read off by hand (query = unit axis, score = component):

    doc  text          vector        qa    qb
    d0   "alpha one"   [1, 0, 0]     1     0
    d1   "alpha one!"  [.8, .6, 0]   .8    .6
    d2   "gamma"       [.6, 0, .8]   .6    0
    d3   "delta"       [0, .8, .6]   0     .8
    d4   "epsilon"     [0, .6, .8]   0     .6
    d5   "zeta"        [0, 0, 1]     0     0

Rows: (qa, d0), (qa, d3), (qb, d3): qa has two positives (scores 1 and 0), qb one (.8).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from synth.backends import Completion
from synth.mining.api import mine_dataset
from synth.mining.formats import FORMATS, ROW_FORMATS, FormatOptions, write_beir, write_formats
from synth.mining.rescore import fuse_mean, fuse_rrf
from synth.mining.spec import FORMAT_NAMES, Guards, MiningParams
from synth.parsers import yes_probability

DOCS = {
    "alpha one": [1, 0, 0],
    "alpha one!": [0.8, 0.6, 0],
    "gamma": [0.6, 0, 0.8],
    "delta": [0, 0.8, 0.6],
    "epsilon": [0, 0.6, 0.8],
    "zeta": [0, 0, 1],
}
VECTORS = {**DOCS, "qa": [1, 0, 0], "qb": [0, 1, 0]}
CORPUS = list(DOCS)
ROWS = [
    {"anchor": "qa", "positive": "alpha one"},
    {"anchor": "qa", "positive": "delta"},
    {"anchor": "qb", "positive": "delta"},
]
F = lambda x: float(np.float32(x))  # noqa: E731  scores are float32 dot products


class TableEmbedder:
    """A real Embedder whose vectors are a lookup table (so scores are known exactly)."""

    model_id = "table"

    def embed(self, texts: Sequence[str], *, role: str, progress: object = None) -> np.ndarray:
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


class TableRescorer:
    """A real Rescorer with fixed relevance per (query, doc); unknown pairs score 0."""

    def __init__(self, table: dict[tuple[str, str], float], name: str = "table") -> None:
        self.table, self.name = table, name

    def score(self, pairs: Sequence[tuple[str, str]], advance: object = None) -> np.ndarray:
        return np.array([self.table.get(p, 0.0) for p in pairs])


def _mine(**kwargs: object):  # type: ignore[no-untyped-def]
    params = kwargs.pop("params", MiningParams(num_negatives=2))
    return mine_dataset(ROWS, TableEmbedder(), corpus=CORPUS, params=params, **kwargs)  # type: ignore[arg-type]


def _neg_texts(out) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [[out.result.corpus[n] for n in m.negatives] for m in out.result.mined]


def test_groups_identical_queries_and_excludes_all_their_positives() -> None:
    out = _mine()
    assert out.result.queries == ["qa", "qb"]
    assert [m.positives for m in out.result.mined] == [[0, 3], [3]]
    assert [m.positive_scores for m in out.result.mined] == [[1.0, 0.0], [F(0.8)]]
    # qb: d1 and d4 tie at .6; the lower index comes first.
    assert _neg_texts(out) == [["alpha one!", "gamma"], ["alpha one!", "epsilon"]]
    assert out.result.stats["removed"] == {"positive": 3}


def test_margin_uses_the_lowest_positive() -> None:
    # qa's lowest positive scores 0: absolute margin .1 keeps only scores <= -.1, i.e. none.
    # With qa's single positive d0 (score 1) the bound is .9 and d1, d2 survive.
    params = MiningParams(num_negatives=2, absolute_margin=0.1)
    assert _neg_texts(_mine(params=params)) == [[], ["alpha one!", "epsilon"]]
    single = mine_dataset(ROWS[:1], TableEmbedder(), corpus=CORPUS, params=params)
    assert _neg_texts(single) == [["alpha one!", "gamma"]]


def test_near_duplicate_text_guard() -> None:
    # ratio("alpha one!", "alpha one") = 2 * 9 / 19 = 94.7 >= 90: d1 is dropped for qa only.
    out = _mine(guards=Guards(near_duplicate_ratio=90))
    assert _neg_texts(out) == [["gamma", "epsilon"], ["alpha one!", "epsilon"]]
    assert out.result.mined[0].removed["near_duplicate_text"] == 1
    assert out.result.mined[1].removed["near_duplicate_text"] == 0


def test_near_duplicate_cosine_guard() -> None:
    # cos >= .75 to a positive: qa drops d1 (.8 to d0) and d4 (.96 to d3); qb drops d4 (.96 to d3).
    out = _mine(guards=Guards(near_duplicate_cosine=0.75))
    assert _neg_texts(out) == [["gamma", "zeta"], ["alpha one!", "alpha one"]]
    assert out.result.stats["removed"] == {"positive": 3, "near_duplicate_cosine": 3}


def test_rescoring_drives_order_and_margins() -> None:
    table = {("qb", "alpha one!"): 0.1, ("qb", "epsilon"): 0.5, ("qb", "alpha one"): 0.9, ("qb", "gamma"): 0.2}
    table |= {("qb", "zeta"): 0.3, ("qb", "delta"): 0.95}
    params = MiningParams(num_negatives=2, absolute_margin=0.1)
    out = _mine(params=params, rescorer=TableRescorer(table))
    # Rescored qb: d0 .9 > d4 .5 > d5 .3 > d2 .2 > d1 .1; positive .95 - .1 = .85 drops d0.
    # (By the embedder alone qb would get [d1, d4].)
    qb = out.result.mined[1]
    assert _neg_texts(out)[1] == ["epsilon", "zeta"]
    assert qb.negative_scores == [0.5, 0.3] and qb.positive_scores == [0.95]
    assert qb.teachers == {"embedder": [F(0.8), F(0.6), 0.0], "table": [0.95, 0.5, 0.3]}


def test_teachers_and_rank_fusion() -> None:
    judge = TableRescorer({("qb", "delta"): 2.0, ("qb", "alpha one!"): 3.0, ("qb", "epsilon"): 1.0}, name="judge")
    out = _mine(teachers=[judge], fuse="rrf")
    qb = out.result.mined[1]
    assert qb.teachers["judge"] == [2.0, 3.0, 1.0]
    # embedder ranks [.8, .6, .6] -> 1, 2, 3 (ties by position); judge ranks -> 2, 1, 3.
    expected = [1 / 61 + 1 / 62, 1 / 62 + 1 / 61, 2 / 63]
    np.testing.assert_allclose(qb.teachers["ensemble"], expected)


def test_fuse_mean_of_zscores() -> None:
    a = [np.array([1.0, 3.0]), np.array([5.0])]  # mean 3, std sqrt(8/3)
    b = [np.array([10.0, 10.0]), np.array([40.0])]  # mean 20, std sqrt(200)
    got = fuse_mean({"a": a, "b": b})
    za = (np.array([1, 3, 5]) - 3) / np.sqrt(8 / 3)
    zb = (np.array([10, 10, 40]) - 20) / np.sqrt(200)
    np.testing.assert_allclose(np.concatenate(got), (za + zb) / 2)
    assert [len(x) for x in got] == [2, 1]
    np.testing.assert_allclose(fuse_rrf({"a": a})[0], [1 / 62, 1 / 61])


def test_yes_probability_from_logprobs() -> None:
    """The one yes/no scorer the LLM rescorer uses; no yes/no among the candidates is None, never 0.5."""
    lp = {" yes": np.log(0.6), "Yes": np.log(0.1), " no": np.log(0.3), "maybe": np.log(0.5)}
    assert yes_probability(Completion(texts=["yes"], logprobs=[[lp]])) == pytest.approx(0.7)
    assert yes_probability(Completion(texts=["x"], logprobs=[[{"x": 0.0}]])) is None


# --- formats: rows worked out from the table above (num_negatives=2) ----------------------------


def test_sentence_transformers_formats() -> None:
    rows = _mine(output_format="triplet").rows
    assert [(r["anchor"], r["positive"], r["negative"]) for r in rows] == [
        ("qa", "alpha one", "alpha one!"),
        ("qa", "alpha one", "gamma"),
        ("qa", "delta", "alpha one!"),
        ("qa", "delta", "gamma"),
        ("qb", "delta", "alpha one!"),
        ("qb", "delta", "epsilon"),
    ]
    rows = _mine(output_format="triplet", output_scores=True).rows
    assert rows[2]["scores"] == [0.0, F(0.8)]
    assert _mine(output_format="n-tuple", output_scores=True).rows == [
        {
            "anchor": "qa",
            "positive": "alpha one",
            "negative_1": "alpha one!",
            "negative_2": "gamma",
            "scores": [1.0, F(0.8), F(0.6)],
        },
        {
            "anchor": "qa",
            "positive": "delta",
            "negative_1": "alpha one!",
            "negative_2": "gamma",
            "scores": [0.0, F(0.8), F(0.6)],
        },
        {
            "anchor": "qb",
            "positive": "delta",
            "negative_1": "alpha one!",
            "negative_2": "epsilon",
            "scores": [F(0.8), F(0.6), F(0.6)],
        },
    ]
    assert [(r["anchor"], r["positive"], r["label"]) for r in _mine(output_format="labeled-pair").rows] == [
        ("qa", "alpha one", 1),
        ("qa", "delta", 1),
        ("qa", "alpha one!", 0),
        ("qa", "gamma", 0),
        ("qb", "delta", 1),
        ("qb", "alpha one!", 0),
        ("qb", "epsilon", 0),
    ]
    assert _mine(output_format="labeled-pair", output_scores=True).rows[1]["score"] == 0.0
    assert _mine(output_format="labeled-list").rows == [
        {"anchor": "qa", "positive": ["alpha one", "alpha one!", "gamma"], "labels": [1, 0, 0]},
        {"anchor": "qa", "positive": ["delta", "alpha one!", "gamma"], "labels": [1, 0, 0]},
        {"anchor": "qb", "positive": ["delta", "alpha one!", "epsilon"], "labels": [1, 0, 0]},
    ]
    assert _mine(output_format="labeled-list", output_scores=True).rows[2]["scores"] == [F(0.8), F(0.6), F(0.6)]


def test_n_tuple_skips_queries_short_of_negatives() -> None:
    params = MiningParams(num_negatives=2, max_score=0.7)  # qa keeps d2 (.6) then d4/d5 (0)
    rows = _mine(params=params, output_format="n-tuple").rows
    assert [r["negative_1"] for r in rows] == ["gamma", "gamma", "alpha one!"]
    params = MiningParams(num_negatives=2, min_score=0.5, max_score=0.7)  # qa keeps only d2
    assert [r["anchor"] for r in _mine(params=params, output_format="n-tuple").rows] == ["qb"]


def test_flagembedding_and_marginmse() -> None:
    out = _mine(output_format="flagembedding", query_prompt=None)
    assert out.rows[0] == {
        "query": "qa",
        "pos": ["alpha one", "delta"],
        "neg": ["alpha one!", "gamma"],
        "pos_scores": [1.0, 0.0],
        "neg_scores": [F(0.8), F(0.6)],
        "prompt": "",
    }
    mse = _mine(output_format="marginmse").rows
    assert [(r["positive"], r["negative"]) for r in mse[:4]] == [
        ("alpha one", "alpha one!"),
        ("alpha one", "gamma"),
        ("delta", "alpha one!"),
        ("delta", "gamma"),
    ]
    np.testing.assert_allclose(
        [r["label"] for r in mse], [1 - 0.8, 1 - 0.6, -0.8, -0.6, 0.8 - 0.6, 0.8 - 0.6], atol=1e-6
    )


def test_write_formats_and_beir(tmp_path: Path) -> None:
    out = _mine()
    paths = write_formats(out.result, tmp_path, ["triplet", "beir"], FormatOptions(num_negatives=2))
    assert paths == [tmp_path / "triplet.jsonl", tmp_path / "beir"]
    assert len((tmp_path / "triplet.jsonl").read_text().splitlines()) == 6
    corpus = [json.loads(x) for x in (tmp_path / "beir" / "corpus.jsonl").read_text().splitlines()]
    assert [c["_id"] for c in corpus] == ["d0", "d1", "d2", "d3", "d4", "d5"] and corpus[3]["text"] == "delta"
    queries = [json.loads(x) for x in (tmp_path / "beir" / "queries.jsonl").read_text().splitlines()]
    assert queries == [{"_id": "q0", "text": "qa"}, {"_id": "q1", "text": "qb"}]
    qrels = (tmp_path / "beir" / "qrels" / "train.tsv").read_text().splitlines()
    assert qrels == ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q0\td3\t1", "q1\td3\t1"]
    with pytest.raises(ValueError, match="unknown format"):
        write_formats(out.result, tmp_path, ["nope"], FormatOptions())
    assert write_beir(out.result, tmp_path / "b2").is_dir()


def test_mine_dataset_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="output_format"):
        _mine(output_format="quad")
    with pytest.raises(ValueError, match="empty"):
        mine_dataset([], TableEmbedder())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fuse"):
        _mine(fuse="median")


def test_the_spec_validates_exactly_the_formats_the_writer_writes() -> None:
    assert FORMATS == FORMAT_NAMES and set(FORMATS) == {*ROW_FORMATS, "beir"}


# --- false negatives, listwise and pair-score ---------------------------------------------------

# A judge for which qb's d0 ("alpha one", .97) is more relevant than qb's own positive d3 (.95).
JUDGE = {("qa", "alpha one"): 0.9, ("qa", "delta"): 0.8, ("qa", "alpha one!"): 0.5, ("qa", "gamma"): 0.4}
JUDGE |= {("qb", "delta"): 0.95, ("qb", "alpha one"): 0.97, ("qb", "alpha one!"): 0.3, ("qb", "epsilon"): 0.6}
JUDGE |= {("qb", "gamma"): 0.2, ("qb", "zeta"): 0.1}


def _judged(mode: str = "promote", margin: float | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    params = MiningParams(num_negatives=2, false_negatives=mode, false_negative_margin=margin)  # type: ignore[arg-type]
    return _mine(params=params, rescorer=TableRescorer(JUDGE), **kwargs)


def test_promoted_false_negatives_become_positives_of_their_query() -> None:
    out = _judged()
    qa, qb = out.result.mined
    assert qa.promoted == [] and qa.positives == [0, 3]
    assert qb.promoted == [0] and qb.positives == [3, 0] and qb.given == [3]
    assert qb.positive_scores == [0.95, 0.97] and 0 not in qb.negatives
    assert _neg_texts(out)[1] == ["epsilon", "alpha one!"]  # d0 left the negatives
    assert qb.teachers["table"] == [0.95, 0.97, 0.6, 0.3] and qb.teachers["embedder"][:2] == [F(0.8), 0.0]
    assert out.result.stats["false_negatives"] == {
        "mode": "promote",
        "margin": 0.0,
        "found": 1,
        "promoted": 1,
        "queries_with_promoted": 1,
    }


def test_dropped_false_negatives_are_counted_not_promoted() -> None:
    out = _judged("drop", margin=0.0)
    qb = out.result.mined[1]
    assert qb.promoted == [] and qb.positives == [3] and 0 not in qb.negatives
    assert qb.removed["false_negative"] == 1
    assert out.result.stats["false_negatives"]["promoted"] == 0  # type: ignore[index]
    # No margin in drop mode: the rule is off and d0 (.97) is qb's first negative, as before.
    plain = _mine(params=MiningParams(num_negatives=2), rescorer=TableRescorer(JUDGE))
    assert _neg_texts(plain)[1][0] == "alpha one" and "false_negatives" not in plain.result.stats


def test_a_positive_relative_margin_promotes_candidates_just_below_the_positive() -> None:
    # qa's lowest positive is .8; margin .4 promotes scores >= .8 - .32 = .48: d1 (.5), not d2 (.4).
    qa = _judged(margin=0.4).result.mined[0]
    assert qa.promoted == [1] and qa.positives == [0, 3, 1] and qa.negatives[0] == 2


def test_promotion_needs_a_judge() -> None:
    from pydantic import ValidationError

    from synth.mining.spec import MineSpec

    with pytest.raises(ValueError, match="rescorer"):
        _mine(params=MiningParams(num_negatives=2, false_negatives="promote"))
    with pytest.raises(ValidationError, match="needs a judge"):
        MineSpec(false_negatives="promote")
    with pytest.raises(ValidationError, match=r"\[0, 1\)"):
        MiningParams(false_negative_margin=1.0)


def test_promoted_positives_in_every_multi_positive_layout(tmp_path: Path) -> None:
    out = _judged()
    opts = FormatOptions(num_negatives=2, output_scores=True)
    lists = [r for r in ROW_FORMATS["labeled-list"](out.result, FormatOptions(num_negatives=2)) if r["anchor"] == "qb"]
    assert lists == [
        {"anchor": "qb", "positive": ["delta", "alpha one", "epsilon", "alpha one!"], "labels": [1, 1, 0, 0]}
    ]
    scored = [r for r in ROW_FORMATS["labeled-list"](out.result, opts) if r["anchor"] == "qb"]
    assert scored[0]["scores"] == [0.95, 0.97, 0.6, 0.3]
    flag = ROW_FORMATS["flagembedding"](out.result, opts)[1]
    assert flag["pos"] == ["delta", "alpha one"] and flag["pos_scores"] == [0.95, 0.97]
    # The plain layouts: one row per positive.
    tuples = [r for r in ROW_FORMATS["n-tuple"](out.result, opts) if r["anchor"] == "qb"]
    assert [r["positive"] for r in tuples] == ["delta", "alpha one"]
    write_beir(out.result, tmp_path / "beir")
    qrels = (tmp_path / "beir" / "qrels" / "train.tsv").read_text().splitlines()
    assert qrels == ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q0\td3\t1", "q1\td3\t1", "q1\td0\t1"]


def test_listwise_is_ordered_by_the_teacher() -> None:
    out = _judged()
    rows = ROW_FORMATS["listwise"](out.result, FormatOptions())
    assert rows[1] == {
        "query": "qb",
        "documents": ["alpha one", "delta", "epsilon", "alpha one!"],
        "scores": [0.97, 0.95, 0.6, 0.3],
    }
    by_embedder = ROW_FORMATS["listwise"](out.result, FormatOptions(teacher="embedder"))[1]
    assert by_embedder["documents"] == [
        "delta",
        "epsilon",
        "alpha one!",
        "alpha one",
    ]  # .8, .6, .6 (tie: order kept), 0
    # An unscored document (NaN) goes last, whatever the others score.
    out.result.mined[1].negative_scores[0] = float("nan")
    last = ROW_FORMATS["listwise"](out.result, FormatOptions())[1]
    assert last["documents"][-1] == "epsilon" and np.isnan(last["scores"][-1])


def test_pair_score_rows_are_query_document_teacher_score() -> None:
    rows = ROW_FORMATS["pair-score"](_judged().result, FormatOptions())
    assert [r for r in rows if r["sentence1"] == "qb"] == [
        {"sentence1": "qb", "sentence2": "delta", "score": 0.95},
        {"sentence1": "qb", "sentence2": "alpha one", "score": 0.97},
        {"sentence1": "qb", "sentence2": "epsilon", "score": 0.6},
        {"sentence1": "qb", "sentence2": "alpha one!", "score": 0.3},
    ]
    assert len(rows) == 8  # qa: 2 positives + 2 negatives, qb: 2 + 2
