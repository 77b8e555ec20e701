"""Nothing is paid for twice: SIGKILL runs at several points, resume, compare with a clean run.

Each killed run is the real `synth generate` in a subprocess. A crash point (synth/faults.py)
SIGKILLs it: after the 7th reply is committed (generation), after the corpus embeddings are
stored (mining), and after the dataset is written to the temporary output folder (export). The
request cache records which run paid for each reply, which proves that no reply was bought
twice: a re-sent request would have overwritten the earlier run's id.

The crash-and-resume bookkeeping runs on the test doubles (`--set llm.backend=dry-run --set
embedder.model=hashing`). One run on the real vLLM engine is killed mid-generation and resumed,
to prove the real engine's replies do not depend on the batch or the process (per-request seeds),
so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from datasets import load_from_disk

from synth.prompts import SHIPPED_PROMPTS
from synth.recipe import load_recipe
from synth.runner import run_recipe
from tests.conftest import QUICKSTART, REPO, write_recipe

LIMIT = "10"  # 10 documents x 2 styles = 20 requests
DOUBLES = ["--set", "llm.backend=dry-run", "--set", "embedder.model=hashing"]


def generate(
    out: Path, cache: Path, crash_at: str | None = None, doubles: bool = True, limit: str = LIMIT
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache))
    env.pop("SYNTH_CRASH_AT", None)
    if crash_at:
        env["SYNTH_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "synth.cli", "generate", str(QUICKSTART), "--limit", limit, "-o", str(out)]
    command += DOUBLES if doubles else []
    # Own session: the crash kills the whole group (engine workers too), so no orphan holds our pipes.
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO, start_new_session=True
    )


def replies_by_run(cache: Path) -> dict[str, int]:
    with sqlite3.connect(cache / "requests.sqlite") as conn:
        return dict(conn.execute("SELECT run, count(*) FROM replies GROUP BY run ORDER BY min(created)").fetchall())


def final_rows(out: Path) -> tuple[list[dict], list[dict]]:
    train = load_from_disk(str(out)).to_list()
    details = load_from_disk(str(out / "details")).to_list()
    keep = ("source_id", "style", "query", "negative_ids", "queries_template", "queries_sampling")
    return train, [{k: d[k] for k in keep} for d in details]


def test_killed_runs_resume_to_the_same_output_without_paying_twice(tmp_path: Path) -> None:
    reference = generate(tmp_path / "ref", tmp_path / "ref-cache")
    assert reference.returncode == 0, reference.stderr[-3000:]
    ref_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    total_requests = next(s["requests"] for s in ref_summary["steps"] if s["name"] == "queries")
    assert total_requests == 20

    out, cache = tmp_path / "out", tmp_path / "cache"
    killed = generate(out, cache, crash_at="reply:7")  # during generation
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list(replies_by_run(cache).values()) == [7]
    assert not out.exists()

    killed = generate(out, cache, crash_at="embedded:1")  # during mining
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list(replies_by_run(cache).values()) == [7, 13], "the 7 replies of run 1 were not bought again"
    assert not out.exists()

    killed = generate(out, cache, crash_at="export:1")  # during export: a half-written temp folder
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())

    resumed = generate(out, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(replies_by_run(cache).values()) == [7, 13]
    summary = json.loads((out / "summary.json").read_text())
    queries = next(s for s in summary["steps"] if s["name"] == "queries")
    assert (queries["requests"], queries["cache_hits"]) == (0, 20)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "stale temp folders removed"

    assert final_rows(out) == final_rows(tmp_path / "ref"), "resumed output equals the uninterrupted run"


def test_a_real_engine_run_killed_mid_generation_resumes_to_the_uninterrupted_output(
    tmp_path: Path,
    vllm_backend,  # type: ignore[no-untyped-def]
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """kill -9 of `synth generate` on the real engine (its own engine, as a user's command), then
    resume on the real engine: the paid replies are reused and the output equals a clean run."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    killed = generate(out, cache, crash_at="reply:5", doubles=False, limit="6")  # 6 documents x 2 styles
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list(replies_by_run(cache).values()) == [5]
    assert not out.exists()

    recipe, recipe_dir = load_recipe(QUICKSTART)

    def run(output: Path, cache_dir: Path) -> dict[str, tuple[int, int]]:
        result = run_recipe(
            recipe, recipe_dir, limit=6, output_dir=output, llm=vllm_backend, embedder=embedder, cache_dir=cache_dir
        )
        return {r.name: (r.requests, r.cache_hits) for r in result.reports if r.kind == "generate"}

    assert run(out, cache) == {"queries": (7, 5)}, "resumed on the real engine: only the 7 unpaid requests"
    assert list(replies_by_run(cache).values()) == [5, 7], "the 5 replies of the killed run were not bought again"
    assert run(tmp_path / "ref", tmp_path / "ref-cache") == {"queries": (12, 0)}
    resumed, reference = final_rows(out), final_rows(tmp_path / "ref")
    assert resumed == reference and len(reference[0]) > 0, "resumed output equals the uninterrupted run"


TWO_STEP = """
source: {{path: {docs}}}
llm: {{sampling: {{max_tokens: 32, stop: ["\\n"], seed: 0}}}}
steps:
  - generate: {{name: queries, template: q.j2, output: query}}
  - generate: {{name: negatives, template: neg.j2, output: llm_negative}}
  - mine_negatives: {{name: mined, num_negatives: 1, range_max: 10}}
"""


def test_editing_one_template_reruns_only_that_step_and_what_follows(
    tmp_path: Path,
    dry_backend,  # type: ignore[no-untyped-def]
    hashing_embedder,  # type: ignore[no-untyped-def]
) -> None:
    shutil.copy(SHIPPED_PROMPTS / "query_question.j2", tmp_path / "q.j2")
    shutil.copy(SHIPPED_PROMPTS / "hard_negative.j2", tmp_path / "neg.j2")
    recipe_path = write_recipe(tmp_path, TWO_STEP.format(docs=QUICKSTART.parent / "data" / "python_stdlib.jsonl"))

    def run() -> dict[str, tuple[int, int]]:
        recipe, recipe_dir = load_recipe(recipe_path)
        result = run_recipe(
            recipe, recipe_dir, limit=5, output_dir=tmp_path / "out", llm=dry_backend, embedder=hashing_embedder,
            cache_dir=tmp_path / "cache",
        )  # fmt: skip
        return {r.name: (r.requests, r.cache_hits) for r in result.reports if r.kind == "generate"}

    first = run()
    assert first["queries"] == (5, 0) and first["negatives"][1] == 0 and first["negatives"][0] >= 1
    n_neg = first["negatives"][0]
    assert run() == {"queries": (0, 5), "negatives": (0, n_neg)}, "unchanged recipe: zero requests"

    (tmp_path / "neg.j2").write_text((tmp_path / "neg.j2").read_text() + "\nKeep it under 40 words.")
    assert run() == {"queries": (0, 5), "negatives": (n_neg, 0)}, "only the edited step re-runs"

    (tmp_path / "q.j2").write_text((tmp_path / "q.j2").read_text() + "\nUse simple words.")
    again = run()
    assert again["queries"] == (5, 0), "edited first step re-runs"
    assert again["negatives"][0] >= 1, "the step after it sees new queries and re-runs"


def test_no_cache_reads_and_writes_nothing(tmp_path: Path, dry_backend, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    recipe, recipe_dir = load_recipe(QUICKSTART)
    result = run_recipe(
        recipe, recipe_dir, limit=2, output_dir=tmp_path / "out", llm=dry_backend, embedder=hashing_embedder,
        cache_dir=tmp_path / "cache", use_cache=False,
    )  # fmt: skip
    assert not (tmp_path / "cache").exists()
    assert next(r for r in result.reports if r.name == "queries").requests == 4
