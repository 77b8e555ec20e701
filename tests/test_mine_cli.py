"""`synth mine` end to end, and rescoring by a real sentence-transformers CrossEncoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from synth.mining.api import mine_dataset
from synth.mining.rescore import CrossEncoderRescorer
from synth.mining.spec import MiningParams
from synth.models import resolve_model
from tests.test_mine_parity import docstring_pairs


def test_synth_mine_cli_writes_formats(tmp_path: Path) -> None:
    rows = docstring_pairs(["json", "textwrap", "shutil"])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synth.cli", "mine", str(data), "-o", str(out), "--num-negatives", "2"]
    cmd += ["--range-max", "10", "--format", "triplet", "--format", "flagembedding", "--format", "beir"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    triplets = [json.loads(x) for x in (out / "triplet.jsonl").read_text().splitlines()]
    flag = [json.loads(x) for x in (out / "flagembedding.jsonl").read_text().splitlines()]
    assert len(flag) == len({r["anchor"] for r in rows})
    assert len(triplets) == sum(len(f["pos"]) * len(f["neg"]) for f in flag)
    assert set(triplets[0]) == {"anchor", "positive", "negative"}
    assert all(t["negative"] != t["positive"] for t in triplets)
    qrels = (out / "beir" / "qrels" / "train.tsv").read_text().splitlines()
    assert len(qrels) == 1 + sum(len(f["pos"]) for f in flag)
    assert json.loads((out / "stats.json").read_text())["removed"]["positive"] > 0
    marker = json.loads((out / ".synth-output").read_text())  # so the next run may replace it, and only it
    assert {"triplet.jsonl", "flagembedding.jsonl", "beir", "stats.json"} <= set(marker["files"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr


def test_cross_encoder_rescoring_picks_by_its_scores(embedder: object) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)  # the classification head on MiniLM is new: seed it
    ce = CrossEncoder(resolve_model("all-minilm-l6-v2"), num_labels=1, device="cpu")
    rows = docstring_pairs(["json", "textwrap"])[:12]
    params = MiningParams(num_negatives=2, range_max=6)
    plain = mine_dataset(rows, embedder, params=params)  # type: ignore[arg-type]
    out = mine_dataset(rows, embedder, params=params, rescorer=CrossEncoderRescorer(ce))  # type: ignore[arg-type]
    changed = 0
    for m, p in zip(out.result.mined, plain.result.mined, strict=True):
        q = out.result.queries[m.query]
        # The window is the embedder's 6 best non-positives; the CE's 2 best of them are kept.
        cand = [i for i in range(len(out.result.corpus)) if i not in m.positives]
        emb = (
            embedder.embed([q], role="query") @ embedder.embed([out.result.corpus[i] for i in cand], role="document").T
        )  # type: ignore[attr-defined]
        order = np.lexsort((np.array(cand), -emb[0]))[:6]
        top6 = [cand[j] for j in order]
        ce_scores = ce.predict([(q, out.result.corpus[i]) for i in top6], convert_to_numpy=True)
        want = [top6[j] for j in np.lexsort((np.array(top6), -ce_scores))[:2]]
        assert m.negatives == want
        np.testing.assert_allclose(m.negative_scores, sorted(ce_scores, reverse=True)[:2], rtol=1e-5)
        assert m.teachers["cross_encoder"][len(m.positives) :] == m.negative_scores
        changed += m.negatives != p.negatives
    assert changed > 0  # rescoring changed the outcome on real data


def test_synth_mine_bad_options_fail_in_one_line_before_any_model(tmp_path: Path) -> None:
    """The options build the recipe step's MineSpec: the same checks, one line each, exit 2, nothing written."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synth.cli", "mine", str(tmp_path / "none.jsonl"), "-o", str(out)]
    done = subprocess.run([*cmd, "--relative-margin", "1.5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: --relative-margin: must be in [0, 1)"
    done = subprocess.run([*cmd, "--range-min", "5", "--range-max", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "range_max must be > range_min" in done.stderr
    done = subprocess.run([*cmd, "--format", "quad"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: --format") and len(done.stderr.splitlines()) == 1
    assert not out.exists()


def test_synth_mine_never_writes_into_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """A user's folder (even one holding a file named like our output) is refused before any model loads."""
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"anchor": "a", "positive": "b"}) + "\n", encoding="utf-8")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine", encoding="utf-8")
    (victim / "triplet.jsonl").write_text("my own triplets\n", encoding="utf-8")
    base = [sys.executable, "-m", "synth.cli", "mine", str(data), "--format", "triplet"]
    done = subprocess.run([*base, "-o", str(victim)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "not written by synth" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (victim / "triplet.jsonl").read_text(encoding="utf-8") == "my own triplets\n"
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt", "triplet.jsonl"]
    done = subprocess.run([*base, "-o", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds the input" in done.stderr, done.stderr
    assert data.exists()


def test_synth_mine_embedder_backend_onnx_mines_what_torch_mines(tmp_path: Path) -> None:
    """--embedder-backend onnx exports the bundled MiniLM (into this run's SYNTH_HOME) and, being
    fp32 with the same vectors, picks torch's negatives with torch's scores."""
    import os

    rows = docstring_pairs(["json", "textwrap"])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    home = tmp_path / "home"
    env = {**os.environ, "SYNTH_HOME": str(home)}
    base = [sys.executable, "-m", "synth.cli", "mine", str(data), "--num-negatives", "2", "--range-max", "8"]
    base += ["--format", "flagembedding", "--output-scores"]
    mined = {}
    for backend in ("torch", "onnx"):
        cmd = [*base, "-o", str(tmp_path / backend), "--embedder-backend", backend]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr
        lines = (tmp_path / backend / "flagembedding.jsonl").read_text(encoding="utf-8").splitlines()
        mined[backend] = [json.loads(x) for x in lines]
        exports = list((home / "models" / "onnx").glob("*/model.onnx"))
        assert len(exports) == (backend == "onnx")  # torch never exports; onnx really ran through the export
    assert len(mined["onnx"]) == len({r["anchor"] for r in rows}) > 10
    for got, want in zip(mined["onnx"], mined["torch"], strict=True):
        assert (got["query"], got["pos"], got["neg"]) == (want["query"], want["pos"], want["neg"])
        np.testing.assert_allclose(got["neg_scores"], want["neg_scores"], atol=1e-4)
    bad = subprocess.run(
        [*base, "-o", str(tmp_path / "bad"), "--embedder-backend", "onnx8"], capture_output=True, text=True, timeout=120
    )
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: --embedder-backend:")
        and len(bad.stderr.splitlines()) == 1
    )
    assert not (tmp_path / "bad").exists()
