"""Resolve paths and URIs to a pyarrow filesystem: local paths, s3://, gs://, hdfs://, and any fsspec URI.

pyarrow's own filesystems are used where they exist (fast, GIL-free I/O); other schemes go through fsspec,
wrapped as a pyarrow filesystem, so the rest of StreamScore speaks one interface. Filesystems are cached per
scheme and authority because creating one (an S3 region look-up, say) costs far more than a read.
"""

from __future__ import annotations

import functools
import os

import pyarrow as pa
import pyarrow.fs as pafs


@functools.lru_cache(maxsize=64)
def _filesystem_for(scheme: str, authority: str) -> tuple[pafs.FileSystem, bool]:
    """(filesystem, whether pyarrow implements it natively)."""
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{authority}/")[0], True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(f"{scheme}://{authority}/")
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), False


def resolve(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for ``uri``; a ``filesystem`` given by the caller wins."""
    if filesystem is not None:
        return filesystem, uri
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return pafs.LocalFileSystem(), "/" + rest.lstrip("/")
    authority = rest.split("/", 1)[0]
    fs, native = _filesystem_for(scheme, authority)
    if native:
        return fs, pafs.FileSystem.from_uri(uri)[1]
    import fsspec

    return fs, fsspec.core.url_to_fs(uri)[1]


def join(base: str, relative: str) -> str:
    """Join a URI or path with a relative POSIX path."""
    return base.rstrip("/") + "/" + relative.lstrip("/")
