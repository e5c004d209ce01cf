"""A test-only operator that kills its own process on a marker image, as a poison input would.

A model's manifest names it (``preprocess.operators``, ``module: tests.crash_operator``), so the batch job's
actors and the Serve replicas import and run it like any model step. A marker is an image of one solid grey:
resizing and cropping keep it exact, so the operator recognises it from the model-sized pixels.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np

from operators._registry import register
from operators._rows import ok_mask
from operators.base import ERROR_COLUMN, Batch, Column, Operator, Params
from pipeline.models import ModelRepository

_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
KILL_GREY = 13  # an image all of this grey: the process SIGKILLs itself, as the out-of-memory killer would
SEGFAULT_GREY = 14  # this one: the process reads address 0, as a native decoder with a bug would


class CrashParams(Params):
    kill_grey: int = KILL_GREY
    segfault_grey: int = SEGFAULT_GREY


@register("crash_on_marker")
class CrashOnMarker(Operator):
    Params = CrashParams
    reads = (Column("pixels", "uint8", ("N", "H", "W", "C")),)
    writes = (Column("pixels", "uint8", ("N", "H", "W", "C")), ERROR_COLUMN)
    params: CrashParams

    def __call__(self, batch: Batch) -> Batch:
        for i in np.flatnonzero(ok_mask(batch)):
            pixels = batch["pixels"][i]
            if (pixels == self.params.kill_grey).all():
                os.kill(os.getpid(), signal.SIGKILL)
            if (pixels == self.params.segfault_grey).all():
                ctypes.string_at(0)
        return batch


def crashing_repository(root: Path) -> ModelRepository:
    """digits with the test-only crash step in its manifest, as a model's own operator."""
    shutil.copytree(_MODELS_DIR / "digits" / "1", root / "digits" / "1")
    manifest_path = root / "digits" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["preprocess"]["operators"] = [{"name": "crash_on_marker", "module": "tests.crash_operator"}]
    manifest_path.write_text(json.dumps(manifest))
    return ModelRepository(str(root))
