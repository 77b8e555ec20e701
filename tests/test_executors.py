"""The streaming local executor: same output whatever the shard size, and resume by completion markers.

Runs on the test doubles (dry-run LLM, hashing embedder). A killed run is a real subprocess
SIGKILLed at a crash point (synth/faults.py); its request cache is then deleted, so whatever the
resumed run does not send again must have been skipped by a marker, not answered by the cache.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from datasets import load_from_disk

from synth.recipe import load_recipe
from synth.runner import run_recipe
from tests.conftest import REPO, write_recipe

DOCS = REPO / "recipes" / "data" / "python_stdlib.jsonl"
EVERY_RULE = f"""
source: {{path: {DOCS}}}
llm: {{backend: dry-run, sampling: {{max_tokens: 32, stop: ["\\n"]}}}}
embedder: {{model: hashing}}
steps:
  - generate: {{name: queries, template: query.j2, output: query, each: {{style: [question, keywords]}}}}
  - filter:
      name: clean
      rules:
        - {{rule: length, min_chars: 3, max_chars: 40}}
        - {{rule: copy, min_words: 2, threshold: 80}}
        - {{rule: dedup, name: per_source, scope: source, threshold: 60}}
        - {{rule: judge, threshold: 0.3}}
        - {{rule: dedup}}
        - {{rule: roundtrip, top_k: 2}}
        - {{rule: length, name: short, max_chars: 30}}
  - mine_negatives: {{name: negatives, num_negatives: 2, formats: [triplet, beir]}}
output: {{formats: [jsonl, parquet]}}
"""
QUICK = f"""
source: {{path: {DOCS}}}
llm: {{backend: dry-run, sampling: {{max_tokens: 32, stop: ["\\n"], seed: 0}}}}
embedder: {{model: hashing}}
steps:
  - generate: {{name: queries, template: query.j2, output: query, each: {{style: [question, keywords]}}}}
  - mine_negatives: {{name: negatives, num_negatives: 2, range_max: 20}}
"""


def output(folder: Path) -> dict[str, object]:
    """Everything a user reads from an output folder, except timings and request counts."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "plots" not in p.parts)
    return {
        "train": load_from_disk(str(folder)).to_list(),
        "details": load_from_disk(str(folder / "details")).to_list(),
        "dropped": (folder / "dropped.jsonl").read_text(),
        "triplets": (folder / "negatives" / "triplet.jsonl").read_text()
        if (folder / "negatives" / "triplet.jsonl").exists()
        else None,
        "files": [
            f for f in files if f not in ("summary.json", "README.md", "report.md", "report.html", ".synth-output")
        ],
    }


def test_shard_size_changes_nothing_in_the_output(tmp_path: Path) -> None:
    """Row-wise steps per shard, a filter's row-local head (and its per-source dedup) per shard, its
    global tail on all rows (only the columns it reads, joined back), mining, export."""
    recipe, folder = load_recipe(write_recipe(tmp_path, EVERY_RULE))
    results = {}
    for batch in (4096, 7, 1):
        out = tmp_path / f"out-{batch}"
        result = run_recipe(recipe, folder, output_dir=out, cache_dir=tmp_path / "cache", batch_rows=batch)
        results[batch] = (output(out), [(r.name, r.rows_in, r.rows_out, r.dropped) for r in result.reports])
        assert not (tmp_path / f".out-{batch}.synth-work").exists(), "the work folder goes once the output is in place"
    whole = results[4096]
    assert whole[1][2][3] and len(whole[1][2][3]) >= 3, "the filter dropped rows for several reasons"
    assert results[7] == whole and results[1] == whole
    assert len(load_from_disk(str(tmp_path / "out-1" / "dropped"))) == sum(sum(r[3].values()) for r in whole[1])


def run_in_subprocess(recipe: Path, out: Path, cache: Path, crash_at: str | None, batch: int) -> int:
    env = dict(os.environ, SYNTH_CACHE_DIR=str(cache))
    env.pop("SYNTH_CRASH_AT", None)
    if crash_at:
        env["SYNTH_CRASH_AT"] = crash_at
    code = (
        "import sys; from pathlib import Path; from synth.recipe import load_recipe; from synth.runner import run_recipe\n"
        "recipe, folder = load_recipe(Path(sys.argv[1]))\n"
        "run_recipe(recipe, folder, output_dir=Path(sys.argv[2]), limit=10, batch_rows=int(sys.argv[3]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(recipe), str(out), str(batch)], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=600, start_new_session=True,
    )  # fmt: skip
    assert done.returncode in (0, -9), done.stderr[-3000:]
    return done.returncode


