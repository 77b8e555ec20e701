"""The `synth` command line: thin wrappers that parse arguments, call the runner and show progress.

Heavy modules (the runner pulls in numpy, datasets, and later torch/vllm) are imported inside the
commands so that `synth --help` answers at once.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Generate training data for embedding and retrieval models with LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80-column default.
console = Console(width=None if Console().is_terminal else 140)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)

RecipeArg = Annotated[Path, typer.Argument(help="Path to the recipe YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value, e.g. --set llm.sampling.temperature=0.2 (repeatable)."),
]


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(recipe: Path, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from synth.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as e:
        _fail(f"{recipe}: invalid recipe\n{e}")


@app.command()
def generate(
    recipe: RecipeArg,
    limit: Annotated[int | None, typer.Option(help="Use only the first N source rows.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder.")] = None,
    set_: SetOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show engine and library logs (always in logs/engine.log).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the request and embedding caches.")
    ] = False,
    executor: Annotated[
        str, typer.Option(help="Where row-wise steps run: local (this process) or ray (a Ray cluster).")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one).")
    ] = None,
) -> None:
    """Run a recipe end to end and write a training-ready dataset (re-runs reuse cached replies)."""
    if limit is not None and limit < 1:
        _fail(f"--limit {limit}: must be 1 or more")
    if quiet and verbose:
        _fail("--quiet and --verbose: choose one")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # save_to_disk bars: noise in the log
    from synth.logs import route_engine_logs

    with route_engine_logs(_show_log_line if verbose else None) as log, _console_on(log):
        try:
            result = _generate(recipe, limit, output, set_, no_cache, quiet, log, executor, address)
        except (typer.Exit, SystemExit):
            raise
        except BaseException:  # a bug, not a user error: the traceback follows, the log stays
            log.keep = True
            err_console.print(f"engine and library logs: {log.path}", highlight=False, soft_wrap=True)
            raise
        saved = result.output_dir / "logs" / "engine.log"
        log.keep = not saved.is_file()  # the output has no copy: keep the temporary one
        where = saved if saved.is_file() else log.path
    _print_summary(result)
    if not quiet:
        console.print(f"engine and library logs: {where}", highlight=False, soft_wrap=True)


def _generate(recipe, limit, output, set_, no_cache, quiet, log, executor="local", address=None):  # type: ignore[no-untyped-def]
    """The run itself, its library output going to `log`; bars on a terminal, plain lines otherwise."""
    spec, recipe_dir = _load(recipe, set_)
    from synth.progress import PlainProgress, RichProgress, SilentProgress
    from synth.runner import run_recipe, validate_recipe

    problems = _checked(lambda: validate_recipe(spec, recipe_dir, limit=limit))
    if problems:
        _fail(f"{recipe}: invalid recipe\n" + "\n".join(problems))

    def run(progress) -> object:  # type: ignore[no-untyped-def]
        return _checked(
            lambda: run_recipe(
                spec,
                recipe_dir,
                limit=limit,
                output_dir=output,
                progress=progress,
                use_cache=not no_cache,
                executor=executor,
                address=address,
            ),
            log=log,
        )

    if quiet:
        return run(SilentProgress())
    if console.is_terminal:
        bars = RichProgress(console, redirect=False)  # library output goes to the log, not above the bars
        with bars.bars:
            return run(bars)
    return run(PlainProgress(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)))


def _show_log_line(line: str) -> None:
    """-v: an engine or library line, dimmed, above the progress bars."""
    console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _console_on(log):  # type: ignore[no-untyped-def]
    """synth's consoles write to the terminal while the run log holds stdout and stderr."""
    console.file, err_console.file = log.console_out, log.console_err
    try:
        yield
    finally:
        console.file = err_console.file = None  # type: ignore[assignment]


def _checked(fn, log=None):  # type: ignore[no-untyped-def]
    """Run fn; user-facing errors (bad input, templates, sources) become one line, not a traceback.

    With a run `log`, the line also says where the engine's own messages are.
    """
    from synth.backends import BackendError
    from synth.prompts import PromptError
    from synth.runner import RunFailed
    from synth.sources import SourceError

    logs = ""
    if log is not None:
        logs = f" (engine and library logs: {log.path})"  # same line: an error stays one line
    try:
        return fn()
    except (BackendError, RunFailed) as e:  # an engine or server problem: its log is worth a look
        if log is not None:
            log.keep = True
        _fail(str(e) + logs, code=1)
    except (SourceError, PromptError, ValueError, FileNotFoundError) as e:  # the input's fault: the line says it all
        _fail(str(e), code=1)
    except KeyboardInterrupt:  # Ctrl-C: nothing half-written; replies received so far are in the cache
        if log is not None:
            log.keep = True
        _fail(
            "interrupted: no output written; replies received so far are cached, run again to resume" + logs, code=130
        )


