"""A model's default version: what ``NAME`` without a version means, everywhere (MLflow calls it an alias).

Without it, "latest" drifts: adding a version, or quantizing one, would silently change what batch, nightly and
Serve score (and nightly would re-score everything). So the repository keeps one pointer per model,
``<root>/<name>/_default.json``, set only by ``streamscore models promote`` or by ``add``/``quantize --promote``.
The file's name starts with ``_``, which no version may (``check_id``), so it is never listed as one.

The pointer is replaced atomically (``common.atomic_write``): a reader sees the old pointer or the new one,
never half of either.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, ValidationError

from common.atomic_write import discard, replace_file, staging_path
from common.errors import ModelLoadError
from common.filesystems import join
from pipeline.models.ref import check_id

DEFAULT_FILE = "_default.json"


class DefaultVersion(BaseModel):
    """The pointer's content: the version, and when it was promoted (for people reading the file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    promoted_at: dt.datetime


def read_default(fs: pafs.FileSystem, model_folder: str) -> str | None:
    """The default version recorded in ``model_folder``, or None when none was ever promoted."""
    path = join(model_folder, DEFAULT_FILE)
    try:
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    except FileNotFoundError:
        return None
    try:
        pointer = DefaultVersion.model_validate(json.loads(text))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"invalid default-version file {path}: {exc}; run streamscore models promote") from exc
    return check_id("version", pointer.version)


def write_default(fs: pafs.FileSystem, model_folder: str, version: str, replace: bool = True) -> bool:
    """Point ``model_folder``'s default at ``version``; with ``replace=False`` only where no default exists
    yet (so a pointer ``models promote`` wrote meanwhile is never overwritten). Returns whether it wrote.

    Local filesystems: a staged file renamed over the pointer (``replace``) or hard-linked to its name, which
    fails if one appeared (not ``replace``): atomic both ways. Object stores: one ``PUT``, atomic by itself; the
    not-``replace`` check there is a read before the write. Other filesystems (HDFS, fsspec's sftp...): a
    rename, and where it will not replace an existing file, a delete first (a reader may then briefly see no
    pointer, and fall back to the highest numeric version).
    """
    pointer = DefaultVersion(version=check_id("version", version), promoted_at=dt.datetime.now(dt.UTC))
    data = (json.dumps(pointer.model_dump(mode="json"), indent=2) + "\n").encode("utf-8")
    path = join(model_folder, DEFAULT_FILE)
    if replace:
        replace_file(fs, path, data)
        return True
    if isinstance(fs, pafs.LocalFileSystem):
        staging = staging_path(path)
        try:
            with fs.open_output_stream(staging) as stream:
                stream.write(data)
            try:
                os.link(staging, path)  # fails if a pointer exists, however recent
            except FileExistsError:
                return False
            return True
        finally:
            discard(fs, staging)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    replace_file(fs, path, data)
    return True
