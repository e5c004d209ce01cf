"""Write prediction tables into a Parquet dataset folder (any pyarrow filesystem), all or nothing.

Part files are written into ``<output>/_staging/`` and moved up only when the run is complete; then
``_SUCCESS`` is written, holding the run summary. Readers never see a partial dataset: pyarrow, pandas, Spark,
DuckDB and Polars skip paths that start with ``_`` or ``.``, so a run killed at any moment (even mid-file,
leaving a Parquet file without its footer) leaves nothing they would read, and ``_SUCCESS`` says a folder is
complete for readers that check. A folder holding only an incomplete attempt is replaced without
``--overwrite``; a complete one (or anything that is not ours) only with it.
"""

from __future__ import annotations

import collections
import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.errors import InputError
from common.filesystems import resolve
from pipeline.output import ERROR_REASON

SUCCESS_FILE = "_SUCCESS"
STAGING_DIR = "_staging"
# Bounded so that a part file is a unit a reader (or a resumed job) can take or leave: 100,000 prediction rows
# are about 15 MB.
ROWS_PER_FILE = 100_000


def _entries(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return list(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def _ours(entry: pafs.FileInfo) -> bool:
    """What a StreamScore run leaves in its output folder."""
    name = entry.base_name
    return name in (SUCCESS_FILE, STAGING_DIR) or (name.startswith("part-") and name.endswith(".parquet"))


def check_output(output_uri: str, overwrite: bool) -> None:
    """Fail early (before Ray starts or any data is read) if ``output_uri`` cannot take a new dataset."""
    fs, path = resolve(output_uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise InputError(f"output {output_uri} is a file; give a folder for the Parquet dataset")
    if overwrite or info.type != pafs.FileType.Directory:
        return
    entries = _entries(fs, path)
    if any(e.base_name == SUCCESS_FILE for e in entries):
        raise InputError(
            f"output folder {output_uri} holds a complete run ({SUCCESS_FILE}); pass --overwrite to replace it"
        )
    if not all(_ours(e) for e in entries):
        raise InputError(f"output folder {output_uri} is not empty; pass --overwrite to replace it")
    # Only an incomplete attempt of ours is there: the run replaces it.


class PredictionWriter:
    """Appends prediction tables to staged ``part-NNNNN.parquet`` files; ``commit`` publishes them."""

    def __init__(self, output_uri: str, *, overwrite: bool = False, rows_per_file: int = ROWS_PER_FILE) -> None:
        check_output(output_uri, overwrite)
        self._fs, self._dir = resolve(output_uri)
        self._staging = posixpath.join(self._dir, STAGING_DIR)
        if self._fs.get_file_info(self._staging).type == pafs.FileType.Directory:
            self._fs.delete_dir(self._staging)  # an earlier attempt's
        self._fs.create_dir(self._staging, recursive=True)
        self._rows_per_file = rows_per_file
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._files = 0
        self.rows = 0
        self.errors_by_reason: collections.Counter[str] = collections.Counter()

    @property
    def error_rows(self) -> int:
        return sum(self.errors_by_reason.values())

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None or self._rows_in_file >= self._rows_per_file:
            self._roll(table.schema)
        assert self._writer is not None
        self._writer.write_table(table.cast(self._writer.schema))
        self._rows_in_file += table.num_rows
        self.rows += table.num_rows
        reasons = table.column(ERROR_REASON).drop_null()
        if len(reasons):
            for item in pc.value_counts(reasons).tolist():
                self.errors_by_reason[item["values"]] += item["counts"]

    def _roll(self, schema: pa.Schema) -> None:
        self.close()
        path = posixpath.join(self._staging, f"part-{self._files:05d}.parquet")
        self._stream = self._fs.open_output_stream(path)
        self._writer = pq.ParquetWriter(self._stream, schema)
        self._files += 1
        self._rows_in_file = 0

    def close(self) -> None:
        """Finish the part file being written (the run may still be abandoned: nothing is published)."""
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = None

    def commit(self, summary: dict[str, Any]) -> None:
        """Publish the staged parts in place of whatever the folder held, then ``_SUCCESS`` with ``summary``."""
        self.close()
        for entry in _entries(self._fs, self._dir):
            if entry.base_name == STAGING_DIR:
                continue
            if entry.type == pafs.FileType.Directory:
                self._fs.delete_dir(entry.path)
            else:
                self._fs.delete_file(entry.path)
        for entry in _entries(self._fs, self._staging):
            self._fs.move(entry.path, posixpath.join(self._dir, entry.base_name))
        self._fs.delete_dir(self._staging)
        with self._fs.open_output_stream(posixpath.join(self._dir, SUCCESS_FILE)) as stream:
            stream.write(json.dumps(summary, indent=2).encode() + b"\n")
