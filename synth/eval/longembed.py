"""LongEmbed-style passkey and needle retrieval at chosen lengths in tokens of a named tokenizer.

Why: a long-context embedder must keep a small fact that sits anywhere in a long document. Each
document is a window of a haystack corpus (any BEIR folder or source file), exactly `length`
tokens long in the named tokenizer (special tokens not counted), with one passkey sentence
("Ada Morrow's pass key is 48213. ...") or one needle sentence inserted at a seeded position;
its query asks for that person's key or that fact. One BEIR folder per length
(`tokens-<length>/`): the corpus of a length is the documents of its queries, so chance is
1/queries. Each document's metadata records its token count and where the inserted sentence
starts and ends, so a model's truncation can be checked against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synth.eval.beir import EvalSetError, is_beir_folder, load_beir, write_beir_files, write_folder

DATA = Path(__file__).parent / "data"
Task = Literal["passkey", "needle"]


def load_tokenizer(name: str) -> Any:
    """A fast tokenizer (offsets needed) for an alias, a local folder or a hub id; EvalSetError otherwise."""
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise EvalSetError(f"tokenizer {name!r} cannot be loaded: no such folder")
    from transformers import AutoTokenizer

    from synth.models import resolve_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    except Exception as e:  # transformers raises OSError, ValueError, HFValidationError, ... for a bad name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalSetError(f"tokenizer {name!r} cannot be loaded ({first[:200]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise EvalSetError(f"tokenizer {name!r} is not a fast tokenizer (character offsets are needed)")
    return tokenizer


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def source_texts(path: Path, column: str = "text") -> list[str]:
    """The non-blank string values of `column` in any source file synth reads (jsonl, csv, parquet, ...)."""
    from synth.sources import SourceError, iter_records

    texts = []
    for (unit, n), record in iter_records(path):
        if isinstance(record, str):
            raise SourceError(f"{path} ({unit} {n}): {record}")
        value = record.get(column)
        if isinstance(value, str) and value.strip():
            texts.append(value)
    if not texts:
        raise EvalSetError(f"{path}: no text in a column {column!r}")
    return texts


def haystack_texts(path: Path, text_column: str = "text") -> list[str]:
    """Texts of a BEIR folder's corpus (title. text) or of any source file synth reads."""
    if is_beir_folder(path):
        data = load_beir(path)
        return [data.doc_text(d) for d in data.corpus]
    return source_texts(path, text_column)


class Haystack:
    """Shuffled haystack texts joined into one stream, tokenised once with character offsets."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, rng: np.random.Generator, max_chars: int) -> None:
        order = rng.permutation(len(texts))
        parts, size = [], 0
        for i in order:
            text = " ".join(texts[i].split())
            if text:
                parts.append(text)
                size += len(text) + 1
            if size >= max_chars:
                break
        self.text = " ".join(parts)
        encoded = tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        self.offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        starts = self.offsets[:, 0]
        before = np.array([self.text[s - 1] if s > 0 else " " for s in starts])
        self.word_starts = np.flatnonzero(np.char.isspace(before))  # token indices that begin a word
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.offsets)

    def _snap(self, token: int) -> int:
        """The first word-start token at or after `token` (len(self) if none)."""
        i = int(np.searchsorted(self.word_starts, token))
        return int(self.word_starts[i]) if i < len(self.word_starts) else len(self)

    def _chars(self, start: int, end: int) -> str:
        if end <= start:
            return ""
        return self.text[self.offsets[start, 0] : self.offsets[end - 1, 1]]

    def document(self, length: int, insert: str, rng: np.random.Generator) -> tuple[str, dict[str, int]]:
        """A `length`-token window with `insert` at a seeded word boundary; metadata: tokens, insert start/end."""
        insert_tokens = count_tokens(self.tokenizer, insert)
        filler = length - insert_tokens
        if filler < 0:
            raise EvalSetError(f"length {length} is shorter than the inserted sentence ({insert_tokens} tokens)")
        if len(self) < length + 64:
            raise EvalSetError(f"the haystack has {len(self)} tokens; length {length} needs more text")
        start = self._snap(int(rng.integers(0, len(self) - filler - 32)))
        at = min(self._snap(start + int(rng.integers(0, filler + 1))), start + filler)
        prefix = self._chars(start, at)
        end = start + filler  # the suffix runs from `at` to `end`: prefix + suffix = filler tokens
        best: tuple[tuple[bool, int], str, int] | None = None
        for _ in range(12):  # cutting a text rarely keeps token counts additive: adjust the tail until exact
            text = " ".join(p for p in (prefix, insert, self._chars(at, end)) if p)
            n = count_tokens(self.tokenizer, text)
            rank = (n > length, abs(n - length))  # exact, else the closest not over, else the closest over
            if best is None or rank < best[0]:
                best = (rank, text, n)
            if n == length or (end <= at and n > length):
                break
            end = max(at, end + length - n)
        assert best is not None
        _, text, n = best
        key_start = count_tokens(self.tokenizer, prefix) if prefix else 0
        return text, {"tokens": n, "insert_start": key_start, "insert_end": key_start + insert_tokens}


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def person_names(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct "First Last" names from the shipped lists (with a middle initial past their product)."""
    first, last = _lines("first_names.txt"), _lines("last_names.txt")
    pairs = len(first) * len(last)
    initials = count > pairs
    if count > pairs * 26:
        raise EvalSetError(f"{count} distinct names asked; the shipped lists give at most {pairs * 26}")
    chosen = rng.choice(pairs * (26 if initials else 1), size=count, replace=False)
    names = []
    for c in chosen:
        c = int(c)
        i, rest = divmod(c, len(last) * (26 if initials else 1))
        j, m = divmod(rest, 26) if initials else (rest, -1)
        middle = f" {chr(65 + m)}." if initials else ""
        names.append(f"{first[i]}{middle} {last[j]}")
    return names


