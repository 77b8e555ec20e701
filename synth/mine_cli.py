"""`synth mine`: hard negatives for an existing dataset, without a recipe (registered in cli.py).

Only typer is imported at module level, so `synth --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def mine_command(
    data: Annotated[str, typer.Argument(help="jsonl/json/csv/parquet file, saved dataset folder, or hub id.")],
    output: Annotated[Path, Opt("--output", "-o", help="Output folder.")],
    model: Annotated[str, Opt(help="Embedder: alias, local folder or hub id.")] = "all-minilm-l6-v2",
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
        str, Opt(help="exact, or faiss (approximate candidates, exact scores; pip install 'synth[faiss]').")
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
        str | None, Opt(help="Rescore candidates with this CrossEncoder (drives the margins).")
    ] = None,
) -> None:
    """Mine hard negatives for (anchor, positive) pairs and write them in trainers' formats."""
    import json

    from rich.console import Console

    from synth.cli import RichProgress
    from synth.formats import FormatOptions
    from synth.mine_api import mine_dataset, write_formats
    from synth.mine_engine import Guards
    from synth.mining import MiningParams
    from synth.rescore import CrossEncoderRescorer

    formats = formats or ["n-tuple"]
    params = MiningParams(
        num_negatives=num_negatives,
        range_min=range_min,
        range_max=range_max,
        max_score=max_score,
        min_score=min_score,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        sampling=sampling,  # type: ignore[arg-type]
        seed=seed,
        st_compatible=st_compatible,
        search=search,  # type: ignore[arg-type]
        nprobe=nprobe,
    )
    docs = None
    if corpus is not None:
        docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    progress = RichProgress()
    with progress.bars:
        out = mine_dataset(
            data,
            model,
            anchor_column=anchor_column,
            positive_column=positive_column,
            corpus=docs,
            params=params,
            output_format="n-tuple",
            query_prompt=query_prompt,
            corpus_prompt=corpus_prompt,
            batch_size=batch_size,
            guards=Guards(near_duplicate_ratio, near_duplicate_cosine),
            rescorer=CrossEncoderRescorer(cross_encoder) if cross_encoder else None,
            task=progress.task,
        )
    opts = FormatOptions(out.anchor, out.positive, output_scores, num_negatives, None, query_prompt or "")
    paths = write_formats(out, output, formats, opts)
    (Path(output) / "stats.json").write_text(json.dumps(out.result.stats, indent=2), encoding="utf-8")
    Console().print(f"mined {len(out.result.mined)} queries; removed: {out.result.stats['removed']}")
    for p in paths:
        Console().print(f"wrote {p}")
