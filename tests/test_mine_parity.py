"""Parity with sentence-transformers `mine_hard_negatives` (exact search, sampling top), real MiniLM.

The texts are docstrings of the Python standard library: real prose, always installed. Rows whose
anchor repeats give queries with several positives (margins then use the lowest one).
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

from synth.mining.api import mine_dataset
from synth.mining.spec import MiningParams

MODULES = ["json", "os.path", "shutil", "textwrap", "itertools", "functools", "collections", "string", "re"]
EXTRA = ["pathlib", "statistics", "heapq", "difflib"]


def docstring_pairs(modules: list[str]) -> list[dict[str, str]]:
    """(first paragraph, rest) of every public callable's docstring, in a fixed order."""
    rows = []
    for name in modules:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            if not doc:
                continue
            first, *rest = [p.replace("\n", " ").strip() for p in doc.strip().split("\n\n")]
            body = " ".join(rest).strip()
            if len(first) >= 20 and len(body) >= 40:
                rows.append({"anchor": first, "positive": body})
    return rows


def parity_rows() -> list[dict[str, str]]:
    rows = docstring_pairs(MODULES)
    # Ten queries get a second, different positive (the next row's): several positives per query.
    return rows + [{"anchor": rows[i]["anchor"], "positive": rows[i + 1]["positive"]} for i in range(0, 40, 4)]


@pytest.fixture(scope="module")
def st_model(embedder: object) -> object:
    return embedder.model  # type: ignore[attr-defined]


def _st(rows: list[dict[str, str]], model: object, corpus: list[str] | None, **kwargs: object) -> list[dict]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    out = mine_hard_negatives(
        Dataset.from_list(rows),
        model,  # type: ignore[arg-type]
        anchor_column_name="anchor",
        positive_column_name="positive",
        corpus=corpus,
        sampling_strategy="top",
        output_scores=True,
        batch_size=64,
        verbose=False,
        **kwargs,  # type: ignore[arg-type]
    )
    return out.to_list()


def _assert_same(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs) > 0
    numeric = ("scores", "score")
    for a, b in zip(ours, theirs, strict=True):
        assert {k: v for k, v in a.items() if k not in numeric} == {k: v for k, v in b.items() if k not in numeric}
        for key in numeric:
            if key in b:
                np.testing.assert_allclose(a[key], b[key], atol=1e-5)


SETTINGS = [
    # ST semantics (documented st_compatible mode): range_min skips survivors, pool before exclusion.
    ("n-tuple", True, dict(range_min=2, range_max=25, relative_margin=0.05, num_negatives=4)),
    ("triplet", True, dict(range_max=15, absolute_margin=0.02, max_score=0.8, num_negatives=2)),
    ("labeled-list", True, dict(min_score=0.2, num_negatives=3)),  # range_max None -> ST default
    ("labeled-pair", True, dict(range_min=1, range_max=10, num_negatives=3)),
    # Default mode agrees with ST when range_min=0 and the window is wide enough for the filters
    # (the texts are the running Python's docstrings: 30 was too narrow for one query on 3.11.7).
    ("n-tuple", False, dict(range_max=60, relative_margin=0.1, num_negatives=3)),
]


@pytest.mark.parametrize(("fmt", "st_mode", "knobs"), SETTINGS)
def test_negatives_equal_sentence_transformers(
    embedder: object, st_model: object, fmt: str, st_mode: bool, knobs: dict
) -> None:
    rows = parity_rows()
    corpus = [r["positive"] for r in docstring_pairs(EXTRA)]
    theirs = _st(rows, st_model, corpus, output_format=fmt, **knobs)
    ours = mine_dataset(
        rows,
        embedder,  # type: ignore[arg-type]
        corpus=corpus,
        params=MiningParams(st_compatible=st_mode, **knobs),
        output_format=fmt,
        output_scores=True,
    ).rows
    _assert_same(ours, theirs)


def test_parity_data_has_several_positives_and_filters_bite(embedder: object) -> None:
    rows = parity_rows()
    out = mine_dataset(
        rows,
        embedder,
        params=MiningParams(range_max=25, relative_margin=0.05, st_compatible=True),  # type: ignore[arg-type]
    )
    assert sum(len(m.positives) > 1 for m in out.result.mined) >= 10
    assert out.result.stats["removed"]["relative_margin"] > 0  # type: ignore[index]
