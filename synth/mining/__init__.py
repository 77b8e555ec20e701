"""Hard-negative mining: one engine behind the recipe step, `synth mine` and `mine_dataset`.

    spec.py     MiningParams, Guards, MineSpec: what a user asks, validated once (pydantic)
    select.py   window, margins, sampling on sorted candidates (pure numpy)
    search.py   corpus vectors on disk, exact (streaming) top-k
    ivf.py      search: faiss, clusters from faiss, vectors read back from disk per probed cluster
    engine.py   group pairs, embed, search, guard, rescore, select, teach
    result.py   MiningResult, MinedQuery: what the engine gives back
    rescore.py  cross-encoder and LLM judges, teacher fusion
    formats.py  the one writer of trainer layouts (sentence-transformers, FlagEmbedding, BEIR, ...)
    api.py      mine_dataset: the Python entry point (worked example there)
    cli.py      `synth mine`

Names below are imported on first use, so `import synth.mining` loads no model library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mine_dataset": "api",
    "llm_judge": "api",
    "load_pairs": "api",
    "MineOutput": "api",
    "MiningParams": "spec",
    "Guards": "spec",
    "MineSpec": "spec",
    "CorpusSpec": "spec",
    "MiningResult": "result",
    "MinedQuery": "result",
    "run_mining": "engine",
    "FormatOptions": "formats",
    "write_formats": "formats",
    "CrossEncoderRescorer": "rescore",
    "LLMJudgeRescorer": "rescore",
    "Rescorer": "rescore",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synth.mining' has no attribute {name!r}")
    return getattr(importlib.import_module(f"synth.mining.{_EXPORTS[name]}"), name)
