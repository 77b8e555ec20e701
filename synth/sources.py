"""Reading sources: jsonl / json / csv / parquet / a folder of .txt files / a saved dataset /
a YAML list of seeds, or seeds given inline in the recipe (`source.seeds`).

A source need not be a corpus: seeds (task families, topics, personas) start recipes that write
their own texts (E5-style synthetic tasks). A seed is a string (its text; ids are its position)
or a mapping like a JSON row; seeds pass the same checks as any other source.

Every source becomes a list of rows with a string `id` and the text column (renamed `text`), plus
whatever other columns the file had. (Rows are plain dicts here: the step modules import this
one, so it cannot import their `Row`.) Bad input never ends in a traceback or a silently wrong
row; each case is one of two kinds:

Refused (SourceError: one line naming the file, the line or row, and the problem), because the
file itself cannot be trusted as read, or reading on would quietly change the data:
- not found, format unknown, not UTF-8 (line and column of the first bad byte), a JSONL line that
  is not JSON or not an object, a JSON file that is not an array of objects, an empty source;
- a CSV row whose number of fields differs from the header's: an unquoted comma, quote or line
  break has shifted the values, so its text would be wrong (and usually more rows are affected);
  a CSV header that names a column twice;
- a column whose name is reserved (RESERVED: `id` and `text` receive the id and text columns,
  `source_id` is synth's provenance column, `self` cannot reach a template), a duplicate id, the
  text or id column absent from every row, no usable row at all.

Dropped (a counted drop record `step: source`, the row's id and its line/row in `detail`),
because one record is unusable but the file is fine:
- `empty_text` (blank or null), `missing_text` (a JSON row without the text key),
  `text_not_a_string` (a dict, list or number: never stringified into a training text);
- `missing_id` (absent, null or blank) and `id_not_a_scalar` (a dict or list). synth does not
  invent ids for such rows: an invented id can collide with a real one, and the id is the only
  way back from a training row to its source. `id_column: null` numbers every row instead.

`check_source` applies the same rules in one streaming pass (it keeps only the ids, to find
duplicates) and lists every problem, so `synth validate` catches a bad row wherever it is.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.idset import IdSet

Loc = tuple[str, int | str]  # ("line", 3) in a text file, ("row", 3) in a JSON array / table, ("file", "a.txt")
Record = tuple[Loc, "dict[str, Any] | str"]  # a row, or why this record is malformed
MAX_PROBLEMS = 20  # check_source lists at most this many, then counts the rest
_SHIFTED = "(an unquoted comma, quote or line break in a value?)"  # why a CSV row's field count is off
_MISSING = object()
# Source columns synth itself fills or cannot pass on; `id`/`text` unless they are the id/text columns.
RESERVED = {
    "id": "each row's id goes there",
    "text": "each row's text goes there",
    "source_id": "synth records each row's source id there",
    "self": "templates cannot receive a variable named 'self'",
}


class SourceError(ValueError):
    """An input that cannot be read as asked; the message names the file and the problem."""


def _at(path: Path, loc: Loc) -> str:
    unit, n = loc
    return f"{path}:{n}" if unit == "line" else f"{path} ({unit} {n})"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _not_utf8(path: Path) -> SourceError:
    """Where the first byte that is not UTF-8 is (a multi-byte character never spans a newline)."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return SourceError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8"
                )
    return SourceError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _jsonl(path: Path) -> Iterator[Record]:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    yield ("line", lineno), f"not valid JSON ({e.msg})"
                    continue
                yield ("line", lineno), value if isinstance(value, dict) else f"not a JSON object but {_kind(value)}"
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _json(path: Path) -> Iterator[Record]:
    try:
        value = json.loads(_read_text_file(path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(value, list):
        raise SourceError(f"{path}: expected a JSON array of objects, found {_kind(value)}")
    for i, item in enumerate(value, 1):
        yield ("row", i), item if isinstance(item, dict) else f"not a JSON object but {_kind(item)}"


def _csv(path: Path) -> Iterator[Record]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                header = next((fields for fields in reader if any(v.strip() for v in fields)), None)
                if header is None:
                    return
                twice = sorted({name for name in header if header.count(name) > 1})
                if twice:
                    raise SourceError(f"{path}:{reader.line_num}: column {twice[0]!r} appears twice in the header")
                previous = reader.line_num
                for fields in reader:
                    start, previous = previous + 1, reader.line_num
                    if not any(v.strip() for v in fields):
                        continue  # a blank line
                    if len(fields) == len(header):
                        yield ("line", start), dict(zip(header, fields, strict=True))
                    else:
                        count = f"{len(fields)} field{'s' * (len(fields) != 1)}"
                        yield ("line", start), f"{count}, the header has {len(header)} {_SHIFTED}"
            except csv.Error as e:
                raise SourceError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _text(path: Path) -> Iterator[Record]:
    if path.is_file():
        for i, line in enumerate(_read_text_file(path).splitlines()):
            if line.strip():
                yield ("line", i + 1), {"id": str(i), "text": line}
        return
    for p in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md")):
        name = str(p.relative_to(path))
        yield ("file", name), {"id": name, "text": _read_text_file(p)}


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield ("row", n), row
    except pa.ArrowException as e:
        raise SourceError(f"{path}: not a readable parquet file ({e})") from None


def _dataset(path: Path) -> Iterator[Record]:
    from datasets import Dataset, load_from_disk

    ds = load_from_disk(str(path))
    if not isinstance(ds, Dataset):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    n = 0
    for batch in ds.iter(batch_size=1024):
        for values in zip(*batch.values(), strict=True):
            n += 1
            yield ("row", n), dict(zip(batch, values, strict=True))


MAX_SEEDS_BYTES = 10_000_000  # a seeds file is a short list, never a corpus


def seed_records(seeds: list[Any], unit: str = "item") -> Iterator[Record]:
    """Seeds as records: a string is {"id": its position, "text": it}, a mapping is a row as it is."""
    for i, seed in enumerate(seeds):
        loc = (unit, i + 1)
        if isinstance(seed, str):
            yield loc, {"id": str(i), "text": seed}
        elif isinstance(seed, dict):
            yield loc, {str(k): v for k, v in seed.items()}
        else:
            yield loc, f"a seed is a string or a mapping, not {_kind(seed)}"


def _yaml(path: Path) -> Iterator[Record]:
    """A YAML list of seeds (aliases refused: a seeds file may come from someone else)."""
    import yaml

    if path.stat().st_size > MAX_SEEDS_BYTES:
        raise SourceError(f"{path}: larger than {MAX_SEEDS_BYTES // 1_000_000} MB; a seeds file is a short list")
    text = _read_text_file(path)
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise SourceError(f"{path}: YAML aliases (*name) are not allowed in a seeds file")
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(value, list):
        raise SourceError(f"{path}: expected a YAML list of seeds (strings or mappings), found {_kind(value)}")
    return seed_records(value, unit="row")


_READERS = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "text": _text,
    "parquet": _parquet,
    "dataset": _dataset,
    "yaml": _yaml,
}


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "dataset" if (path / "state.json").exists() or (path / "dataset_dict.json").exists() else "text"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if suffix in formats:
        return formats[suffix]
    if suffix == ".txt":
        return "text"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise SourceError(f"{path}: cannot tell the format from the name; set `format:`")


def iter_records(path: Path, fmt: str = "auto") -> Iterator[Record]:
    """The file's records one at a time, each with its line/row; a malformed one comes as its problem."""
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    if fmt not in _READERS:
        raise SourceError(f"{path}: unknown format {fmt!r}")
    return _READERS[fmt](path)


class _Scan:
    """One pass's state: the rules of the module docstring, applied record by record."""

    def __init__(self, path: Path, text_column: str, id_column: str | None, keep: bool) -> None:
        self.path, self.text_column, self.id_column, self.keep = path, text_column, id_column, keep
        self.rows: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []  # drop records, kept only with `keep`; `drops` counts all
        self.drops: Counter[str] = Counter()
        self.problems: list[str] = []
        self.columns: dict[str, None] = {}  # every column seen, in order
        self.ids = IdSet()  # ~8 bytes an id, not ~115 (synth/idset.py)
        self.records = self.kept = 0
        self._reserved = set(RESERVED) - {text_column, id_column}  # not yet reported

    def add(self, loc: Loc, item: dict[str, Any] | str) -> None:
        index, self.records = self.records, self.records + 1
        if isinstance(item, str):
            self.problems.append(f"{_at(self.path, loc)}: {item}")
            return
        if not item.keys() <= self.columns.keys():
            self.columns.update(dict.fromkeys(item))
        if not self._reserved.isdisjoint(item):
            self._check_reserved(loc, item)
        doc_id = str(index)
        if self.id_column:
            raw_id = item.get(self.id_column, _MISSING)
            if raw_id is _MISSING or raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                return self._drop("missing_id", "", loc, f"no {self.id_column!r}")
            if isinstance(raw_id, dict | list | tuple | set | bytes):
                return self._drop("id_not_a_scalar", "", loc, f"{self.id_column!r} is {_kind(raw_id)}")
            doc_id = str(raw_id)
        text = item.get(self.text_column, _MISSING)
        if text is _MISSING:
            return self._drop("missing_text", doc_id, loc, f"no {self.text_column!r}")
        if text is not None and not isinstance(text, str):
            return self._drop("text_not_a_string", doc_id, loc, f"{self.text_column!r} is {_kind(text)}")
        if text is None or not text.strip():
            return self._drop("empty_text", doc_id, loc)
        if doc_id in self.ids:
            self.problems.append(f"{_at(self.path, loc)}: duplicate id {doc_id!r}; ids must be unique")
            return
        self.ids.add(doc_id)
        self.kept += 1
        if self.keep:
            out = {k: v for k, v in item.items() if k not in (self.text_column, self.id_column)}
            out.update(id=doc_id, text=text)
            self.rows.append(out)

    def _drop(self, reason: str, doc_id: str, loc: Loc, why: str = "") -> None:
        self.drops[reason] += 1
        if self.keep:
            detail = f"{loc[0]} {loc[1]}" + (f": {why}" if why else "")
            self.dropped.append({"step": "source", "reason": reason, "source_id": doc_id, "detail": detail})

    def _check_reserved(self, loc: Loc, item: dict[str, Any]) -> None:
        """One problem per reserved column, at its first row (then it is no longer looked for)."""
        at = _at(self.path, loc)
        for name in sorted(self._reserved.intersection(item)):
            self._reserved.discard(name)
            hint = {
                "id": f"set source.id_column: id to use it (now {self.id_column!r})",
                "text": f"set source.text_column: text to use it (now {self.text_column!r})",
            }.get(name, "rename it in the file")
            self.problems.append(f"{at}: column {name!r} is reserved ({RESERVED[name]}); {hint}")

    def finish(self) -> None:
        """Problems only the whole pass can tell: an empty file, a column in no row, no usable row."""
        listed = ", ".join(list(self.columns)[:MAX_PROBLEMS]) + (", ..." if len(self.columns) > MAX_PROBLEMS else "")
        if self.records == 0:
            self.problems.append(f"{self.path}: the source is empty")
        elif self.kept == 0 and self.columns and self.text_column not in self.columns:
            self.problems.append(
                f"{self.path}: no column {self.text_column!r} (columns: {listed}); set source.text_column"
            )
        elif self.kept == 0 and self.columns and self.id_column and self.id_column not in self.columns:
            self.problems.append(
                f"{self.path}: no column {self.id_column!r} (columns: {listed}); set source.id_column: null"
            )
        elif self.kept == 0 and not self.problems:
            drops = ", ".join(f"{reason}={n}" for reason, n in sorted(self.drops.items()))
            self.problems.append(f"{self.path}: no row has a non-empty {self.text_column!r} (dropped: {drops})")


def _scan(
    path: Path,
    fmt: str,
    text_column: str,
    id_column: str | None,
    limit: int | None,
    keep: bool,
    first_only: bool,
    records: Iterator[Record] | None = None,
) -> _Scan:
    scan = _Scan(path, text_column, id_column, keep)
    for loc, item in records if records is not None else iter_records(path, fmt):
        scan.add(loc, item)
        if first_only and scan.problems:
            return scan
        if limit is not None and scan.kept >= limit:
            break
    scan.finish()
    return scan


def load_documents(
    path: Path,
    fmt: str = "auto",
    text_column: str = "text",
    id_column: str | None = "id",
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows normalised to string `id` + `text` (other columns kept), and the rows dropped.

    Raises SourceError at the first problem the module docstring lists as refused.
    """
    scan = _scan(path, fmt, text_column, id_column, limit, keep=True, first_only=True)
    if scan.problems:
        raise SourceError(scan.problems[0])
    return scan.rows, scan.dropped


def check_source(
    path: Path,
    fmt: str = "auto",
    text_column: str = "text",
    id_column: str | None = "id",
    limit: int | None = None,
) -> list[str]:
    """Every problem `load_documents` would refuse, from one streaming pass that keeps no rows."""
    try:
        problems = _scan(path, fmt, text_column, id_column, limit, keep=False, first_only=False).problems
    except SourceError as e:  # the file cannot be read on (not found, not UTF-8, broken CSV quoting)
        return [str(e)]
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"{path}: ... and {len(problems) - MAX_PROBLEMS} more problems"]
    return problems


INLINE = Path("source.seeds")  # how inline seeds are named in messages


def source_records(spec: Any) -> tuple[Path, Iterator[Record]]:
    """(name used in messages, records) of a recipe's `source` (a SourceSpec): its file, or its inline `seeds`."""
    if getattr(spec, "seeds", None) is not None:
        return INLINE, seed_records(spec.seeds)
    return Path(spec.path), iter_records(Path(spec.path), spec.format)


def load_source_spec(spec: Any, limit: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`load_documents` for a recipe's `source`, file or inline seeds."""
    name, records = source_records(spec)
    scan = _scan(name, spec.format, spec.text_column, spec.id_column, limit, True, True, records)
    if scan.problems:
        raise SourceError(scan.problems[0])
    return scan.rows, scan.dropped


def check_source_spec(spec: Any, limit: int | None = None) -> list[str]:
    """`check_source` for a recipe's `source`, file or inline seeds."""
    if getattr(spec, "seeds", None) is None:
        return check_source(spec.path, spec.format, spec.text_column, spec.id_column, limit)
    scan = _scan(INLINE, "seeds", spec.text_column, spec.id_column, limit, False, False, seed_records(spec.seeds))
    return scan.problems[:MAX_PROBLEMS]
