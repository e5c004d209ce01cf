"""Resource planning: actor counts, CPUs and GPUs per actor, ORT threads and batch size from the cluster.

Two layouts:
- ``split``: CPU actors decode and preprocess, GPU actors run the model; uint8 pixel batches travel between
  them as Arrow tensor columns. Chosen when the cluster has GPUs.
- ``fused``: each actor reads, decodes, preprocesses and runs the model (one ORT thread) on its own core.
  Chosen on CPU-only clusters: there both stages compete for the same cores anyway, and handing pixels
  between processes only adds serialization and scheduling (measured here: one process per core doing
  decode + inference reaches 0.9-0.97x of the machine's limit; split CPU pipelines 0.25-0.6x).

Actors never reserve every CPU: ``reserved_cpus`` stay free so Ray Data's read and write tasks can always be
scheduled (an actor pool holding all CPUs of a 2-CPU node starves the read tasks and the job hangs forever).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ConfigError


class ResourceOverrides(BaseModel):
    """User overrides; every field left ``None`` is derived from the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["auto", "fused", "split"] = "auto"
    batch_size: int | None = Field(default=None, ge=1)
    preprocess_actors: int | None = Field(default=None, ge=1)
    inference_actors: int | None = Field(default=None, ge=1)
    cpus_per_preprocess_actor: float | None = Field(default=None, gt=0)
    cpus_per_inference_actor: float | None = Field(default=None, gt=0)
    gpus_per_inference_actor: float | None = Field(default=None, ge=0)
    ort_threads: int | None = Field(default=None, ge=1)
    rows_per_ort_call: int | None = Field(default=None, ge=1)
    reserved_cpus: float | None = Field(default=None, ge=0)
    # How far the actor pools may grow onto nodes that join a running job (autoscaling, KubeRay, spot
    # replacements). None: POOL_GROWTH times the start size.
    max_preprocess_actors: int | None = Field(default=None, ge=1)
    max_inference_actors: int | None = Field(default=None, ge=1)


# Pools start at the size the cluster holds at start and may grow to this many times that as nodes join; Ray
# Data adds actors only when there is backlog and the cluster has room for them.
POOL_GROWTH = 8


