"""Replacing a small file so that a reader sees the old content or the new, never half of either.

Pointers and state files (a model's default version, the serving control plane's decisions) are read by other
processes while they change. Local filesystems: a staged file renamed over the old one (rename(2) is atomic).
Object stores: a single ``PUT``, atomic by itself (and they have no rename). Other filesystems (HDFS, fsspec's
sftp...): a rename, and where it will not replace a file, a delete first (a reader may then briefly find none).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid

import pyarrow.fs as pafs

_OBJECT_STORES = {"s3", "s3a", "gcs", "gs", "abfs", "abfss", "az", "adl"}


def is_object_store(fs: pafs.FileSystem) -> bool:
    """Whether a single ``PUT`` replaces a file atomically here (and there is no rename to use instead)."""
    if isinstance(fs, pafs.PyFileSystem):  # fsspec's filesystem behind pyarrow's interface
        protocol = getattr(getattr(fs.handler, "fs", None), "protocol", ())
        protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        return bool(protocols & _OBJECT_STORES)
    return fs.type_name in _OBJECT_STORES


def staging_path(path: str) -> str:
    """A hidden, unique name beside ``path`` to write before it is renamed into place."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.{uuid.uuid4().hex}")


def discard(fs: pafs.FileSystem, path: str) -> None:
    """Delete ``path`` if it is there (a staged file left by a failed write)."""
    with contextlib.suppress(FileNotFoundError, OSError):
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)


def replace_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, replacing what is there in one step (see the module's docstring)."""
    if is_object_store(fs):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    staging = staging_path(path)
    try:
        with fs.open_output_stream(staging) as stream:
            stream.write(data)
        try:
            fs.move(staging, path)
        except OSError:
            if isinstance(fs, pafs.LocalFileSystem):
                raise
            fs.delete_file(path)  # a filesystem whose rename will not replace a file
            fs.move(staging, path)
    finally:
        discard(fs, staging)
