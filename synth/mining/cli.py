"""`synth mine`: hard negatives for an existing dataset, without a recipe (registered in synth/cli.py).

The options build a `MineSpec`, the recipe step's own spec, so a bad value fails with the same
check as in a recipe, in one line, before any model loads. Only typer is imported at module
level, so `synth --help` stays instant; this module never imports synth.cli (no import circle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Opt = typer.Option
OPTION_NAMES = {"formats": "--format"}  # spec fields whose option is spelled otherwise


def _spec(options: dict[str, Any]) -> Any:
    """The MineSpec of the options, or exit 2 with one line per bad option."""
    from pydantic import ValidationError

    from synth.mining.spec import MineSpec

    try:
        return MineSpec(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as err:
        for e in err.errors():
            message = e["msg"].removeprefix("Value error, ")
            where = OPTION_NAMES.get(str(e["loc"][0]), "--" + str(e["loc"][0]).replace("_", "-")) if e["loc"] else ""
            typer.echo(f"error: {where}: {message}" if where else f"error: {message}", err=True)
        raise typer.Exit(2) from None


def _embedder_spec(
    model: str, backend: str, query_prompt: str | None, corpus_prompt: str | None, batch_size: int | None
) -> Any:
    """The EmbedderSpec a recipe's `embedder:` would build, or exit 2 in one line (before any model loads)."""
    from pydantic import ValidationError

    from synth.specs import EmbedderSpec

    options = {"query_prompt": query_prompt, "document_prompt": corpus_prompt, "batch_size": batch_size}
    try:
        return EmbedderSpec(model=model, backend=backend, **{k: v for k, v in options.items() if v is not None})
    except ValidationError as err:
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            where = {"backend": "--embedder-backend", "document_prompt": "--corpus-prompt"}.get(
                field, "--" + field.replace("_", "-")
            )
            message = e["msg"].removeprefix("Value error, ")
            typer.echo(f"error: {where}: {message}" if field else f"error: {message}", err=True)
        raise typer.Exit(2) from None


