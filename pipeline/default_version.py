"""A model's default version: what ``NAME`` without a version means, everywhere (MLflow calls it an alias).

Without it, "latest" drifts: adding a version, or quantizing one, would silently change what batch, nightly and
Serve score (and nightly would re-score everything). So the repository keeps one pointer per model,
``<root>/<name>/_default.json``, set only by ``streamscore models promote`` or by ``add``/``quantize --promote``.
The file's name starts with ``_``, which no version may (``check_id``), so it is never listed as one.

The pointer is written atomically on every filesystem: on a local one a temporary file is renamed over it (a
reader sees the old pointer or the new one, never half of either); on an object store a single ``PUT`` is
atomic by itself, and object stores have no rename.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import ModelLoadError
from common.filesystems import join
from pipeline.model_ref import check_id

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


def write_default(fs: pafs.FileSystem, model_folder: str, version: str) -> None:
    """Point ``model_folder``'s default at ``version``, atomically (see the module's docstring)."""
    pointer = DefaultVersion(version=check_id("version", version), promoted_at=dt.datetime.now(dt.UTC))
    data = (json.dumps(pointer.model_dump(mode="json"), indent=2) + "\n").encode("utf-8")
    path = join(model_folder, DEFAULT_FILE)
    if not isinstance(fs, pafs.LocalFileSystem):  # an object store: one PUT is atomic, and there is no rename
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    staging = join(model_folder, f".{DEFAULT_FILE}.{uuid.uuid4().hex}")
    try:
        with fs.open_output_stream(staging) as stream:
            stream.write(data)
        fs.move(staging, path)  # rename(2): atomic, and it replaces the old pointer
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(staging)
        raise
