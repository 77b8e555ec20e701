"""The `synth` command line: thin wrappers that parse arguments, call the runner and show progress.

Heavy modules (the runner pulls in numpy, datasets, and later torch/vllm) are imported inside the
commands so that `synth --help` answers at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
console = Console()
err_console = Console(stderr=True)

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


class RichProgress:
    """Progress bars with ETA, one per long stage."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )

    @contextmanager
    def task(self, description: str, total: int) -> Iterator:
        task_id = self.bars.add_task(description, total=total)
        try:
            yield lambda n: self.bars.advance(task_id, n)
        finally:
            self.bars.update(task_id, completed=total)
            self.bars.refresh()


@app.command()
def generate(
    recipe: RecipeArg,
    limit: Annotated[int | None, typer.Option(help="Use only the first N source rows.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder.")] = None,
    set_: SetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs.")] = False,
) -> None:
    """Run a recipe end to end and write a training-ready dataset."""
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    spec, recipe_dir = _load(recipe, set_)
    from synth.runner import run_recipe, validate_recipe

    problems = _checked(lambda: validate_recipe(spec, recipe_dir))
    if problems:
        _fail(f"{recipe}: invalid recipe\n" + "\n".join(problems))
    progress = RichProgress()
    with progress.bars:
        result = _checked(lambda: run_recipe(spec, recipe_dir, limit=limit, output_dir=output, progress=progress))
    _print_summary(result)


def _checked(fn):  # type: ignore[no-untyped-def]
    """Run fn; user-facing errors (bad input, templates, sources) become one line, not a traceback."""
    from synth.io import SourceError
    from synth.prompts import PromptError

    try:
        return fn()
    except (SourceError, PromptError, ValueError, FileNotFoundError) as e:
        _fail(str(e), code=1)


def _print_summary(result) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="synth summary")
    for column in ("step", "rows in", "rows out", "dropped", "requests", "tokens in/out", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "dropped") else "right")
    for r in result.reports:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "-"
        tokens = f"{r.prompt_tokens}/{r.completion_tokens}" if r.requests else "-"
        table.add_row(
            r.name, str(r.rows_in), str(r.rows_out), drops, str(r.requests or "-"), tokens, f"{r.seconds:.1f}"
        )
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
    step: Annotated[str, typer.Option(help="Name of a generate step.")],
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


if __name__ == "__main__":  # pragma: no cover
    app()