def _print_summary(result) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="synth summary")
    for column in ("step", "rows in", "rows out", "dropped", "requests", "cached", "tokens in/out", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "dropped") else "right")
    for r in result.reports:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "-"
        tokens = f"{r.prompt_tokens}/{r.completion_tokens}" if r.requests else "-"
        requests = f"{r.requests} ({r.retries} retries)" if r.retries else str(r.requests or "-")
        cached = str(r.cache_hits) if r.kind == "generate" else "-"
        table.add_row(r.name, str(r.rows_in), str(r.rows_out), drops, requests, cached, tokens, f"{r.seconds:.1f}")
    console.print(table)
    console.print(
        f"[bold green]{len(result.rows)} rows[/] written to [bold]{result.output_dir}[/] in {result.seconds:.0f} s"
    )
    console.print(f"load it with: datasets.load_from_disk({str(result.output_dir)!r})")


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe and render every template on the first row; loads no model."""
    spec, recipe_dir = _load(recipe, set_)
    from synth.runner import validate_recipe

    problems = _checked(lambda: validate_recipe(spec, recipe_dir))
    if problems:
        _fail(f"{recipe}: invalid recipe\n" + "\n".join(problems))
    console.print(f"[green]ok[/] {recipe}: {len(spec.steps)} steps, templates render on the first row")


@app.command()
def render(
    recipe: RecipeArg,
    step: Annotated[str, typer.Option(help="Name of a step that sends prompts (generate).")],
    row: Annotated[int, typer.Option(help="Index of the source row.")] = 0,
    set_: SetOpt = None,
) -> None:
    """Print the exact chat messages a step sends for one source row."""
    spec, recipe_dir = _load(recipe, set_)
    from synth.runner import render_step

    conversations = _checked(lambda: render_step(spec, recipe_dir, step, row))
    for i, messages in enumerate(conversations):
        if len(conversations) > 1:
            console.rule(f"prompt {i + 1} of {len(conversations)}")
        for message in messages:
            console.print(f"[bold cyan]### {message['role']}[/]")
            console.print(message["content"], markup=False, highlight=False)


@app.command()
def models() -> None:
    """List the model aliases and where their files come from."""
    from synth.models import ALIASES, alias_location

    for alias in ALIASES.values():
        console.print(f"[bold]{alias.name}[/] ({alias.kind}, package {alias.package})", highlight=False)
        console.print(f"  {alias.description}", highlight=False, soft_wrap=True)
        console.print(f"  {alias_location(alias.name)}", highlight=False, soft_wrap=True)
    console.print("Any other name is a local folder or a Hugging Face hub id.")


cache_app = typer.Typer(help="Inspect or clear the request and embedding caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("stats")
def cache_stats() -> None:
    """Where the caches are, how many replies and vectors they hold, and their size."""
    from synth.cache import default_cache_dir, open_caches

    requests, embeddings = _checked(lambda: open_caches(default_cache_dir(), read_only=True))
    for name, stats in (("requests", requests.stats()), ("embeddings", embeddings.stats())):
        details = ", ".join(f"{k}={v}" for k, v in stats.items() if k != "path")
        console.print(f"[bold]{name}[/]: {stats['path']} ({details})", highlight=False)


@cache_app.command("clear")
def cache_clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every cached reply and embedding."""
    from synth.cache import default_cache_dir, open_caches

    folder = _checked(default_cache_dir)
    if not yes and not typer.confirm(f"delete all cached replies and embeddings in {folder}?"):
        raise typer.Exit(1)
    requests, embeddings = _checked(lambda: open_caches(folder))
    console.print(f"removed {requests.clear()} replies and {embeddings.clear()} embeddings from {folder}")


@app.command()
def inspect(
    output: Annotated[Path, typer.Argument(help="An output folder written by `synth generate`.")],
    report: Annotated[bool, typer.Option("--report", help="Also (re)write report.md, report.html and plots/.")] = False,
    examples: Annotated[int, typer.Option(help="How many training rows to print.")] = 3,
) -> None:
    """Print an output's summary: rows per step, drops by rule, lengths and scores, examples."""
    from synth.report.markdown import write_report
    from synth.report.terminal import inspect_output

    if report:
        _checked(lambda: write_report(output))
    _checked(lambda: inspect_output(output, console, examples))


@app.command()
def push(
    output: Annotated[Path, typer.Argument(help="An output folder written by `synth generate`.")],
    repo_id: Annotated[str, typer.Argument(help="The dataset repository on the Hugging Face Hub: OWNER/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    token_env: Annotated[
        str, typer.Option("--token-env", help="The environment variable that holds the Hub token.")
    ] = "HF_TOKEN",
    to_folder: Annotated[
        Path | None,
        typer.Option("--to-folder", help="Write what would be uploaded into this local folder instead (no token)."),
    ] = None,
) -> None:
    """Publish an output to the Hugging Face Hub: the dataset, details/ and dropped/ as configs, card, report."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from synth.publish import HfHubRepository, LocalFolderRepository, PushError, push_output, token_from_env

    try:
        hub = LocalFolderRepository(to_folder) if to_folder is not None else HfHubRepository(token_from_env(token_env))
        with console.status(f"pushing {output} to {repo_id}"):
            url = push_output(output, repo_id, hub, private=private)
    except PushError as e:
        _fail(str(e), code=1)
    console.print(f"[bold green]pushed[/] {output} to {url}", highlight=False, soft_wrap=True)


from synth.mining.cli import mine_command  # noqa: E402  (typer only; heavy imports stay inside)

app.command("mine")(mine_command)
app.add_typer(__import__("synth.eval.cli", fromlist=["app"]).app, name="eval")  # `synth eval ...`

if __name__ == "__main__":  # pragma: no cover
    app()
