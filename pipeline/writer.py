"""Write prediction tables into a Parquet dataset folder (any pyarrow filesystem) and keep the run's tally."""

from __future__ import annotations

import collections
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.errors import InputError
from common.filesystems import resolve
from operators.base import ERROR
from operators.reasons import Reason


def check_output(output_uri: str, overwrite: bool) -> None:
    """Fail early (before Ray starts or any data is read) if ``output_uri`` cannot take a new dataset."""
    fs, path = resolve(output_uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise InputError(f"output {output_uri} is a file; give a folder for the Parquet dataset")
    if info.type == pafs.FileType.Directory and not overwrite and fs.get_file_info(pafs.FileSelector(path)):
        raise InputError(f"output folder {output_uri} is not empty; pass --overwrite to replace it")


class PredictionWriter:
    """Appends prediction tables to ``part-NNNNN.parquet`` files, rolling over every ``rows_per_file`` rows."""

    def __init__(self, output_uri: str, *, overwrite: bool = False, rows_per_file: int = 1_000_000) -> None:
        check_output(output_uri, overwrite)
        self._fs, self._dir = resolve(output_uri)
        if self._fs.get_file_info(self._dir).type == pafs.FileType.Directory:
            for entry in self._fs.get_file_info(pafs.FileSelector(self._dir)):
                if entry.type == pafs.FileType.Directory:
                    self._fs.delete_dir(entry.path)
                else:
                    self._fs.delete_file(entry.path)
        self._fs.create_dir(self._dir, recursive=True)
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
        errors = table.column(ERROR).drop_null()
        if len(errors):
            reasons = pc.utf8_slice_codeunits(errors, 0, 64)  # reason = text before the first ':'
            for item in pc.value_counts(pc.list_element(pc.split_pattern(reasons, ":"), 0)).tolist():
                self.errors_by_reason[Reason(item["values"]).value] += item["counts"]  # one of the enumeration

    def _roll(self, schema: pa.Schema) -> None:
        self.close()
        path = posixpath.join(self._dir, f"part-{self._files:05d}.parquet")
        self._stream = self._fs.open_output_stream(path)
        self._writer = pq.ParquetWriter(self._stream, schema)
        self._files += 1
        self._rows_in_file = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = None
