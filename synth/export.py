"""Export: a training-ready dataset folder, written atomically.

`outputs/<recipe>/` is itself a `save_to_disk` folder holding only the sentence-transformers
columns (anchor, positive, negative_1..k), so `load_from_disk` + SentenceTransformerTrainer take
it as it is. Everything else sits beside it: `details/` (all columns: provenance, scores),
`dropped.jsonl` and `dropped/` (every removed row with its step, rule, reason and evidence), the
card `README.md`, the resolved recipe, `summary.json`, the report (`report.md`, `report.html`,
`plots/`) and any `train.jsonl` / `train.parquet` asked for.

synth never destroys a folder it did not write. Every output carries a marker file
(`.synth-output`, JSON: tool, version, created, the names synth wrote); only a folder with that
marker and nothing else in it, or an empty folder, is ever replaced. An output may not be, hold or
lie inside an input, nor be the working directory or one of its parents. A lock file next to the
output keeps two runs from writing it at once, and temporary folders carry their writer's pid so
that a run only ever removes the leftovers of a dead one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synth.export_files import (  # noqa: F401 - training_rows, dropped_dataset: the export's public names
    _jsonable,
    dropped_dataset,
    training_rows,
    write_details,
    write_dropped,
    write_training,
)
from synth.export_layout import NO_LAYOUT, Layout, write_instruction_views
from synth.faults import crash_point

Row = dict[str, Any]


MARKER = ".synth-output"
_NOT_IN_NAME = set('/\\:*?"<>|') | {chr(c) for c in range(32)} | {chr(127)}


# Files `datasets` itself writes next to a loaded dataset (`.map`/`.filter` caches): derived, safe to replace.
_DERIVED = re.compile(r"cache-[0-9a-z_]+\.arrow")


class OutputError(ValueError):
    """An output synth must not write: one line that names the folder and says why."""


def plain_name(value: str) -> str:
    """`value` if it is one plain folder name (a recipe `name` becomes `outputs/<name>`), else ValueError.

    Refused: empty, `.`/`..`, a separator or a character Windows forbids, a leading `.`, `-` or
    `~` (hidden, option-like, home-like), surrounding spaces, or longer than 200 bytes.
    """
    if not isinstance(value, str):
        raise ValueError(f"must be a plain folder name, got {type(value).__name__}")
    bad = sorted({c for c in value if c in _NOT_IN_NAME})
    if (
        not value
        or bad
        or value != value.strip()
        or value[0] in ".-~"
        or value.endswith(".")
        or len(value.encode("utf-8")) > 200
    ):
        shown = f"; {', '.join(repr(c) for c in bad)} not allowed" if bad else ""
        raise ValueError(
            f"must be a plain folder name (no '/', '\\', '..', no leading '.', '-' or '~'), got {value!r}{shown}"
        )
    return value


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(inner: Path, outer: Path) -> bool:
    """`inner` lies strictly inside `outer` (both resolved)."""
    return outer in inner.parents


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder synth wrote; None when missing, a link, unreadable or not synth's."""
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 1_000_000:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "synth" or not isinstance(data.get("files"), list):
        return None
    return data


def _check_replaceable(target: Path, shown: Path) -> None:
    """`target` may be replaced: missing, an empty folder, or a folder synth wrote holding only synth's files."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise OutputError(f"output {shown} exists and is not a folder; choose another --output")
    try:
        names = sorted(p.name for p in target.iterdir())
    except OSError as e:
        raise OutputError(f"output {shown} cannot be read ({e.strerror or e}); choose another --output") from None
    if not names:
        return
    marker = _read_marker(target)
    if marker is None:
        older = {"summary.json", "recipe.yaml", "dropped.jsonl"} <= set(names)
        hint = "; if it is the output of a synth older than its marker file, delete it yourself" if older else ""
        raise OutputError(
            f"output {shown} is not empty and was not written by synth (no {MARKER} file): refusing to replace it; "
            f"choose another --output or an empty folder{hint}"
        )
    foreign = [n for n in names if n != MARKER and n not in marker["files"] and not _DERIVED.fullmatch(n)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise OutputError(
            f"output {shown} holds files synth did not write ({', '.join(foreign[:3])}{more}): refusing to replace it; "
            "move them out or choose another --output"
        )


def check_output_dir(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Raise OutputError unless synth may (re)place its output at `out`; call it before any model loads.

    Refused: the working directory or a parent of it; an input, a folder holding an input, or a
    folder inside an input folder; a folder inside another synth output (its next run would delete
    it); a file; a non-empty folder without synth's marker, or with files synth did not write.
    """
    target = _resolved(out)
    cwd = Path.cwd().resolve()
    if target == cwd or _inside(cwd, target):
        raise OutputError(f"output {out} is the working directory or one of its parents; choose another --output")
    for given in inputs:
        source = _resolved(given)
        if target == source:
            raise OutputError(f"output {out} is the input {given}; choose another --output")
        if _inside(source, target):
            raise OutputError(f"output {out} holds the input {given}: replacing it would delete the input")
        if source.is_dir() and _inside(target, source):
            raise OutputError(f"output {out} lies inside the input folder {given}; choose a folder outside it")
    for parent in target.parents:
        if _read_marker(parent) is not None:
            raise OutputError(f"output {out} lies inside the synth output {parent}, which its next run would replace")
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output {out} cannot be created: {parent} is a file")
    _check_replaceable(target, Path(out))


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return True  # never judged dead: our own, or not a real pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