def mine_command(
    data: Annotated[str, typer.Argument(help="jsonl/json/csv/parquet file, saved dataset folder, or hub id.")],
    output: Annotated[Path, Opt("--output", "-o", help="Output folder.")],
    model: Annotated[str, Opt(help="Embedder: alias, local folder or hub id.")] = "all-minilm-l6-v2",
    embedder_backend: Annotated[
        str,
        Opt(help="torch, onnx (same vectors, faster on CPU) or onnx-int8 (fastest; pip install 'synth\\[onnx]')."),
    ] = "torch",
    anchor_column: Annotated[str | None, Opt(help="Default: first column.")] = None,
    positive_column: Annotated[str | None, Opt(help="Default: second column.")] = None,
    corpus: Annotated[Path | None, Opt(help="Extra documents: a file with one JSON {text} per line.")] = None,
    formats: Annotated[
        list[str] | None,
        Opt(
            "--format",
            help="triplet, n-tuple, labeled-pair, labeled-list, flagembedding, marginmse, beir (repeatable).",
        ),
    ] = None,
    output_scores: Annotated[bool, Opt(help="Add scores to sentence-transformers formats.")] = False,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling: str = "top",
    seed: int = 0,
    st_compatible: Annotated[bool, Opt(help="sentence-transformers' window semantics.")] = False,
    search: Annotated[
        str, Opt(help="exact, or faiss (approximate candidates, exact scores; pip install 'synth\\[faiss]').")
    ] = "exact",
    nprobe: Annotated[int, Opt(help="faiss: clusters visited per query.")] = 16,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    batch_size: int | None = None,
    near_duplicate_ratio: Annotated[
        float | None, Opt(help="Drop candidates with rapidfuzz ratio >= this to a positive.")
    ] = None,
    near_duplicate_cosine: Annotated[
        float | None, Opt(help="Drop candidates with cosine >= this to a positive.")
    ] = None,
    cross_encoder: Annotated[
        str | None, Opt(help="CrossEncoder model; alone, it rescores the candidates (drives the margins).")
    ] = None,
    rescore: Annotated[str | None, Opt(help="cross_encoder or llm: whose scores drive the margins.")] = None,
    teachers: Annotated[
        list[str] | None, Opt("--teachers", help="cross_encoder or llm: extra soft labels (repeatable).")
    ] = None,
    fuse: Annotated[str | None, Opt(help="mean or rrf: fuse every score into an 'ensemble' label.")] = None,
    teacher: Annotated[str | None, Opt(help="Whose scores the formats carry (embedder, cross_encoder, ...).")] = None,
    llm_model: Annotated[str | None, Opt(help="LLM judge's model (default: the bundled LLM).")] = None,
    llm_backend: Annotated[str, Opt(help="LLM judge's backend: vllm, openai, dry-run.")] = "vllm",
) -> None:
    """Mine hard negatives for (anchor, positive) pairs and write them in trainers' formats."""
    if cross_encoder and rescore is None and not teachers:
        rescore = "cross_encoder"  # --cross-encoder alone has always meant "rescore with it"
    spec = _spec(
        {
            "num_negatives": num_negatives,
            "range_min": range_min,
            "range_max": range_max,
            "max_score": max_score,
            "min_score": min_score,
            "absolute_margin": absolute_margin,
            "relative_margin": relative_margin,
            "sampling": sampling,
            "seed": seed,
            "st_compatible": st_compatible,
            "search": search,
            "nprobe": nprobe,
            "near_duplicate_ratio": near_duplicate_ratio,
            "near_duplicate_cosine": near_duplicate_cosine,
            "cross_encoder": cross_encoder,
            "rescore": rescore,
            "teachers": teachers,
            "fuse": fuse,
            "teacher": teacher,
            "formats": formats or ["n-tuple"],
            "output_scores": output_scores,
        }
    )
    embedder_spec = _embedder_spec(model, embedder_backend, query_prompt, corpus_prompt, batch_size)
    import json

    from rich.console import Console

    from synth.export import OutputError, check_output_dir, write_folder

    inputs = [p for p in (Path(data), corpus) if p is not None and p.exists()]
    try:  # before any model loads: never write into, or over, a folder synth did not write
        check_output_dir(output, inputs)
    except OutputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    from synth.embedders import SentenceTransformerEmbedder
    from synth.mining.api import llm_judge, mine_dataset
    from synth.mining.formats import FormatOptions, write_formats
    from synth.mining.rescore import CrossEncoderRescorer
    from synth.progress import RichProgress

    console = Console()
    progress = RichProgress(console)

    def scorer(kind: str) -> Any:
        if kind == "cross_encoder":
            return CrossEncoderRescorer(spec.cross_encoder)
        return llm_judge(llm_model, backend=llm_backend, progress=progress)

    try:
        embedder = SentenceTransformerEmbedder(embedder_spec)
    except (ImportError, ValueError) as e:  # onnx extra missing, or a model the ONNX export cannot serve
        typer.echo(f"error: --embedder-backend {embedder_backend}: {e}", err=True)
        raise typer.Exit(2) from None
    docs = None
    if corpus is not None:
        docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    with progress.bars:
        out = mine_dataset(
            data,
            embedder,
            anchor_column=anchor_column,
            positive_column=positive_column,
            corpus=docs,
            params=spec,
            query_prompt=query_prompt,
            corpus_prompt=corpus_prompt,
            batch_size=batch_size,
            guards=spec,
            rescorer=scorer(spec.rescore) if spec.rescore else None,
            teachers=[scorer(t) for t in spec.teachers],
            fuse=spec.fuse,
            teacher=spec.teacher,
            progress=progress,
        )
    opts = FormatOptions(
        out.anchor, out.positive, spec.output_scores, spec.num_negatives, spec.teacher, query_prompt or ""
    )
    written: list[str] = []

    def fill(folder: Path) -> None:
        written.extend(p.name for p in write_formats(out.result, folder, spec.formats, opts))
        (folder / "stats.json").write_text(json.dumps(out.result.stats, indent=2), encoding="utf-8")

    try:
        write_folder(output, fill, inputs)
    except OutputError as e:  # the folder changed while we mined
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    console.print(f"mined {len(out.result.mined)} queries; removed: {out.result.stats['removed']}")
    for name in written:
        console.print(f"wrote {Path(output) / name}")
