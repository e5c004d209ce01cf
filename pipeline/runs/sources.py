"""Input sources: a folder (recursive), a glob, a file listing URIs, or a Parquet dataset of image bytes.

Folders, globs and URI lists are listed on the driver into (id, uri) rows; the files themselves are read
by the workers that decode them. Listing is cheap metadata work and gives every row a stable id up front.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from common.errors import ConfigError, InputError
from common.filesystems import resolve

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif")
SourceKind = Literal["auto", "folder", "glob", "uri_list", "parquet"]


@dataclass(frozen=True)
class FileListing:
    """(id, uri, size, mtime_ns) rows to read file by file; size and mtime come from the listing itself
    (null for URI lists, which are not listed), for the nightly job's change detection."""

    table: pa.Table


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet dataset with an id column and an image-bytes column; ``only_ids``: score just these rows
    (the nightly job's frozen set), None for all."""

    path: str
    filesystem: pafs.FileSystem
    id_column: str
    bytes_column: str
    only_ids: pa.Array | None = None

    def row_filter(self) -> pc.Expression | None:
        """The rows to score, as a scan filter (ids compared as strings, as every output writes them)."""
        return None if self.only_ids is None else pc.field(self.id_column).cast(pa.string()).isin(self.only_ids)

    def count_rows(self) -> int:
        """The rows a run must put out, from the files' footers (nothing decoded)."""
        return int(self._dataset().count_rows(filter=self.row_filter()))

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        """``(id, bytes)`` tables of at most ``batch_rows`` rows, read as they are asked for: memory bounded by
        what is in flight, not by the dataset. (Ray Data reads the same columns and rows in its own tasks.)"""
        scanner = self._dataset().scanner(
            columns=[self.id_column, self.bytes_column],
            filter=self.row_filter(),
            batch_size=batch_rows,
            batch_readahead=1,
            fragment_readahead=1,
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield pa.table({"id": batch.column(0).cast(pa.string()), "bytes": batch.column(1)})

    def _dataset(self) -> Any:
        import pyarrow.dataset as pads  # here, not at the top: it imports pandas (0.2 s a command need not wait)

        return pads.dataset(self.path, filesystem=self.filesystem, format="parquet")


Source = FileListing | ParquetSource


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _uri_of(root: str, path: str) -> str:
    """Rebuild a URI for ``path`` in the filesystem of ``root`` (local paths stay plain paths)."""
    if "://" not in root:
        return path
    scheme = root.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}" if scheme != "file" else f"file://{path}"


def _list_files(fs: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return [i for i in infos if i.type == pafs.FileType.File]


def list_folder(root: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FileListing:
    """Every image file under ``root`` (recursive; hidden files and folders skipped), sorted; id = relative path."""
    fs, base = resolve(root)
    rows = []
    for info in _list_files(fs, base):
        rel = posixpath.relpath(info.path, base)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if extensions and not rel.lower().endswith(extensions):
            continue
        rows.append((rel, _uri_of(root, info.path), info.size, info.mtime_ns))
    return _listing(sorted(rows), f"no image files ({', '.join(extensions)}) under {root}")


def list_glob(pattern: str) -> FileListing:
    """Files matching ``pattern`` (``*`` may cross folders); id = path relative to the pattern's fixed prefix."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if _has_glob(part))
    prefix = "/".join(parts[:fixed]) or "."
    fs, base = resolve(prefix)
    rel_pattern = "/".join(parts[fixed:]).replace("**/", "*").replace("**", "*")
    rows = []
    for info in _list_files(fs, base):
        rel = posixpath.relpath(info.path, base)
        if fnmatch.fnmatchcase(rel, rel_pattern):
            rows.append((rel, _uri_of(prefix, info.path), info.size, info.mtime_ns))
    return _listing(sorted(rows), f"no files match {pattern}")


def list_uris(listing_uri: str) -> FileListing:
    """One URI or path per line (blank lines and ``#`` comments skipped); id = the URI as written."""
    fs, path = resolve(listing_uri)
    with fs.open_input_stream(path) as stream:
        lines = stream.read().decode("utf-8").splitlines()
    uris = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return _listing([(u, u, None, None) for u in uris], f"{listing_uri} lists no URIs")


def _listing(rows: list[tuple[str, str, int | None, int | None]], empty_message: str) -> FileListing:
    if not rows:
        raise InputError(empty_message)
    ids, uris, sizes, mtimes = zip(*rows, strict=True)
    return FileListing(
        pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "uri": pa.array(uris, pa.string()),
                "size": pa.array(sizes, pa.int64()),
                "mtime_ns": pa.array(mtimes, pa.int64()),
            }
        )
    )


def parquet_source(uri: str, id_column: str = "id", bytes_column: str = "image") -> ParquetSource:
    """Check (from the schema only) that the Parquet dataset has the id and bytes columns."""
    import pyarrow.dataset as pads  # here, not at the top: it imports pandas (0.2 s a command need not wait)

    fs, path = resolve(uri)
    try:
        schema = pads.dataset(path, filesystem=fs, format="parquet").schema
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read Parquet dataset {uri}: {exc}") from exc
    for column, option in ((id_column, "--id-column"), (bytes_column, "--bytes-column")):
        if column not in schema.names:
            raise ConfigError(f"Parquet input {uri} has no column {column!r} (set {option}); columns: {schema.names}")
    if not (
        pa.types.is_binary(schema.field(bytes_column).type) or pa.types.is_large_binary(schema.field(bytes_column).type)
    ):
        raise ConfigError(f"column {bytes_column!r} of {uri} is {schema.field(bytes_column).type}, expected binary")
    return ParquetSource(path, fs, id_column, bytes_column)


def detect_source(uri: str, kind: SourceKind = "auto", id_column: str = "id", bytes_column: str = "image") -> Source:
    """Work out what ``uri`` is (unless ``kind`` says) and list or check it."""
    if kind == "auto":
        if _has_glob(uri):
            kind = "glob"
        elif uri.endswith((".txt", ".lst", ".uris")):
            kind = "uri_list"
        elif uri.endswith(".parquet"):
            kind = "parquet"
        else:
            fs, path = resolve(uri)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"input {uri} does not exist")
            if info.type == pafs.FileType.Directory:
                files = _list_files(fs, path)
                kind = "parquet" if files and all(f.path.endswith(".parquet") for f in files) else "folder"
            else:
                raise InputError(f"cannot tell what {uri} is; pass --input-format (folder, glob, uri_list, parquet)")
    if kind == "folder":
        return list_folder(uri)
    if kind == "glob":
        return list_glob(uri)
    if kind == "uri_list":
        return list_uris(uri)
    return parquet_source(uri, id_column, bytes_column)
