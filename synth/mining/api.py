"""`mine_dataset`: hard negatives for an existing (anchor, positive) dataset, without a recipe.

The one documented Python entry point of mining; `synth mine` is its command line. Worked example
(a list of dicts, a datasets.Dataset, a jsonl/parquet/csv file, a saved dataset or a hub id):

    from synth.mining import MiningParams, mine_dataset, write_formats, FormatOptions

    pairs = [{"anchor": "how do I parse json", "positive": "json.loads parses a JSON string."}, ...]
    out = mine_dataset(
        pairs,
        "all-minilm-l6-v2",                       # an alias, a local folder, a hub id, or an Embedder
        params=MiningParams(num_negatives=5, range_max=50, relative_margin=0.05),
        output_format="n-tuple",                  # anchor, positive, negative_1..5
    )
    out.to_dataset()                              # a datasets.Dataset of out.rows
    write_formats(out.result, "mined/", ["triplet", "flagembedding", "beir"], FormatOptions(num_negatives=5))

Rescoring: `rescorer=CrossEncoderRescorer("cross-encoder/ms-marco-MiniLM-L6-v2")` or
`rescorer=llm_judge("HuggingFaceTB/SmolLM2-135M-Instruct")` (answers are cached like a recipe's).
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
from synth.mining.engine import group_pairs, run_mining
from synth.mining.formats import ROW_FORMATS, FormatOptions
from synth.mining.rescore import LLMJudgeRescorer, Rescorer
from synth.mining.result import MiningResult
from synth.mining.spec import Guards, MiningParams
from synth.progress import Progress

Row = dict[str, Any]


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


def make_embedder(model: str | Embedder, **options: Any) -> Embedder:
    """An Embedder as given, or a sentence-transformers model by alias, folder or hub id."""
    if not isinstance(model, str):
        return model
    from synth.embedders import SentenceTransformerEmbedder
    from synth.specs import EmbedderSpec

    spec = EmbedderSpec(model=model, **{k: v for k, v in options.items() if v is not None})
    return SentenceTransformerEmbedder(spec)


def llm_judge(
    model: Any = None, *, backend: str = "vllm", cache: bool = True, progress: Progress | None = None
) -> LLMJudgeRescorer:
    """An LLM relevance judge for `mine_dataset` (and `synth mine --rescore llm`), with the shipped
    judge_relevance.j2 prompt, through the request cache like a recipe's LLM.

    `model`: a model name for `backend` (default: the bundled default LLM), a recipe `LLMSpec`,
    or a ready `synth.llm.CachedLLM`. The engine starts only if some reply is not cached.
    """
    from synth.cache import default_cache_dir, open_caches
    from synth.llm import CachedLLM
    from synth.prompts import PromptLibrary
    from synth.specs import LLMSpec

    if isinstance(model, CachedLLM):
        llm = model
    else:
        spec = model if isinstance(model, LLMSpec) else LLMSpec(backend=backend, **({"model": model} if model else {}))
        requests = open_caches(default_cache_dir())[0] if cache else None
        llm = CachedLLM("judge", spec, cache=requests, progress=progress)
    prompts = PromptLibrary()
    return LLMJudgeRescorer(llm, render=lambda q, d: prompts.render("judge_relevance.j2", {"query": q, "text": d}))


def mine_dataset(
    data: Any,
    model: str | Embedder = "all-minilm-l6-v2",
    *,
    anchor_column: str | None = None,
    positive_column: str | None = None,
    corpus: Sequence[str] | None = None,
    params: MiningParams | None = None,
    output_format: str = "n-tuple",
    output_scores: bool = False,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    batch_size: int | None = None,
    guards: Guards | None = None,
    rescorer: Rescorer | None = None,
    teachers: Sequence[Rescorer] = (),
    fuse: str | None = None,
    teacher: str | None = None,
    work_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> MineOutput:
    """Mine `data`'s (anchor, positive) pairs; columns default to the first two, as in ST.

    `params` (window, margins, sampling, search) and `guards` are validated when built; a
    `MineSpec` is both, so `synth mine` passes its spec for each. Judges' scores drive the margins
    (`rescorer`) or are extra soft labels (`teachers`, fused into "ensemble" by `fuse`);
    `teacher` picks whose scores the output rows carry.
    """
    params = params or MiningParams()
    if output_format not in ROW_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(ROW_FORMATS)}, got {output_format!r}")
    rows = load_pairs(data)
    if not rows:
        raise ValueError("the dataset is empty")
    columns = list(rows[0])
    anchor = anchor_column or columns[0]
    positive = positive_column or columns[1]
    if anchor not in rows[0] or positive not in rows[0]:
        raise ValueError(f"columns {anchor!r} and {positive!r} needed; the data has {', '.join(columns)}")
    pairs = group_pairs(
        [str(r[anchor]) for r in rows], [str(r[positive]) for r in rows], corpus or [], positives_are_documents=True
    )
    embedder = make_embedder(model, query_prompt=query_prompt, document_prompt=corpus_prompt, batch_size=batch_size)
    result = run_mining(
        pairs.queries,
        pairs.positives,
        pairs.corpus,
        embedder,
        params,
        guards=guards,
        rescorer=rescorer,
        teachers=teachers,
        fuse=fuse,
        work_dir=work_dir,
        progress=progress,
    )
    opts = FormatOptions(anchor, positive, output_scores, params.num_negatives, teacher, query_prompt or "")
    return MineOutput(ROW_FORMATS[output_format](result, opts), result, anchor, positive)
