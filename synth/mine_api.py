"""`mine_dataset`: hard negatives for an existing (anchor, positive) dataset, without a recipe.

The same engine as the recipe step; the grouping follows sentence-transformers so results can be
compared one to one: identical anchors are one query with several positives, the corpus is the
given documents plus every positive (deduplicated, first occurrence wins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.embedders import Embedder
from synth.formats import FORMATS, ROW_FORMATS, FormatOptions, write_beir, write_jsonl
from synth.mine_engine import Guards, MiningResult, TaskFn, _no_task, run_mining
from synth.mining import MiningParams
from synth.rescore import Rescorer

Row = dict[str, Any]
DEFAULT_PARAMS = MiningParams()
NO_GUARDS = Guards()


@dataclass
class MineOutput:
    rows: list[Row]  # in the chosen format
    result: MiningResult  # every query, positive, negative and teacher score
    anchor: str = "anchor"  # the input's column names, reused by the formats
    positive: str = "positive"

    def to_dataset(self) -> Any:
        from datasets import Dataset

        return Dataset.from_list(self.rows)


def load_pairs(source: Any, split: str = "train") -> list[Row]:
    """Rows from a datasets.Dataset, a list of dicts, or a path / hub id (jsonl, parquet, saved dataset)."""
    if isinstance(source, list):
        return source
    if hasattr(source, "to_list"):
        return source.to_list()
    path = Path(str(source))
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        return (loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded).to_list()
    if path.is_file():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"{path}: unsupported file type (jsonl, json, parquet, csv, or a saved dataset folder)")
        return datasets.load_dataset(kind, data_files=str(path), split="train").to_list()
    return datasets.load_dataset(str(source), split=split).to_list()  # a hub id


def group_pairs(
    rows: Sequence[Row], anchor: str, positive: str, corpus: Sequence[str] | None
) -> tuple[list[str], list[list[int]], list[str]]:
    """(unique queries, positive corpus indices per query, corpus) as sentence-transformers builds them."""
    if rows and (anchor not in rows[0] or positive not in rows[0]):
        raise ValueError(f"columns {anchor!r} and {positive!r} needed; the data has {', '.join(rows[0])}")
    positives = [str(r[positive]) for r in rows]
    texts = list(dict.fromkeys([*(corpus or []), *positives]))
    index = {t: i for i, t in enumerate(texts)}
    query_index: dict[str, int] = {}
    groups: list[list[int]] = []
    for r, p in zip(rows, positives, strict=True):
        q = str(r[anchor])
        if q not in query_index:
            query_index[q] = len(groups)
            groups.append([])
        if index[p] not in groups[query_index[q]]:
            groups[query_index[q]].append(index[p])
    return list(query_index), groups, texts


def make_embedder(model: str | Embedder, **spec: Any) -> Embedder:
    if not isinstance(model, str):
        return model
    from synth.embedders import SentenceTransformerEmbedder
    from synth.recipe import EmbedderSpec

    return SentenceTransformerEmbedder(EmbedderSpec(model=model, **{k: v for k, v in spec.items() if v is not None}))


def mine_dataset(
    data: Any,
    model: str | Embedder = "all-minilm-l6-v2",
    *,
    anchor_column: str | None = None,
    positive_column: str | None = None,
    corpus: Sequence[str] | None = None,
    params: MiningParams = DEFAULT_PARAMS,
    output_format: str = "n-tuple",
    output_scores: bool = False,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    batch_size: int | None = None,
    guards: Guards = NO_GUARDS,
    rescorer: Rescorer | None = None,
    teachers: Sequence[Rescorer] = (),
    fuse: str | None = None,
    teacher: str | None = None,
    work_dir: str | Path | None = None,
    task: TaskFn = _no_task,
) -> MineOutput:
    """Mine `data`'s (anchor, positive) pairs; columns default to the first two, as in ST."""
    if output_format not in ROW_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(ROW_FORMATS)}, got {output_format!r}")
    rows = load_pairs(data)
    if not rows:
        raise ValueError("the dataset is empty")
    columns = list(rows[0])
    anchor = anchor_column or columns[0]
    positive = positive_column or columns[1]
    queries, positives, texts = group_pairs(rows, anchor, positive, corpus)
    embedder = make_embedder(model, query_prompt=query_prompt, document_prompt=corpus_prompt, batch_size=batch_size)
    result = run_mining(
        queries,
        positives,
        texts,
        embedder,
        params,
        guards=guards,
        rescorer=rescorer,
        teachers=teachers,
        fuse=fuse,
        work_dir=work_dir,
        task=task,
    )
    opts = FormatOptions(anchor, positive, output_scores, params.num_negatives, teacher, query_prompt or "")
    return MineOutput(ROW_FORMATS[output_format](result, opts), result, anchor, positive)


def write_formats(out: MineOutput, folder: str | Path, formats: Sequence[str], opts: FormatOptions) -> list[Path]:
    """Write each asked format beside each other: <format>.jsonl, or beir/ for the BEIR folder."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in formats:
        if name == "beir":
            written.append(write_beir(out.result, folder / "beir"))
        else:
            written.append(write_jsonl(folder / f"{name}.jsonl", ROW_FORMATS[name](out.result, opts)))
    return written
