"""Test-only operators: one kills its own process on a marker image, as a poison input would; one takes a
set time per row, so that a run lasts as long as a test needs while using almost no CPU; one loses the rows of
a marker image, as a buggy operator would (what the lost-rows check at the end of a run is for).

A model's manifest names it (``preprocess.operators``, ``module: tests.crash_operator``), so the batch job's
actors and the Serve replicas import and run it like any model step. A marker is an image of one solid grey:
resizing and cropping keep it exact, so the operator recognises it from the model-sized pixels.
"""

from __future__ import annotations

import contextlib
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
from pipeline.models.repository import ModelRepository

_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
KILL_GREY = 13  # an image all of this grey: the process SIGKILLs itself, as the out-of-memory killer would
SEGFAULT_GREY = 14  # this one: the process reads address 0, as a native decoder with a bug would
OOM_GREY = 15  # this one: the process joins a memory-limited cgroup and allocates past the limit (the kernel kills it)
DROP_GREY = 16  # drop_on_marker: the row vanishes from the batch


class CrashParams(Params):
    kill_grey: int = KILL_GREY
    segfault_grey: int = SEGFAULT_GREY
    oom_grey: int = OOM_GREY
    # A memory cgroup folder with a small limit, made by the test (``memory_cgroup``; cgroup v1 or v2).
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


CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup(name: str, limit_bytes: int) -> Path | None:
    """A new memory cgroup limited to ``limit_bytes`` that a process of this test may move itself into; None where
    this machine gives none (not root, no memory controller, or no cgroup that may hand it to a child).

    cgroup v1 (and the hybrid layout, where memory is a v1 hierarchy): a child of this process's memory cgroup with
    ``memory.limit_in_bytes``. cgroup v2: a process may only join a leaf whose parent enables ``memory`` in
    ``cgroup.subtree_control``, and a cgroup holding processes cannot enable it for children ("no internal
    processes"), so the group is made beside this process's own (under the nearest ancestor that enables memory),
    with ``memory.max`` and swap off, so the kernel kills instead of swapping. Memory already charged stays where it
    was in both versions: only what a process allocates after joining counts against the limit.
    """
    hierarchies = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    v1 = next((path for _, controllers, path in hierarchies if "memory" in controllers.split(",")), None)
    if v1 is not None:
        return _limited(CGROUP_ROOT / "memory" / v1.lstrip("/") / name, {"memory.limit_in_bytes": limit_bytes})
    v2 = next((path for number, _, path in hierarchies if number == "0"), None)
    if v2 is None or not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    own = CGROUP_ROOT / v2.lstrip("/")
    for parent in (own, *own.parents):
        if not parent.is_relative_to(CGROUP_ROOT):
            break
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "memory" in enabled and (folder := _limited(parent / name, {"memory.max": limit_bytes})) is not None:
            with contextlib.suppress(OSError):  # absent where swap is not accounted: nothing to turn off
                (folder / "memory.swap.max").write_text("0")
            return folder
    return None


def _limited(folder: Path, limits: dict[str, int]) -> Path | None:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    try:
        for file, value in limits.items():
            (folder / file).write_text(str(value))
    except OSError:
        folder.rmdir()
        return None
    return folder


def times_limit_was_hit(cgroup: Path) -> int:
    """How often the cgroup's memory limit stopped an allocation: v1's ``memory.failcnt``, v2's ``max`` events."""
    if (cgroup / "memory.failcnt").exists():
        return int((cgroup / "memory.failcnt").read_text())
    events = dict(line.split() for line in (cgroup / "memory.events").read_text().splitlines())
    return int(events["max"])


class SleepParams(Params):
    seconds_per_row: float = 0.05
    # A file made when a batch starts sleeping: how a test knows that a request or a batch is in flight.
    started_file: str | None = None


@register("sleep_per_row")
class SleepPerRow(Operator):
    Params = SleepParams
    reads = (Column("pixels", "uint8", ("N", "H", "W", "C")),)
    writes = (Column("pixels", "uint8", ("N", "H", "W", "C")), ERROR_COLUMN)
    params: SleepParams

    def __call__(self, batch: Batch) -> Batch:
        if self.params.started_file:
            Path(self.params.started_file).touch()
        time.sleep(self.params.seconds_per_row * len(batch["pixels"]))
        return batch


class DropParams(Params):
    drop_grey: int = DROP_GREY


@register("drop_on_marker")
class DropOnMarker(Operator):
    """Breaks the operator contract on purpose: rows of one solid ``drop_grey`` leave the batch."""

    Params = DropParams
    reads = (Column("pixels", "uint8", ("N", "H", "W", "C")),)
    writes = (Column("pixels", "uint8", ("N", "H", "W", "C")), ERROR_COLUMN)
    params: DropParams

    def __call__(self, batch: Batch) -> Batch:
        pixels = batch["pixels"]
        keep = ~(pixels == self.params.drop_grey).reshape(len(pixels), -1).all(axis=1)
        return {name: column[keep] for name, column in batch.items()}


def digits_with_step(root: Path, name: str, model: str = "digits", **params: object) -> ModelRepository:
    """digits with one of the test-only steps in its manifest, as a model's own operator (as ``model``, version 1,
    so that one repository may also hold the plain digits)."""
    shutil.copytree(_MODELS_DIR / "digits" / "1", root / model / "1")
    manifest_path = root / model / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"] = model
    step: dict[str, object] = {"name": name, "module": "tests.crash_operator"}
    if params:
        step["params"] = params
    manifest["preprocess"]["operators"] = [step]
    manifest_path.write_text(json.dumps(manifest))
    return ModelRepository(str(root))


def crashing_repository(root: Path, oom_cgroup: Path | None = None) -> ModelRepository:
    """digits with the test-only crash step."""
    return digits_with_step(root, "crash_on_marker", **({"oom_cgroup": str(oom_cgroup)} if oom_cgroup else {}))