_HELD: dict[tuple[Path, int], int] = {}  # (output, thread) -> depth: the runner's lock covers write_output's


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the output's lock (`.<name>.synth-lock` next to it); a second run refuses with one line.

    Re-entrant in one thread, so a runner can hold it for a whole run and write_output take it again.
    """
    target = _resolved(out)
    key = (target, threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"output {out} cannot be created ({e.strerror or e})") from None
    path = target.with_name(f".{target.name}.synth-lock")
    fd = _acquire(path, out)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            path.unlink(missing_ok=True)  # while still holding it: a waiter re-checks the inode
        finally:
            os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    """flock a lock file that is still the one at `path` (a releasing run unlinks it), and write our pid."""
    import fcntl

    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"output {out} cannot be locked: {path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"output {out} is being written by another synth run (pid {holder}); wait for it or choose another --output"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the file we locked was unlinked by the run that released it: try the new one
    raise OutputError(f"output {out} cannot be locked: {path} keeps changing")


def _marker(folder: Path) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        synth_version = version("synth")
    except PackageNotFoundError:
        synth_version = "unknown"
    files = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    data = {"tool": "synth", "version": synth_version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    (folder / MARKER).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_output(
    out_dir: Path,
    rows: Sequence[Row],
    dropped: Iterable[Row],
    *,
    anchor: str,
    positive: str,
    formats: Sequence[str],
    card: str,
    recipe_yaml: str,
    summary: dict[str, Any],
    extras: Callable[[Path], None] | None = None,
    negative_columns: Sequence[str] = (),
    inputs: Sequence[Path] = (),
    layout: Layout = NO_LAYOUT,
) -> Path:
    """Write everything into a temp folder next to `out_dir`, then swap it in with renames.

    Refuses (OutputError) every output check_output_dir refuses, again under the output's lock.
    `rows` may be a list or rows that stay on disk (a streamed run's shards, read a batch at a
    time): every file is written batch by batch, so memory does not grow with the row count.
    `extras(folder)` runs last, on the complete temp folder (report, plots), before the swap.
    """
    train = training_rows(rows, anchor, positive, negative_columns, layout)

    def fill(tmp: Path) -> None:
        # Every Arrow file goes straight into the folder, a batch at a time, never mapped and read
        # back (synth/export_arrow.py): memory stays flat however many rows there are.
        write_training(
            tmp,
            train,
            jsonl=tmp / "train.jsonl" if "jsonl" in formats else None,
            parquet=tmp / "train.parquet" if "parquet" in formats else None,
        )
        crash_point("export")
        if len(rows):
            write_details(tmp / "details", rows)
        write_dropped(tmp / "dropped", tmp / "dropped.jsonl", dropped)
        if layout.instruction is not None:  # by_instruction/, prompts.json, flagembedding.jsonl
            raw = training_rows(rows, anchor, positive, negative_columns, layout.without_instruction())
            write_instruction_views(tmp, rows, raw, layout)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2), encoding="utf-8")
        if extras is not None:
            extras(tmp)

    return write_folder(out_dir, fill, inputs)


def _remove_stale_temp_folders(out_dir: Path) -> None:
    """Half-written folders of a killed export of this output are removed, never reused.

    Only names synth gives (`.<name>.tmp-<pid>-<random>`, `.<name>.old-<pid>-<random>`), and
    only when that pid is no longer running: a live run's temporary folder is never touched.
    """
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)-[a-z0-9_]+")
    for entry in out_dir.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if found and entry.is_dir() and not entry.is_symlink() and not _alive(int(found.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path, shown: Path) -> None:
    """Replace `out_dir` by `tmp`: the old folder (checked once more) is renamed aside first, removed only after.

    What was moved aside is checked again, so a file dropped in at the last moment sends it back
    untouched; if the new folder cannot be put in place, the old one is put back.
    """
    _check_replaceable(out_dir, shown)
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
        os.replace(out_dir, old)  # onto the empty placeholder folder: an atomic rename
        try:
            _check_replaceable(old, shown)
        except OutputError:
            os.replace(old, out_dir)
            raise
    try:
        tmp.rename(out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_folder(out_dir: Path, fill: Callable[[Path], None], inputs: Sequence[Path] = ()) -> Path:
    """The one guarded, atomic replace: `fill(tmp)` writes a temp folder next to `out_dir`, then it is swapped in.

    `write_output` and `synth mine` use it: both get the same marker, lock and refusals, so
    it never writes into, or over, a folder synth did not write.
    """
    check_output_dir(out_dir, inputs)
    shown, out_dir = Path(out_dir), _resolved(out_dir)
    with output_lock(shown):
        check_output_dir(shown, inputs)
        _remove_stale_temp_folders(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
        try:
            fill(tmp)
            _marker(tmp)
            _swap_in(tmp, out_dir, shown)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir
