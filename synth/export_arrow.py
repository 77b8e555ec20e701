"""`save_to_disk` folders written table by table and never read back: flat memory at a million rows.

Why not `Dataset.save_to_disk`: it copies a dataset that already is an Arrow file, so it maps that
file and reads every page of it, and mapped pages a process has read count in its resident memory
(VmRSS/VmHWM) until the mapping goes. At 1M documents the details table alone is gigabytes. Here
each table goes from the rows, a batch at a time, straight into the folder's own shard files
through `datasets`' ArrowWriter (the same stream format and schema metadata), and the two JSON
files `load_from_disk` reads are written the way `save_to_disk` writes them. A parquet copy, when
asked for, is written from the same batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_SHARD_BYTES = 500 * 1000 * 1000  # `datasets`' default max_shard_size ("500MB")


class DatasetFolderWriter:
    """One `save_to_disk` folder: `data-XXXXX-of-NNNNN.arrow` shards, `state.json`, `dataset_info.json`.

    `max_shard_bytes=None` keeps one shard (save_to_disk(num_shards=1)); otherwise a new shard
    starts once the current one holds that many bytes of Arrow data. Shards are written under
    hidden names and get their final `-of-N` names in `close`, so a folder with a `state.json`
    is complete. `parquet`: also write every table to this parquet file.
    """

    def __init__(
        self, folder: Path, features: Any, max_shard_bytes: int | None = MAX_SHARD_BYTES, parquet: Path | None = None
    ) -> None:
        self.folder, self.features, self.max_shard_bytes = Path(folder), features, max_shard_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts: list[Path] = []
        self.rows = 0
        self._writer: Any = None
        self._shard_bytes = 0
        self._parquet: Any = _parquet_writer(parquet, features) if parquet is not None else None

    def write(self, table: Any) -> None:
        """Append one Arrow table (already in the folder's schema) to the current shard."""
        if not table.num_rows:
            return
        if self._writer is None or (self.max_shard_bytes is not None and self._shard_bytes >= self.max_shard_bytes):
            self._next_shard()
        self._writer.write_table(table)
        if self._parquet is not None:
            self._parquet.write_table(table)
        self._shard_bytes += table.nbytes
        self.rows += table.num_rows

    def _next_shard(self) -> None:
        from datasets.arrow_writer import ArrowWriter

        self._close_shard()
        part = self.folder / f".part-{len(self.parts):05d}.arrow"
        self.parts.append(part)
        self._writer = ArrowWriter(path=str(part), features=self.features)
        self._shard_bytes = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            try:
                self._writer.finalize()
            finally:
                self._writer.close()
            self._writer = None

    def close(self) -> int:
        """Finish the shards (an empty dataset gets one empty shard: it still loads), name them, write
        `state.json` and `dataset_info.json`; returns the number of rows written."""
        from datasets.fingerprint import generate_random_fingerprint
        from datasets.info import DatasetInfo
        from datasets.utils.py_utils import asdict

        if self._writer is None and not self.parts:
            self._next_shard()
        self._close_shard()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        names = [f"data-{i:05d}-of-{len(self.parts):05d}.arrow" for i in range(len(self.parts))]
        for part, name in zip(self.parts, names, strict=True):
            os.replace(part, self.folder / name)
        state = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": generate_random_fingerprint(),  # as for any dataset not built by a hashed transform
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        info = asdict(DatasetInfo(features=self.features))
        (self.folder / "dataset_info.json").write_text(
            json.dumps({key: info[key] for key in sorted(info)}, indent=2), encoding="utf-8"
        )
        return self.rows

    def abort(self) -> None:
        """Close open files after a failure (the caller removes the folder)."""
        try:
            self._close_shard()
        finally:
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None


def _parquet_writer(path: Path, features: Any) -> Any:
    """A parquet writer with the options `Dataset.to_parquet` uses (schema metadata, column options)."""
    import pyarrow.parquet as pq
    from datasets import config
    from datasets.arrow_writer import get_parquet_column_options

    schema = features.arrow_schema
    return pq.ParquetWriter(
        str(path),
        schema=schema,
        use_content_defined_chunking=config.DEFAULT_CDC_OPTIONS,
        write_page_index=True,
        **get_parquet_column_options(features, schema),
    )


def arrow_files(folder: Path) -> list[Path]:
    """The Arrow shard files of a `save_to_disk` folder, in order (from its state.json)."""
    state = json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
    return [Path(folder) / item["filename"] for item in state.get("_data_files", [])]


def iter_record_batches(folder: Path, columns: list[str] | None = None) -> Any:
    """The record batches of a `save_to_disk` folder, read (not mapped) one at a time.

    Reading through a plain file keeps each batch in memory only while it is used; a mapped file
    (what `load_from_disk` does) would leave every page read counted in the process's RSS.
    `columns`: keep only these (the batch is still read whole from disk).
    """
    import pyarrow as pa

    for path in arrow_files(folder):
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                if columns is not None:
                    batch = batch.select([c for c in columns if c in batch.schema.names])
                yield batch