def forget_cache(cache: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cache / 'requests.sqlite'}{suffix}").unlink(missing_ok=True)


def cached_replies(cache: Path) -> int:
    with sqlite3.connect(cache / "requests.sqlite") as conn:
        return int(conn.execute("SELECT count(*) FROM replies").fetchone()[0])


def test_a_resumed_run_skips_finished_shards_and_steps_without_the_cache(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, QUICK)
    reference = tmp_path / "ref"
    assert run_in_subprocess(recipe, reference, tmp_path / "ref-cache", None, 2) == 0
    assert cached_replies(tmp_path / "ref-cache") == 20  # 10 documents x 2 styles

    out, cache = tmp_path / "out", tmp_path / "cache"
    # Shards of 2 documents = 4 requests: the 10th reply is the 2nd of shard 2; shards 0 and 1 are done.
    assert run_in_subprocess(recipe, out, cache, "reply:10", 2) == -9
    assert cached_replies(cache) == 10
    marks = list((tmp_path / ".out.synth-work").glob("step0-*/*/head-done/*.json"))
    assert sorted(p.name for p in marks) == ["0.json", "1.json"]
    forget_cache(cache)  # what is not re-sent now was skipped by a marker
    assert run_in_subprocess(recipe, out, cache, "export:1", 2) == -9
    assert cached_replies(cache) == 12, "only shards 2, 3 and 4 were asked again"

    forget_cache(cache)
    assert run_in_subprocess(recipe, out, cache, None, 2) == 0
    assert cached_replies(cache) == 0, "every step was finished: nothing asked, the cache not even needed"
    summary = json.loads((out / "summary.json").read_text())
    queries = next(s for s in summary["steps"] if s["name"] == "queries")
    assert (queries["requests"], queries["cache_hits"]) == (0, 20)
    assert output(out) == output(reference)
    assert not (tmp_path / ".out.synth-work").exists()


def test_without_the_cache_nothing_is_resumed_or_left_behind(tmp_path: Path) -> None:
    recipe, folder = load_recipe(write_recipe(tmp_path, QUICK))
    stale = tmp_path / ".out.synth-work" / "step0-0123456789abcdef"
    stale.mkdir(parents=True)
    result = run_recipe(recipe, folder, output_dir=tmp_path / "out", limit=3, use_cache=False, batch_rows=2)
    assert next(r for r in result.reports if r.name == "queries").requests == 6
    assert not (tmp_path / ".out.synth-work").exists()
    details = load_from_disk(str(tmp_path / "out" / "details"))
    assert len(result.rows) == len(details) and result.rows._dataset is None  # type: ignore[attr-defined]  # counted, not opened
    assert result.rows[0] == details[0] and list(result.rows) == details.to_list() == result.rows.to_list()  # type: ignore[attr-defined]
    assert len(result.dropped) == len((tmp_path / "out" / "dropped.jsonl").read_text().splitlines())


def test_a_global_steps_output_is_cut_between_sources_and_knows_when_a_source_came_back(tmp_path: Path) -> None:
    """`_write_grouped` (a global step's rows back to shards): shards close only where the source
    changes, and `aligned` turns False once a source's rows reappear after another's, as the
    per-shard rules that follow rely on it (the seen ids are an IdSet of hashes, not strings)."""
    from synth.executors.pipeline import _write_grouped
    from synth.executors.shards import ShardSet, read_rows

    rows = [{"source_id": s, "n": i} for i, s in enumerate("aaabbcc")]
    stage = _write_grouped(iter(rows), ShardSet(tmp_path / "grouped"), batch_rows=2)
    assert stage.counts == [3, 2, 2] and stage.aligned
    assert [r["n"] for p in stage.paths for r in read_rows(p)] == list(range(7))

    back = [{"source_id": s} for s in "aabba"]
    assert not _write_grouped(iter(back), ShardSet(tmp_path / "back"), batch_rows=100).aligned
    many = [{"source_id": f"d{i}"} for i in range(70_000)] + [{"source_id": "d5"}]  # past one IdSet fold
    assert not _write_grouped(iter(many), ShardSet(tmp_path / "many"), batch_rows=100_000).aligned
