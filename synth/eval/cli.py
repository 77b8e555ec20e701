"""`synth eval ...`: build evaluation sets and score models on them (registered in synth/cli.py).

    synth eval run DATA --model all-minilm-l6-v2      nDCG@10, Recall@100, MRR@10 (+ one JSON line each)
    synth eval pool DATA -o small/                   MMTEB-style pooled, downsampled split
    synth eval passkey|needle HAYSTACK -o long/      LongEmbed-style sets at lengths in tokens
    synth eval limit -o limit-small/                 LIMIT-style "Who likes X?" stress set
    synth eval shift OUTPUT --real QUERIES           generated vs real queries (TTE depth)

Only typer and rich load at import time (so `synth --help` stays instant); every bad input ends
in one `error:` line and exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Evaluation sets (pooled BEIR splits, passkey/needle, LIMIT) and model scores on them.",
    no_args_is_help=True,
)
console = Console(width=None if Console().is_terminal else 140)
Opt = typer.Option
T = TypeVar("T")


def _checked(fn: Callable[[], T]) -> T:
    """Run fn; bad input (folders, models, tokenizers, sizes, outputs) becomes one error line, exit 1."""
    from synth.eval.beir import BeirError, EvalSetError
    from synth.eval.evaluate import EvalError
    from synth.export import OutputError
    from synth.sources import SourceError

    try:
        return fn()
    except (BeirError, EvalSetError, EvalError, OutputError, SourceError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _quiet() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command("run")
def run_command(
    data: Annotated[Path, typer.Argument(help="A BEIR folder, or a folder of BEIR folders (e.g. tokens-*/).")],
    models: Annotated[
        list[str] | None,
        Opt("--model", "-m", help="Alias, folder, hub id, hashing, or bm25 (repeatable). Default all-minilm-l6-v2."),
    ] = None,
    split: Annotated[str, Opt(help="Which qrels to score.")] = "test",
    query_prompt: Annotated[str | None, Opt(help="Put before every query, e.g. 'query: '.")] = None,
    document_prompt: Annotated[str | None, Opt(help="Put before every document, e.g. 'passage: '.")] = None,
    max_seq_length: Annotated[int | None, Opt(help="Override the model's token limit.")] = None,
    batch_size: Annotated[int, Opt(help="Embedding batch size.")] = 64,
    recall_at: Annotated[list[int] | None, Opt("--recall-at", help="Also report recall@K (repeatable).")] = None,
) -> None:
    """Score models with exact search: nDCG@10, Recall@100, MRR@10 and accuracy@1, then one JSON line each."""
    from synth.eval.beir import beir_folders, load_beir, require_split
    from synth.eval.evaluate import evaluate_data, make_retriever

    _quiet()
    cutoffs = sorted(set(recall_at or []) - {100})
    if any(k < 1 for k in cutoffs):
        _fail("--recall-at must be 1 or more")
    folders = _checked(lambda: beir_folders(data))
    datasets = {f: _checked(lambda f=f: load_beir(f)) for f in folders}
    for folder, loaded in datasets.items():  # a missing split fails before any model loads
        _checked(lambda f=folder, d=loaded: require_split(d, split, f))
    results = []
    for name in models or ["all-minilm-l6-v2"]:
        retriever = _checked(
            lambda name=name: make_retriever(
                name,
                query_prompt=query_prompt,
                document_prompt=document_prompt,
                batch_size=batch_size,
                max_seq_length=max_seq_length,
            )
        )
        for folder, loaded in datasets.items():
            results.append(
                _checked(
                    lambda r=retriever, f=folder, d=loaded: evaluate_data(r, d, split, folder=f, recall_cutoffs=cutoffs)
                )
            )
    table = Table(title=f"exact search, split {split}")
    extra = [f"recall@{k}" for k in cutoffs]
    for column in ["data", "model", "queries", "docs", "nDCG@10", "R@100", "MRR@10", "acc@1", *extra, "seconds"]:
        table.add_column(column, justify="left" if column in ("data", "model") else "right")
    for r in results:
        m = r.metrics
        cells = [f"{m[k]:.4f}" for k in ("ndcg@10", "recall@100", "mrr@10", "accuracy@1", *extra)]
        table.add_row(Path(r.dataset).name, r.model, str(r.queries), str(r.documents), *cells, f"{r.seconds:.1f}")
    console.print(table)
    for r in results:
        typer.echo(json.dumps(r.as_dict()))


@app.command("pool")
def pool_command(
    data: Annotated[Path, typer.Argument(help="The BEIR folder to downsample.")],
    output: Annotated[Path, Opt("--output", "-o", help="Folder for the pooled split.")],
    retrievers: Annotated[
        list[str] | None,
        Opt("--retriever", "-r", help="bm25 or an embedder (repeatable). Default: bm25 and all-minilm-l6-v2."),
    ] = None,
    top_k: Annotated[int, Opt(help="Candidates kept per query and retriever (MMTEB: 250).")] = 250,
    max_queries: Annotated[int | None, Opt(help="Keep a seeded sample of this many queries.")] = None,
    split: Annotated[str, Opt(help="Which qrels to keep.")] = "test",
    seed: int = 0,
) -> None:
    """Downsample a BEIR split MMTEB's way: judged documents + each retriever's top-k per query."""
    from synth.eval.evaluate import make_retriever
    from synth.eval.pooled import build_pooled

    _quiet()
    if top_k < 1 or (max_queries is not None and max_queries < 1):
        _fail("--top-k and --max-queries must be 1 or more")
    from synth.export import check_output_dir

    _checked(lambda: check_output_dir(output, [data]))  # before any model loads
    pool = [_checked(lambda n=n: make_retriever(n)) for n in retrievers or ["bm25", "all-minilm-l6-v2"]]
    stats = _checked(
        lambda: build_pooled(data, output, pool, split=split, top_k=top_k, max_queries=max_queries, seed=seed)
    )
    console.print(
        f"[green]pooled[/] {stats.queries} queries, {stats.documents} of {stats.documents_in_source} documents "
        f"({stats.judged_documents} judged) -> {output} (card: README.md)",
        highlight=False,
    )
    typer.echo(json.dumps(vars(stats)))


def _longembed(task: str, haystack: Path, output: Path, options: dict[str, Any]) -> None:
    from synth.eval.longembed import build_longembed
    from synth.export import check_output_dir

    _quiet()
    _checked(lambda: check_output_dir(output, [haystack]))
    stats = _checked(lambda: build_longembed(task, haystack, output, **options))  # type: ignore[arg-type]
    lengths = ", ".join(str(n) for n in stats.lengths)
    console.print(
        f"[green]{task}[/] {stats.queries} queries x lengths {lengths} ({stats.tokenizer} tokens) -> {output}",
        highlight=False,
    )
    typer.echo(json.dumps(vars(stats)))


HaystackArg = Annotated[Path, typer.Argument(help="Haystack texts: a BEIR folder or a jsonl/csv/parquet/text source.")]
OutputOpt = Annotated[Path, Opt("--output", "-o", help="Folder for the set (one BEIR folder per length).")]
TokenizerOpt = Annotated[str, Opt(help="Tokenizer that counts the lengths: alias, folder or hub id.")]
LengthsOpt = Annotated[list[int] | None, Opt("--length", "-l", help="Length in tokens (repeatable).")]


@app.command("passkey")
def passkey_command(
    haystack: HaystackArg,
    output: OutputOpt,
    tokenizer: TokenizerOpt = "all-minilm-l6-v2",
    lengths: LengthsOpt = None,
    queries: Annotated[int, Opt(help="Queries (and documents) per length.")] = 50,
    seed: int = 0,
    text_column: Annotated[str, Opt(help="Text column of a source file.")] = "text",
) -> None:
    """Personal passkeys hidden in haystack windows: "What is the pass key of NAME?"."""
    options = {"tokenizer": tokenizer, "queries": queries, "seed": seed, "text_column": text_column}
    _longembed("passkey", haystack, output, {**options, "lengths": lengths or [256, 512, 1024, 2048, 4096]})


@app.command("needle")
def needle_command(
    haystack: HaystackArg,
    output: OutputOpt,
    tokenizer: TokenizerOpt = "all-minilm-l6-v2",
    lengths: LengthsOpt = None,
    queries: Annotated[int, Opt(help="Queries (and documents) per length; at most the number of needles.")] = 50,
    needles: Annotated[Path | None, Opt(help='JSONL of {"needle", "question"}; default: the shipped 60.')] = None,
    seed: int = 0,
    text_column: Annotated[str, Opt(help="Text column of a source file.")] = "text",
) -> None:
    """Made-up facts hidden in haystack windows; each query asks the question its fact answers."""
    options = {"tokenizer": tokenizer, "queries": queries, "seed": seed, "text_column": text_column}
    _longembed(
        "needle", haystack, output, {**options, "lengths": lengths or [256, 512, 1024, 2048, 4096], "needles": needles}
    )


@app.command("limit")
def limit_command(
    output: OutputOpt,
    size: Annotated[str, Opt(help="small: the n core documents; full: plus distractors up to --documents.")] = "small",
    queries: int = 1000,
    k: Annotated[int, Opt("--k", "-k", help="Relevant documents per query.")] = 2,
    documents: Annotated[int, Opt(help="Documents of the full size.")] = 50_000,
    attributes_per_doc: Annotated[int, Opt(help="Attributes each person likes (at least).")] = 45,
    vocabulary: Annotated[Path | None, Opt(help="Attribute list, one per line; default: the shipped list.")] = None,
    seed: int = 0,
) -> None:
    """LIMIT-style set: n = smallest with C(n, k) >= queries core documents; "Who likes X?"."""
    from synth.eval.limit import build_limit
    from synth.export import check_output_dir

    if size not in ("small", "full"):
        _fail(f"--size {size!r}: small or full")
    _checked(lambda: check_output_dir(output, [vocabulary] if vocabulary else []))
    stats = _checked(
        lambda: build_limit(
            output,
            queries=queries,
            k=k,
            size=size,  # type: ignore[arg-type]
            documents=documents,
            attributes_per_doc=attributes_per_doc,
            vocabulary_path=vocabulary,
            seed=seed,
        )
    )
    console.print(
        f"[green]limit[/] {stats.size}: {stats.queries} queries, k={stats.k}, n={stats.core_documents}, "
        f"{stats.documents} documents -> {output}",
        highlight=False,
    )
    typer.echo(json.dumps(vars(stats)))


@app.command("shift")
def shift_command(
    generated: Annotated[Path, typer.Argument(help="A synth output (its anchors), a BEIR folder or a source file.")],
    real: Annotated[Path, Opt(help="Real queries: a BEIR folder (its split's queries) or a source file.")],
    column: Annotated[
        str | None, Opt(help="Column of the generated texts (default anchor, or text for files).")
    ] = None,
    model: Annotated[
        str, Opt("--model", "-m", help="Embedder for the depth (alias, folder, hub id).")
    ] = "all-minilm-l6-v2",
    split: Annotated[str, Opt(help="Split of a BEIR --real folder.")] = "test",
    plot: Annotated[Path | None, Opt(help="Write the depth histograms to this PNG.")] = None,
    seed: int = 0,
) -> None:
    """Are generated queries where real ones are? TTE depth + rank-sum test, with a half-vs-half control."""
    from synth.eval.evaluate import DenseRetriever, make_retriever
    from synth.eval.shift import read_texts, shift_check, shift_plot, verdict

    _quiet()
    gen_texts = _checked(lambda: read_texts(generated, column))
    real_texts = _checked(lambda: read_texts(real, split=split))
    retriever = _checked(lambda: make_retriever(model))
    if not isinstance(retriever, DenseRetriever):
        _fail("--model must be an embedder, not bm25")
    tests = _checked(lambda: shift_check(gen_texts, real_texts, retriever.embedder, seed=seed))  # type: ignore[attr-defined]
    table = Table(title="TTE depth w.r.t. the reference (Q 0.5 = no shift)")
    for c in ("comparison", "ref n", "other n", "Q", "W", "p", "verdict"):
        table.add_column(c, justify="left" if c in ("comparison", "verdict") else "right")
    for t in tests:
        table.add_row(t.label, str(t.n_reference), str(t.n_other), f"{t.q:.3f}", f"{t.w:.2f}", f"{t.p:.3g}", verdict(t))
    console.print(table)
    if plot is not None:
        _checked(lambda: shift_plot(tests, plot))
        console.print(f"plot: {plot}", highlight=False)
    typer.echo(json.dumps({"model": model, "tests": [t.as_dict() for t in tests]}))
