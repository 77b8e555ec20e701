"""Runs a recipe: source -> steps -> export, building each named model once, on first use.

The runner owns no model code and knows no step kind: it builds steps from the registry, hands
them a StepContext backed by the recipe's model pool, tallies what each step kept and dropped,
stops a run whose requests mostly failed (keeping the previous output), and writes the output.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from synth.backends import LLMBackend, Messages
from synth.embedders import Embedder
from synth.executors import Executor, make_executor, pipeline
from synth.executors.shards import read_rows
from synth.export import check_output_dir, output_lock, write_output
from synth.logs import copy_run_log
from synth.model_pool import ModelPool
from synth.progress import Progress, SilentProgress
from synth.prompts import PromptLibrary
from synth.publish import HubRepository, hub_for, push_with_spec
from synth.recipe import Recipe, input_paths
from synth.redact import redact_tree
from synth.report.summary import RunResult, StepReport
from synth.sources import check_source_spec, load_source_spec
from synth.steps import STEP_KINDS, Row, Step, StepContext, StepResult

BATCH_ROWS = 4096  # rows per shard: what a row-wise step holds at once, and the unit a resumed run skips


class RunFailed(RuntimeError):
    """A step failed as a whole (e.g. the server is down): one line for the user, old output kept."""


def build_steps(recipe: Recipe) -> list[Step]:
    return [STEP_KINDS[item.kind](item.spec) for item in recipe.steps]


def load_source(recipe: Recipe, limit: int | None = None) -> tuple[list[Row], list[Row]]:
    src = recipe.source
    limits = [x for x in (limit, src.limit) if x is not None]
    return load_source_spec(src, min(limits) if limits else None)


def default_output_dir(recipe: Recipe) -> Path:
    return recipe.output.dir or Path("outputs") / (recipe.name or "synth")


def validate_recipe(recipe: Recipe, recipe_dir: Path, limit: int | None = None) -> list[str]:
    """Check every source row's shape (one streaming pass, `limit` usable rows at most), then
    render every template on the first row and check the columns each step needs."""
    src = recipe.source
    limits = [x for x in (limit, src.limit) if x is not None]
    source_problems = check_source_spec(src, min(limits, default=None))
    if source_problems:
        return source_problems
    docs, _ = load_source(recipe, limit=1)
    if not docs:
        return [f"source {recipe.source.path or 'seeds'}: no usable rows"]
    prompts = PromptLibrary(recipe_dir)
    steps = build_steps(recipe)
    problems: list[str] = []
    row: Row = dict(docs[0], source_id=docs[0]["id"])
    for step in steps:
        problems.extend(step.problems(row, prompts))
        row = step.preview(dict(row))
    columns = recipe.output.columns
    for column in (columns.anchor, columns.positive, *columns.negatives, *columns.layout().columns()):
        if column not in row:
            problems.append(f"output.columns: no column {column!r} in the final rows")
    return problems


def _check_failures(step: Step, result: StepResult, max_share: float) -> None:
    """A step whose sent requests all (or mostly) failed is a failed run, not an empty success."""
    usage = result.usage
    if usage.requests == 0 or usage.failed == 0:
        return
    if usage.failed == usage.requests or usage.failed / usage.requests > max_share:
        first = next((d.get("detail") for d in result.dropped if d.get("detail")), "no detail")
        raise RunFailed(
            f"step {step.name!r}: {usage.failed} of {usage.requests} requests failed "
            f"(more than max_failed_share={max_share}); first error: {first}. "
            "No output written (any previous output is kept); replies received so far are cached."
        )


def run_recipe(
    recipe: Recipe,
    recipe_dir: Path,
    *,
    limit: int | None = None,
    output_dir: Path | None = None,
    progress: Progress | None = None,
    llm: LLMBackend | None = None,
    embedder: Embedder | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    executor: str = "local",
    address: str | None = None,
    batch_rows: int = BATCH_ROWS,
    hub: HubRepository | None = None,
) -> RunResult:
    """Run every step and write the output. Pass `llm`/`embedder` to reuse already-built default models.

    With the cache on (default: `$SYNTH_HOME/cache`), LLM replies and embeddings already paid for
    are reused, so a re-run or a run resumed after a crash only computes what is missing; steps
    and shards a killed run finished are skipped outright (synth/executors/pipeline.py).
    `executor`: "local" (this process) or "ray" (row-wise steps as Ray Data stages on the
    cluster at `address`, or on a local one started for the run). `batch_rows`: rows per shard.
    """
    started = time.perf_counter()
    if executor != "local" and llm is not None:
        raise ValueError(f"--executor {executor}: actors build the recipe's LLMs themselves; pass no built `llm`")
    progress = progress or SilentProgress()
    out = output_dir or default_output_dir(recipe)
    check_output_dir(out, input_paths(recipe))  # before any model loads or request is paid for
    push = recipe.output.push_to_hub
    if push is not None and hub is None:
        hub = hub_for(push)  # no token, or HF_HUB_OFFLINE: one line before anything is paid for
    with output_lock(out):  # a second run on the same output is refused before it pays for anything
        runner = make_executor(executor, recipe=recipe, recipe_dir=recipe_dir, address=address, progress=progress)
        try:
            result = _run(
                recipe,
                recipe_dir,
                out,
                limit,
                progress,
                llm,
                embedder,
                cache_dir,
                use_cache,
                started,
                runner,
                batch_rows,
            )
        finally:
            runner.close()
        if push is not None:  # still under the lock: nothing replaces the output while it uploads
            with progress.task(f"pushing to the Hub: {push.repo_id}", 1) as advance:
                push_with_spec(result.output_dir, push, hub)
                advance(1)
        return result


def _run(
    recipe: Recipe,
    recipe_dir: Path,
    out: Path,
    limit: int | None,
    progress: Progress,
    llm: LLMBackend | None,
    embedder: Embedder | None,
    cache_dir: Path | None,
    use_cache: bool,
    started: float,
    executor: Executor,
    batch_rows: int,
) -> RunResult:
    steps = build_steps(recipe)
    pool = ModelPool(recipe, progress=progress, use_cache=use_cache, cache_dir=cache_dir, llm=llm, embedder=embedder)
    ctx = StepContext(
        prompts=PromptLibrary(recipe_dir), documents=[], llm=pool.llm, embedder=pool.embedder, progress=progress
    )
    work = pipeline.work_folder(out)
    try:
        keys = pipeline.chain_keys(recipe, limit, steps, ctx, batch_rows)
        pipeline.prepare_work(work, keys, fresh=not use_cache)
        executor.start(pool)
        ctx.search = executor.search  # Ray: exact search as a map_batches stage; local: None
        ctx.scan = executor.scan  # Ray: the round-trip rule's scan likewise
        docs, source_drops, records = pipeline.read_source(recipe, limit, work / f"source-{keys[0]}", batch_rows)
        ctx.documents = pipeline.final_rows(docs)
        drop_files, extras = [source_drops], []
        reasons = Counter(str(d["reason"]) for d in read_rows(source_drops))
        reports = [StepReport("source", "source", records, docs.total, dict(reasons))]
        stage, previous = docs, None
        folders = [work / f"step{i}-{keys[i + 1]}" for i in range(len(steps))]
        finished = pipeline.resume_point(folders)
        for i, (step, folder) in enumerate(zip(steps, folders, strict=True)):
            fingerprint = step.fingerprint(ctx)
            done = pipeline.run_step(
                step, ctx, stage, folder, executor, _check_failures, recipe.max_failed_share, batch_rows, i <= finished
            )
            reports.append(
                StepReport(
                    name=step.name,
                    kind=step.key,
                    rows_in=done.rows_in,
                    rows_out=done.stage.total,
                    dropped=done.dropped,
                    usage=done.usage,
                    seconds=done.seconds,
                    fingerprint=fingerprint,
                    stats=done.stats,
                )
            )
            if previous is not None and (folder / "_done.json").is_file():  # a resume starts after this step
                shutil.rmtree(previous / "rows", ignore_errors=True)  # read: only its drops and extras are needed
            stage, previous = done.stage, folder
            drop_files.append(done.drops)
            extras.append(done.extras)
        models = pool.identities()
    finally:
        pool.close()
    from synth.report.card import dataset_card
    from synth.report.markdown import write_report
    from synth.report.summary import summary_dict

    dropped = pipeline.concat_drops(drop_files, work / "dropped.jsonl")
    rows = pipeline.final_rows(stage)
    result = RunResult(out, rows, dropped, reports, round(time.perf_counter() - started, 2), models)  # type: ignore[arg-type]

    def write_extras(folder: Path) -> None:
        """The report, then files a step adds to the output folder (a mine step's extra formats)."""
        write_report(folder)
        pipeline.copy_extras(extras, folder)
        copy_run_log(folder)  # logs/engine.log when the CLI routes the engine's output (synth/logs.py)

    with progress.task("writing dataset", 1) as advance:
        write_output(
            out,
            rows,
            dropped,
            anchor=recipe.output.columns.anchor,
            positive=recipe.output.columns.positive,
            negative_columns=recipe.output.columns.negatives,
            formats=recipe.output.formats,
            card=dataset_card(recipe, result),
            recipe_yaml=yaml.safe_dump(redact_tree(recipe.model_dump(mode="json")), sort_keys=False),
            summary=summary_dict(result),
            extras=write_extras,
            inputs=input_paths(recipe),
            layout=recipe.output.columns.layout(),
        )
        advance(1)
    result.output_dir = out.resolve()
    result.rows, result.dropped = pipeline.output_views(result.output_dir, len(rows))  # type: ignore[assignment]
    shutil.rmtree(work, ignore_errors=True)
    return result


def render_step(recipe: Recipe, recipe_dir: Path, step_name: str, row_index: int) -> Sequence[Messages]:
    """The exact messages a step would send for source row `row_index` (one per `each` combination)."""
    if row_index < 0:
        raise ValueError(f"--row {row_index}: must be 0 or more")
    docs, _ = load_source(recipe, limit=row_index + 1)
    if row_index >= len(docs):
        raise ValueError(f"--row {row_index}: the source has only {len(docs)} usable rows")
    prompts = PromptLibrary(recipe_dir)
    steps = build_steps(recipe)
    row: Row = dict(docs[row_index], source_id=docs[row_index]["id"])
    for step in steps:
        if step.name == step_name:
            return step.messages(row, prompts, str(row_index))
        row = step.preview(dict(row))
    names = ", ".join(s.name for s in steps)
    raise ValueError(f"no step named {step_name!r} (steps: {names})")