def load_needles(path: Path | None = None) -> list[tuple[str, str]]:
    """(needle sentence, question) pairs: the shipped set, or a JSONL file of {"needle", "question"}."""
    path = path or DATA / "needles.jsonl"
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["needle"]).strip(), str(row["question"]).strip()))
        except (ValueError, KeyError, TypeError):
            raise EvalSetError(f"{path}:{n}: expected a JSON object with `needle` and `question`") from None
    return pairs


def tasks_for(task: Task, count: int, rng: np.random.Generator, needles: Path | None) -> list[tuple[str, str]]:
    """`count` (inserted sentence, query) pairs for one length."""
    if task == "passkey":
        pairs = []
        for name in person_names(count, rng):
            key = int(rng.integers(10_000, 100_000))
            pairs.append(
                (
                    f"{name}'s pass key is {key}. Remember it. {key} is the pass key of {name}.",
                    f"What is the pass key of {name}?",
                )
            )
        return pairs
    available = load_needles(needles)
    if count > len(available):
        raise EvalSetError(f"{count} needle queries asked; {needles or 'the shipped needle set'} has {len(available)}")
    return [available[int(i)] for i in rng.permutation(len(available))[:count]]


@dataclass
class LongEmbedStats:
    task: str
    tokenizer: str
    haystack: str
    lengths: list[int]
    queries: int
    seed: int
    tokens: dict[int, list[int]]  # length -> min, max token count of its documents


def build_longembed(
    task: Task,
    haystack: Path,
    out: Path,
    *,
    tokenizer: str,
    lengths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    queries: int = 50,
    seed: int = 0,
    text_column: str = "text",
    needles: Path | None = None,
) -> LongEmbedStats:
    """Write one BEIR folder per length (`tokens-<length>/`) under `out`, with a card; returns its stats."""
    if task not in ("passkey", "needle"):
        raise EvalSetError(f"unknown task {task!r}: passkey or needle")
    if not lengths or min(lengths) < 16:
        raise EvalSetError("lengths must be given and each at least 16 tokens")
    if queries < 2:
        raise EvalSetError("queries must be 2 or more (each length's corpus is its queries' documents)")
    tok = load_tokenizer(tokenizer)
    texts = haystack_texts(haystack, text_column)
    rng = np.random.default_rng(seed)
    hay = Haystack(texts, tok, rng, max_chars=max(1_000_000, 6 * max(lengths) * 20))
    sets: dict[int, tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]] = {}
    stats = LongEmbedStats(task, tokenizer, str(haystack), sorted(set(lengths)), queries, seed, {})
    for length in stats.lengths:
        corpus, query_texts, qrels = [], {}, {}
        for i, (insert, question) in enumerate(tasks_for(task, queries, rng, needles)):
            text, meta = hay.document(length, insert, rng)
            corpus.append({"_id": f"d{i}", "title": "", "text": text, "metadata": meta})
            query_texts[f"q{i}"] = question
            qrels[f"q{i}"] = {f"d{i}": 1}
        sets[length] = (corpus, query_texts, qrels)
        counts = [row["metadata"]["tokens"] for row in corpus]
        stats.tokens[length] = [min(counts), max(counts)]

    def fill(folder: Path) -> None:
        for length, (corpus, query_texts, qrels) in sets.items():
            write_beir_files(folder / f"tokens-{length}", corpus, query_texts, qrels)
        (folder / "README.md").write_text(longembed_card(stats), encoding="utf-8")

    write_folder(out, fill, inputs=[haystack] + ([needles] if needles else []))
    return stats


def longembed_card(s: LongEmbedStats) -> str:
    rows = "\n".join(f"| `tokens-{n}/` | {n} | {lo}-{hi} | {s.queries} |" for n, (lo, hi) in s.tokens.items())
    what = (
        'a passkey sentence ("NAME\'s pass key is 12345. Remember it. 12345 is the pass key of NAME."); '
        'the query asks "What is the pass key of NAME?"'
        if s.task == "passkey"
        else "a needle sentence (a made-up fact); the query asks the question that fact answers"
    )
    return f"""# LongEmbed-style {s.task} retrieval

Built by `synth eval {s.task}` from the haystack `{s.haystack}`, lengths counted in tokens of the
`{s.tokenizer}` tokenizer (special tokens not counted), seed {s.seed}.

Each document is a window of the shuffled haystack with {what}, inserted at a seeded word
boundary anywhere in the document. Each length is its own BEIR folder; its corpus is the
documents of its {s.queries} queries (chance accuracy 1/{s.queries}).

| folder | length | tokens (min-max) | queries |
|---|---:|---|---:|
{rows}

`corpus.jsonl` metadata per document: `tokens` (its length), `insert_start` / `insert_end` (token
positions of the inserted sentence). A model that truncates at T tokens cannot see sentences
that start past T, so its accuracy falls towards (T / length) as documents grow.

    synth eval run <this folder> --model all-minilm-l6-v2    # every length; accuracy@1 is the score
"""
