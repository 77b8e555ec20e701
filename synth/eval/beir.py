"""BEIR-layout datasets (corpus, queries, qrels; plain or gzip): reading, checking, writing.

A BEIR folder holds `corpus.jsonl` ({_id, title, text}), `queries.jsonl` ({_id, text}) and qrels
per split as `qrels/<split>.tsv` or `qrels_<split>.tsv` (header, then query-id, corpus-id, score),
each optionally gzip'd. A folder that is not one, a malformed line or a missing split is a
`BeirError`: one line naming the file (and line) and what is wrong.

Metrics and search: synth/eval/metrics.py; evaluating a model: synth/eval/evaluate.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.eval.metrics import exact_search, retrieval_metrics

SPLITS = ("train", "dev", "test")


class BeirError(ValueError):
    """A BEIR folder that cannot be used as asked; the message names the file and the problem."""


class EvalSetError(ValueError):
    """Input an evaluation-set builder cannot use (tokenizer, vocabulary, sizes); one line says which and why."""


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            yield from enumerate(f, start=1)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise BeirError(f"{path}: cannot be read ({e})") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BeirError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            raise BeirError(f"{path}:{n}: expected an object with `_id` and a string `text`")
        yield n, row


def is_beir_folder(folder: Path) -> bool:
    return folder.is_dir() and _find(folder, "corpus.jsonl") is not None


def beir_folders(path: Path) -> list[Path]:
    """`path` if it is a BEIR folder, else its BEIR subfolders (e.g. one per length of a passkey set)."""
    if not path.exists():
        raise BeirError(f"{path}: not found")
    if is_beir_folder(path):
        return [path]
    found = sorted((p for p in path.iterdir() if is_beir_folder(p)), key=lambda p: (len(p.name), p.name))
    if not found:
        raise BeirError(f"{path}: not a BEIR folder (no corpus.jsonl[.gz]) and holds none")
    return found


@dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> doc id -> relevance

    def doc_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']}. {doc['text']}".strip(". ") if doc.get("title") else doc["text"]


def qrels_path(folder: Path, split: str) -> Path | None:
    for name in (f"qrels/{split}.tsv", f"qrels_{split}.tsv"):
        if found := _find(folder, name):
            return found
    return None


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for n, line in _lines(path):
        fields = line.rstrip("\n").split("\t")
        if n == 1 and not fields[-1].lstrip("-").isdigit():
            continue  # the header
        if fields == [""]:
            continue
        if len(fields) == 4:  # TREC style: query-id, iteration, corpus-id, score
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3 or not fields[2].lstrip("-").isdigit():
            raise BeirError(f"{path}:{n}: expected query-id<TAB>corpus-id<TAB>integer score")
        table[fields[0]][fields[1]] = int(fields[2])
    return dict(table)


def load_beir(folder: Path) -> BeirData:
    folder = Path(folder)
    if not folder.is_dir():
        raise BeirError(f"{folder}: not found or not a folder")
    files = {name: _find(folder, name) for name in ("corpus.jsonl", "queries.jsonl")}
    for name, path in files.items():
        if path is None:
            raise BeirError(f"{folder}: no {name} or {name}.gz; a BEIR folder has corpus, queries and qrels files")
    corpus = {}
    for _, row in _jsonl(files["corpus.jsonl"]):  # type: ignore[arg-type]
        title = row.get("title") or ""
        corpus[str(row["_id"])] = {"title": title if isinstance(title, str) else "", "text": row["text"]}
    queries = {str(row["_id"]): row["text"] for _, row in _jsonl(files["queries.jsonl"])}  # type: ignore[arg-type]
    qrels = {split: _read_qrels(path) for split in SPLITS if (path := qrels_path(folder, split))}
    return BeirData(corpus, queries, qrels)


def require_split(data: BeirData, split: str, folder: Path) -> dict[str, dict[str, int]]:
    """The split's qrels limited to known queries, or BeirError saying what is missing."""
    if split not in data.qrels:
        found = ", ".join(sorted(data.qrels)) or "none"
        raise BeirError(
            f"{folder}: no qrels for split {split!r} (looked for qrels/{split}.tsv and qrels_{split}.tsv, "
            f"optionally .gz); splits found: {found}"
        )
    qrels = {q: docs for q, docs in data.qrels[split].items() if q in data.queries}
    if not qrels:
        raise BeirError(f"{folder}: none of the {split!r} qrels' query ids is in queries.jsonl")
    if not any(d in data.corpus for docs in qrels.values() for d in docs):
        raise BeirError(f"{folder}: none of the {split!r} qrels' document ids is in corpus.jsonl")
    return qrels


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_beir_files(
    folder: Path,
    corpus: Sequence[dict],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    split: str = "test",
) -> None:
    """corpus.jsonl (rows with _id, title, text and optional metadata), queries.jsonl, qrels/<split>.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / "corpus.jsonl", corpus)
    _write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    (folder / "qrels").mkdir(exist_ok=True)
    with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, score in docs.items():
                f.write(f"{q}\t{d}\t{score}\n")


def write_folder(out: Path, fill: Callable[[Path], None], inputs: Sequence[Path] = ()) -> Path:
    """Build a folder with `fill(tmp)` next to `out`, mark it as synth's, then swap it in.

    Same rules as a recipe's output (synth.export): never over a folder synth did not write,
    never over or inside an input, one writer at a time; a crash leaves the old folder as it was.
    """
    from synth.export import MARKER, check_output_dir, output_lock

    check_output_dir(out, inputs)
    target = Path(out).expanduser().resolve()
    with output_lock(out):
        check_output_dir(out, inputs)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        old: Path | None = None
        try:
            fill(tmp)
            files = sorted(p.name for p in tmp.iterdir())
            marker = {"tool": "synth", "kind": "evalset", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / MARKER).write_text(json.dumps({**marker, "files": files}, indent=2) + "\n", encoding="utf-8")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
                os.replace(target, old)
            tmp.rename(target)
        except BaseException:
            if old is not None and not target.exists():
                os.replace(old, target)
                old = None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return target


def evaluate(model, data: BeirData, split: str = "test", batch_size: int = 64) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Embed the whole corpus and the split's queries with a SentenceTransformer, exact search, metrics.

    Kept for scripts holding a SentenceTransformer in memory; `synth eval run` and
    synth.eval.evaluate take a model name (alias, folder, hub id, `hashing`, `bm25`).
    """
    qrels = data.qrels[split]
    doc_ids = list(data.corpus)
    qids = [q for q in qrels if q in data.queries]
    doc_emb = model.encode([data.doc_text(d) for d in doc_ids], batch_size=batch_size, normalize_embeddings=True)
    query_emb = model.encode([data.queries[q] for q in qids], batch_size=batch_size, normalize_embeddings=True)
    ranked = dict(zip(qids, exact_search(np.asarray(query_emb), np.asarray(doc_emb), doc_ids), strict=True))
    return retrieval_metrics(ranked, {q: qrels[q] for q in qids})
