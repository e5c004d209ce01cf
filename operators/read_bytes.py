"""read_bytes: fetch each row's file (a local path or a URI) into the ``bytes`` column.

Reading inside the worker that decodes, rather than in a separate Ray read stage, keeps encoded bytes off the
object store: only a path per image crosses between processes. A missing or oversized file becomes an error
row, so an input listing that changed under us loses nothing.
"""

from __future__ import annotations

from pydantic import Field

from common.filesystems import resolve
from operators._registry import register
from operators._rows import errors_of, map_rows, with_errors
from operators.base import ERROR_COLUMN, Batch, Column, Operator, Params, RowError
from operators.reasons import Reason


class ReadBytesParams(Params):
    # A single image file over this is almost certainly not an image we should hold in memory.
    max_file_bytes: int = Field(default=256 * 1024 * 1024, gt=0)


@register("read_bytes")
class ReadBytes(Operator):
    Params = ReadBytesParams
    reads = (Column("uri", "str"),)
    writes = (Column("bytes", "bytes"), ERROR_COLUMN)
    params: ReadBytesParams

    def __call__(self, batch: Batch) -> Batch:
        data, errors = map_rows(batch["uri"], errors_of(batch), self._read, Reason.READ_FAILED)
        return with_errors(batch, errors, bytes=data)

    def _read(self, uri: str) -> bytes:
        filesystem, path = resolve(str(uri))
        try:
            with filesystem.open_input_stream(path) as stream:
                data = stream.read(self.params.max_file_bytes + 1)
        except (OSError, FileNotFoundError) as exc:
            raise RowError(Reason.READ_FAILED, str(exc)[:300]) from None
        if len(data) > self.params.max_file_bytes:
            raise RowError(Reason.FILE_TOO_LARGE, f"over the {self.params.max_file_bytes}-byte limit")
        return data
