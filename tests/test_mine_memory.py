"""The recipe's mining step in bounded memory (synth/mining/stream.py): same output, flat peak RSS.

Real hashing embedder (no model), real shards on disk, the pipeline's own `run_step`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from synth.embedders import HashingEmbedder
from synth.mining.spec import MineSpec
from synth.mining.stream import StreamedMining
from synth.prompts import PromptLibrary
from synth.specs import EmbedderSpec
from synth.steps.base import StepContext
from synth.steps.mine import MineNegativesStep

WORDS = (
    "acid bone cell diet drug fat gene gut heart iron kidney liver lung milk muscle nerve oil protein salt skin "
    "sleep sugar tumor vitamin zinc blood brain cancer fiber insulin"
).split()


def _text(i: int, n: int, salt: int) -> str:
    """A few words drawn (seeded by i): texts share words, so scores vary and ties happen."""
    rng = random.Random(i * 1000 + salt)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _case() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Documents, and rows with what grouping must get right: repeated queries (one query, several
    positives), a positive that is no document, a duplicate document text, a row without its id."""
    docs = [{"id": f"d{i}", "text": _text(i, 6 + i % 5, 1)} for i in range(300)]
    docs.append({"id": "dup", "text": docs[5]["text"]})  # the same text again: the first one is the positive
    rows = []
    for i in range(700):
        d = docs[(i * 13) % 300]
        query = _text(i % 450, 3, 2)  # 250 queries repeat, some with another positive
        rows.append({"source_id": d["id"], "id": d["id"], "query": query, "text": d["text"], "_synth_row": i})
    rows[3]["text"] = "a passage nobody indexed about zinc and iron"  # positive-only text
    rows[9]["text"] = rows[3]["text"]
    rows[11]["source_id"] = None  # no id: nothing excluded beyond its positive
    return docs, rows


def _ctx(docs: list[dict[str, object]]) -> StepContext:
    embedder = HashingEmbedder(EmbedderSpec(model="hashing-64"))
    return StepContext(prompts=PromptLibrary(None), documents=docs, llm=None, embedder=lambda _: embedder)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mine",
    [
        {"num_negatives": 2, "range_min": 1, "range_max": 12, "relative_margin": 0.05},
        {"num_negatives": 3, "sampling": "random", "seed": 4, "false_negative_margin": 0.02, "min_negatives": 1},
        {"num_negatives": 1, "range_max": 5, "st_compatible": True, "absolute_margin": 0.01},
        {"num_negatives": 2, "range_max": 8, "relative_margin": 0.05, "search": "faiss", "nprobe": 2},
    ],
)
def test_streamed_mining_equals_the_in_memory_step(tmp_path: Path, mine: dict[str, object]) -> None:
    """Rows, drop records and stats equal the whole-list step's, with queries in many small batches."""
    docs, rows = _case()
    step = MineNegativesStep(MineSpec(name="negatives", **mine))  # type: ignore[arg-type]
    assert step.streams()
    want = step(rows, _ctx(docs))

    def batches():  # type: ignore[no-untyped-def]
        return (rows[s : s + 64] for s in range(0, len(rows), 64))

    got = step.stream(batches, _ctx(docs), tmp_path / "drops.jsonl")
    assert got is not None
    assert got.stats == want.stats
    assert list(got.rows) == want.rows
    dropped = [json.loads(line) for line in (tmp_path / "drops.jsonl").read_text().splitlines()]
    assert dropped == json.loads(json.dumps(want.dropped))
    assert want.rows and (want.dropped or "relative_margin" not in mine)  # the margin case drops rows too

    # The same through several query batches (each searched against the corpus read back from disk).
    mining = StreamedMining(
        step.spec,
        _ctx(docs).embedder(None),
        query_column="query",
        positive_column="text",
        positive_id_column="source_id",
        progress=_ctx(docs).progress,
        query_batch=37,
    )
    mining.plan_rows(batches, mining.add_documents(docs))
    mining.run(batches)
    need = step.spec.min_negatives or step.spec.num_negatives
    assert list(mining.rows(batches, need, lambda *a: None)) == want.rows
    mining.close()


