"""What a training row holds beyond anchor/positive/negatives: a score, a task instruction.

`output.columns.score` adds a float `score` column: scored pairs (anchor, positive, score) that
CoSENTLoss, AnglELoss and CosineSimilarityLoss take as is.

`output.columns.instruction` names the column holding each row's task instruction (E5-mistral,
KaLM, GTE-Qwen, BGE-ICL put one before each query and none before documents), and
`instruction_format` says how it prefixes a query (default E5/KaLM: `Instruct: {instruction}\\nQuery: `).
The output folder then holds the three forms trainers take:

- the training dataset itself with each anchor prefixed (`Instruct: <task>\\nQuery: <query>`):
  any sentence-transformers trainer and loss take it as is;
- `by_instruction/`, a DatasetDict with one split per distinct instruction (`task_0`, ...) and the
  raw anchors, and `prompts.json`, {split: {"anchor": prefix}}: sentence-transformers' `prompts=`
  mapping (`SentenceTransformerTrainingArguments(prompts=...)`), which adds the prefix at training
  time (and a Pooling module with `include_prompt=False` leaves it out of the pooled vector);
- `flagembedding.jsonl`: FlagEmbedding's {query, pos, neg, prompt} lines with the raw instruction
  as `prompt` (pair with `--query_instruction_format 'Instruct: {}\\nQuery: {}'`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

Row = dict[str, Any]
DEFAULT_FORMAT = "Instruct: {instruction}\nQuery: "
PLACEHOLDER = "{instruction}"


@dataclass(frozen=True)
class Layout:
    score: str | None = None  # row column exported as a float `score`
    instruction: str | None = None  # row column holding the task instruction
    instruction_format: str = DEFAULT_FORMAT

    def columns(self) -> list[str]:
        """Row columns this layout reads (checked with the anchor/positive ones)."""
        return [c for c in (self.score, self.instruction) if c is not None]

    def apply(self, item: Row, row: Row) -> Row:
        """`item` (anchor/positive/negatives of `row`) with the anchor prefixed and the score added."""
        if self.instruction is not None:
            item["anchor"] = prefix(row[self.instruction], self.instruction_format) + item["anchor"]
        if self.score is not None:
            item["score"] = _number(row.get(self.score), self.score)
        return item

    def without_instruction(self) -> Layout:
        return replace(self, instruction=None)


NO_LAYOUT = Layout()


def _number(value: Any, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number:  # NaN: a score no loss can use
        raise ValueError(f"output.columns.score: {value!r} in column {column!r} is not a number")
    return number


def prefix(instruction: Any, instruction_format: str = DEFAULT_FORMAT) -> str:
    """The text put before a query. A plain replace, not str.format: a recipe's format cannot reach attributes."""
    return instruction_format.replace(PLACEHOLDER, "" if instruction is None else str(instruction))


def split_names(instructions: Sequence[str]) -> dict[str, str]:
    """instruction -> split name (`task_0`, `task_1`, ... in first-seen order): names `datasets` accepts."""
    return {text: f"task_{i}" for i, text in enumerate(dict.fromkeys(instructions))}


def write_instruction_views(folder: Path, rows: Sequence[Row], raw: Sequence[Row], layout: Layout) -> list[Path]:
    """`by_instruction/` + `prompts.json` and `flagembedding.jsonl`; `raw` = the training rows of `rows`, unprefixed."""
    from datasets import Dataset, DatasetDict

    assert layout.instruction is not None
    texts = ["" if r[layout.instruction] is None else str(r[layout.instruction]) for r in rows]
    names = split_names(texts)
    groups: dict[str, list[Row]] = {name: [] for name in names.values()}
    for item, text in zip(raw, texts, strict=True):
        groups[names[text]].append(item)
    if groups:
        splits = {name: Dataset.from_list(items) for name, items in groups.items()}
        DatasetDict(splits).save_to_disk(str(folder / "by_instruction"))
    prompts = {name: {"anchor": prefix(text, layout.instruction_format)} for text, name in names.items()}
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with (folder / "flagembedding.jsonl").open("w", encoding="utf-8") as f:
        for item, text in zip(raw, texts, strict=True):
            negatives = [v for k, v in item.items() if k.startswith("negative_")]
            line = {"query": item["anchor"], "pos": [item["positive"]], "neg": negatives, "prompt": text}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return [folder / "by_instruction", folder / "prompts.json", folder / "flagembedding.jsonl"]