class ResourcePlan(BaseModel):
    """What the batch runner asks Ray for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["fused", "split"]
    batch_size: int
    preprocess_actors: int  # 0 in the fused layout
    cpus_per_preprocess_actor: float
    inference_actors: int
    cpus_per_inference_actor: float
    gpus_per_inference_actor: float
    ort_threads: int
    rows_per_ort_call: int | None  # None: each block in one ORT call
    io_task_cpus: float  # what each read/write task reserves
    # The pools' upper bounds (>= their start sizes above): Ray Data grows a pool onto nodes that join.
    max_preprocess_actors: int = 0
    max_inference_actors: int = 0

    @model_validator(mode="after")
    def _fits(self) -> ResourcePlan:
        if self.layout == "split" and self.preprocess_actors < 1:
            raise ValueError("the split layout needs at least one preprocess actor")
        if self.max_inference_actors < self.inference_actors or self.max_preprocess_actors < self.preprocess_actors:
            raise ValueError("an actor pool's maximum is below its start size")
        return self

    def for_blocks(self, blocks: int) -> ResourcePlan:
        """This plan with no more actors per pool than there are blocks to give them (a small input)."""
        split = self.layout == "split"
        return self.model_copy(
            update={
                "inference_actors": min(self.inference_actors, blocks),
                "max_inference_actors": min(self.max_inference_actors, blocks),
                "preprocess_actors": min(self.preprocess_actors, blocks) if split else self.preprocess_actors,
                "max_preprocess_actors": min(self.max_preprocess_actors, blocks) if split else 0,
            }
        )

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_inference_actor > 0 else "cpu"

    def describe(self) -> str:
        infer = (
            f"{self.inference_actors} inference actor(s) (up to {self.max_inference_actors})"
            f" x {self.cpus_per_inference_actor:g} CPU"
            f" x {self.gpus_per_inference_actor:g} GPU, {self.ort_threads} ORT thread(s)"
            + (f", ORT on {self.rows_per_ort_call} rows per call" if self.rows_per_ort_call else "")
        )
        if self.layout == "fused":
            return f"fused layout: {infer} (each also decodes), batch {self.batch_size}"
        return (
            f"split layout: {self.preprocess_actors} preprocess actor(s) (up to {self.max_preprocess_actors})"
            f" x {self.cpus_per_preprocess_actor:g} CPU, "
            f"{infer}, batch {self.batch_size}"
        )


# Blocks stay large (Ray's cost is per block) but ORT runs them on CPU a few rows at a time (faster per image).
CPU_ROWS_PER_ORT_CALL = 4


def _ceiling(start: int, override: int | None) -> int:
    """A pool's upper bound: the user's, or POOL_GROWTH times its start size; never below the start size."""
    return max(start, override or POOL_GROWTH * start)


def _floor4(value: float) -> float:
    # Rounded down so that actors x CPUs never exceeds what is usable by a rounding error.
    return math.floor(value * 1e4) / 1e4


def plan_resources(cluster: dict[str, float], overrides: ResourceOverrides | None = None) -> ResourcePlan:
    """Derive a plan from ``ray.cluster_resources()``-style totals; overrides win where given."""
    o = overrides or ResourceOverrides()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if cpus < 1:
        raise ConfigError(f"the cluster has {cpus:g} CPUs; StreamScore needs at least one")
    reserved = o.reserved_cpus if o.reserved_cpus is not None else min(1.0, max(0.25, 0.05 * cpus))
    usable = cpus - reserved
    if usable <= 0:
        raise ConfigError(f"reserved_cpus={reserved:g} leaves nothing of the cluster's {cpus:g} CPUs for actors")
    layout = o.layout if o.layout != "auto" else ("split" if gpus >= 1 else "fused")
    io_task_cpus = min(reserved, 0.25) if reserved > 0 else 0.0

    if layout == "fused":
        gpus_each = o.gpus_per_inference_actor or 0.0
        actors = o.inference_actors or (max(1, int(gpus // gpus_each)) if gpus_each else max(1, math.floor(cpus)))
        cpus_each = o.cpus_per_inference_actor or usable / actors
        plan = ResourcePlan(
            layout="fused",
            batch_size=o.batch_size or (64 if gpus_each else 32),
            preprocess_actors=0,
            cpus_per_preprocess_actor=0.0,
            inference_actors=actors,
            max_inference_actors=_ceiling(actors, o.max_inference_actors),
            cpus_per_inference_actor=_floor4(cpus_each),
            gpus_per_inference_actor=gpus_each,
            ort_threads=o.ort_threads or 1,
            rows_per_ort_call=o.rows_per_ort_call or (None if gpus_each else CPU_ROWS_PER_ORT_CALL),
            io_task_cpus=io_task_cpus,
        )
    else:
        gpus_each = (
            o.gpus_per_inference_actor if o.gpus_per_inference_actor is not None else (1.0 if gpus >= 1 else 0.0)
        )
        if gpus_each:
            infer_actors = o.inference_actors or max(1, int(gpus // gpus_each))
            cpus_infer = o.cpus_per_inference_actor or min(1.0, usable / (infer_actors + 1))
        else:
            # No GPU: give inference half the usable CPUs; preprocessing the other half.
            infer_actors = o.inference_actors or max(1, math.floor(usable / 2))
            cpus_infer = o.cpus_per_inference_actor or (usable / 2) / infer_actors
        left = usable - infer_actors * cpus_infer
        if left <= 0 and not (o.preprocess_actors and o.cpus_per_preprocess_actor):
            raise ConfigError(
                f"inference actors take {infer_actors * cpus_infer:g} of {usable:g} usable CPUs; none left to preprocess"
            )
        pre_actors = o.preprocess_actors or max(1, math.floor(left))
        cpus_pre = o.cpus_per_preprocess_actor or left / pre_actors
        plan = ResourcePlan(
            layout="split",
            batch_size=o.batch_size or (64 if gpus_each else 16),
            preprocess_actors=pre_actors,
            max_preprocess_actors=_ceiling(pre_actors, o.max_preprocess_actors),
            cpus_per_preprocess_actor=_floor4(cpus_pre),
            inference_actors=infer_actors,
            max_inference_actors=_ceiling(infer_actors, o.max_inference_actors),
            cpus_per_inference_actor=_floor4(cpus_infer),
            gpus_per_inference_actor=gpus_each,
            ort_threads=o.ort_threads or (1 if gpus_each else max(1, math.floor(cpus_infer + 1e-9))),
            rows_per_ort_call=o.rows_per_ort_call or (None if gpus_each else CPU_ROWS_PER_ORT_CALL),
            io_task_cpus=io_task_cpus,
        )
    needed_cpus = (
        plan.preprocess_actors * plan.cpus_per_preprocess_actor + plan.inference_actors * plan.cpus_per_inference_actor
    )
    if needed_cpus > usable + 1e-6:
        raise ConfigError(
            f"the plan needs {needed_cpus:g} CPUs for actors but only {usable:g} of {cpus:g} are usable "
            f"({reserved:g} stay free for read/write tasks); lower the actor counts or CPUs per actor"
        )
    needed_gpus = plan.inference_actors * plan.gpus_per_inference_actor
    if needed_gpus > gpus + 1e-6:
        raise ConfigError(f"the plan needs {needed_gpus:g} GPUs but the cluster has {gpus:g}")
    return plan