def test_a_judge_or_formats_keep_the_in_memory_path() -> None:
    assert not MineNegativesStep(MineSpec(name="n", formats=["triplet"])).streams()
    assert not MineNegativesStep(MineSpec(name="n", rescore="cross_encoder", cross_encoder="x")).streams()
    assert MineNegativesStep(MineSpec(name="n", search="faiss")).streams()
    assert MineNegativesStep(MineSpec(name="n")).streams()


# What a peak-memory script (run in a process of its own) starts with: imports taken before the
# baseline, the seeded texts, and the process's peak RSS in MiB.
PEAK_PRELUDE = """
import json, random, sys
from pathlib import Path
import numpy, torch  # imported before the baseline is taken (the search uses torch.topk)
from synth.embedders import HashingEmbedder
from synth.executors import pipeline
from synth.executors.shards import ShardSet
from synth.prompts import PromptLibrary
from synth.specs import EmbedderSpec
from synth.steps.base import StepContext

WORDS = __WORDS__

def _text(i, n, salt):
    rng = random.Random(i * 1000 + salt)
    return " ".join(rng.choice(WORDS) for _ in range(n))

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
""".replace("__WORDS__", repr(WORDS))

_PEAK_SCRIPT = (
    PEAK_PRELUDE
    + """
from synth.mining.spec import MineSpec
from synth.steps.mine import MineNegativesStep

folder, n = Path(sys.argv[1]), int(sys.argv[2])
n_docs = n // 20
docs, rows = ShardSet(folder / "docs"), ShardSet(folder / "rows")
doc_counts = [docs.write(s // 4096, ({"id": f"d{i}", "text": _text(i, 12, 1)} for i in range(s, min(n_docs, s + 4096))))
              for s in range(0, n_docs, 4096)]
def row(i):  # a query of words from its document and others, made unique by its number: some rows keep a negative
    own = _text(i % n_docs, 12, 1)
    return {"source_id": f"d{i % n_docs}", "id": f"d{i % n_docs}", "text": own,
            "query": " ".join([*own.split()[i % 5 : i % 5 + 3], _text(i, 2, 2), str(i)])}
counts = [rows.write(s // 4096, (row(i) for i in range(s, min(n, s + 4096)))) for s in range(0, n, 4096)]
embedder = HashingEmbedder(EmbedderSpec(model="hashing-64"))
ctx = StepContext(prompts=PromptLibrary(None), llm=None, embedder=lambda _: embedder,
                  documents=pipeline.final_rows(pipeline.Stage([docs.path(i) for i in range(len(doc_counts))], doc_counts)))
stage = pipeline.Stage([rows.path(i) for i in range(len(counts))], counts)
step = MineNegativesStep(MineSpec(name="negatives", num_negatives=1, range_min=3, range_max=30, relative_margin=0.05))
before = hwm()
out = pipeline.run_step(step, ctx, stage, folder / "step", None, lambda *a: None, 1.0, 4096)
print(json.dumps({"before": before, "after": hwm(), "rows": out.stage.total, "dropped": out.dropped}))
"""
)


def test_mining_memory_does_not_grow_with_the_queries(tmp_path: Path) -> None:
    """Peak RSS while mining 100k distinct short queries against 5k documents grows by far less than
    holding them takes (the whole-list step: every row, query vector, window, result and output
    row at once): queries go through search a batch at a time, rows and drops straight to files."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), "100000"], capture_output=True, text=True, check=True
    )
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["rows"] + sum(peak["dropped"].values()) == 100000, peak
    # MiB. What remains is the search's fixed working set (a 1024 x 8192 score block and its top-k
    # temporaries, ~100 MiB) and ~100 bytes a row; the whole-list step grew by ~700 MiB here.
    assert peak["after"] - peak["before"] < 200, peak
