"""Test-only operators: one kills its own process on a marker image, as a poison input would; one takes a
set time per row, so that a run lasts as long as a test needs while using almost no CPU.

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
import time
from pathlib import Path

import numpy as np

from operators._registry import register
from operators._rows import ok_mask
from operators.base import ERROR_COLUMN, Batch, Column, Operator, Params
from pipeline.models import ModelRepository

_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
KILL_GREY = 13  # an image all of this grey: the process SIGKILLs itself, as the out-of-memory killer would
SEGFAULT_GREY = 14  # this one: the process reads address 0, as a native decoder with a bug would
OOM_GREY = 15  # this one: the process joins a memory-limited cgroup and allocates past the limit (the kernel kills it)


class CrashParams(Params):
    kill_grey: int = KILL_GREY
    segfault_grey: int = SEGFAULT_GREY
    oom_grey: int = OOM_GREY
    # A cgroup-v1 memory cgroup folder with a small memory.limit_in_bytes, made by the test (``memory_cgroup``).
    oom_cgroup: str | None = None


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
            if (pixels == self.params.oom_grey).all() and self.params.oom_cgroup:
                Path(self.params.oom_cgroup, "cgroup.procs").write_text(str(os.getpid()))
                hog = np.ones(2**30, dtype=np.uint8)  # 1 GiB, touched: far past the cgroup's limit
                raise AssertionError(f"the kernel let this process use {hog.nbytes} bytes")
        return batch


def memory_cgroup(name: str, limit_bytes: int) -> Path | None:
    """A child of this process's cgroup-v1 memory cgroup, limited to ``limit_bytes``; None where this
    process may not make one (not root, cgroup v2 only)."""
    own = next((line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.split(":")[1] == "memory"), None)  # fmt: skip
    if own is None:
        return None
    folder = Path("/sys/fs/cgroup/memory", own.lstrip("/"), name)
    try:
        folder.mkdir(exist_ok=True)
        (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError:
        return None
    return folder


class SleepParams(Params):
    seconds_per_row: float = 0.05


@register("sleep_per_row")
class SleepPerRow(Operator):
    Params = SleepParams
    reads = (Column("pixels", "uint8", ("N", "H", "W", "C")),)
    writes = (Column("pixels", "uint8", ("N", "H", "W", "C")), ERROR_COLUMN)
    params: SleepParams

    def __call__(self, batch: Batch) -> Batch:
        time.sleep(self.params.seconds_per_row * len(batch["pixels"]))
        return batch


def digits_with_step(root: Path, name: str, **params: object) -> ModelRepository:
    """digits with one of the test-only steps in its manifest, as a model's own operator."""
    shutil.copytree(_MODELS_DIR / "digits" / "1", root / "digits" / "1")
    manifest_path = root / "digits" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    step: dict[str, object] = {"name": name, "module": "tests.crash_operator"}
    if params:
        step["params"] = params
    manifest["preprocess"]["operators"] = [step]
    manifest_path.write_text(json.dumps(manifest))
    return ModelRepository(str(root))


def crashing_repository(root: Path, oom_cgroup: Path | None = None) -> ModelRepository:
    """digits with the test-only crash step."""
    return digits_with_step(root, "crash_on_marker", **({"oom_cgroup": str(oom_cgroup)} if oom_cgroup else {}))
