"""A gateway replica's side of canaries and shadows: where a routed request may fall back, what is scored in the
shadow, and the counts it reports to the control plane (which runs the guards: ``control.py``, ``guard.py``).

A request the routing sent to a guarded canary carries the stable version as its ``fallback``: should the
canary fail it (any refusal or error the stable version does not also give), the stable version answers, the
client never sees the failure, and the canary is charged an error. The stable version is also scored in the
shadow on canary requests, for the guard's agreement. A policy's own ``shadow`` samples its requests (canary
requests too) the same way. Counting is for models with a guard or a shadow only; everything else pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from pipeline.models.ref import ModelRef
from pipeline.serving.control import ControlSnapshot
from pipeline.serving.metrics import GatewayMetrics
from pipeline.serving.shadow import ShadowQueue, ShadowWork
from pipeline.serving.traffic import REPORT_INTERVAL_S, PairCounts, TrafficCounts

logger = logging.getLogger(__name__)


@dataclass
class Routed:
    """Where one request goes: ``ref``, else ``fallback``; ``shadows`` scored too. ``answered`` and
    ``failed_over`` are filled in as it is scored."""

    ref: ModelRef
    fallback: ModelRef | None = None
    shadows: tuple[ModelRef, ...] = ()
    counted: bool = False  # routed by a guarded or shadowed policy: its outcome is reported
    answered: ModelRef | None = None
    failed_over: bool = False
    shed: bool = False  # refused for the app's load (full queues): no version's doing
    service_s: float | None = None  # the routed version's own time on it: preprocessing and inference, no waits
    images: list[bytes] = field(default_factory=list)  # what was scored, and the answer: for the shadow
    table: pa.Table | None = None

    @property
    def served(self) -> ModelRef:
        """The version whose answer the client got (the routed one until something else answers)."""
        return self.answered or self.ref


def plan(snapshot: ControlSnapshot, ref: ModelRef, chosen_by_policy: bool, rng: random.Random) -> Routed:
    """Fallback, shadow and counting for a request routed to ``ref``."""
    policy = snapshot.routing.get(ref.name)
    if not chosen_by_policy or policy is None or not snapshot.observed(ref.name):
        return Routed(ref)

    def usable(version: str, halted_too: bool) -> ModelRef | None:  # not one that failed or was retired
        other = ref.at(version)
        if not snapshot.state_of(other).routable or (other in snapshot.halted and not halted_too):
            return None
        return other

    shadows: list[ModelRef] = []
    fallback = None
    stable = policy.stable_version() if policy.guard is not None else None
    if stable is not None and ref.version != stable and ref.version in policy.canaries():
        fallback = usable(stable, halted_too=False)  # answers clients: never a rolled-back version
        shadows += [fallback] if fallback is not None else []
    shadow = policy.shadow
    sampled = shadow is not None and shadow.version != ref.version and rng.random() < shadow.fraction
    # A rolled-back canary may be watched in the shadow (it answers no one there).
    watched = usable(shadow.version, halted_too=True) if shadow is not None and sampled else None
    if watched is not None and watched not in shadows:
        shadows.append(watched)
    return Routed(ref, fallback=fallback, shadows=tuple(shadows), counted=True)


@dataclass
class CanaryTraffic:
    """This replica's counts since its last report, its shadow queue, and the task that reports."""

    control: Any  # the ControlPlane deployment's handle
    metrics: GatewayMetrics
    score: Callable[[ModelRef, list[bytes]], Awaitable[pa.Table]]  # the shadow's scoring
    max_shadow_requests: int
    max_shadow_bytes: int
    shadow_timeout_s: float
    counts: TrafficCounts = field(default_factory=TrafficCounts)
    _shadows: ShadowQueue | None = None
    _reporter: asyncio.Task[None] | None = None

    def finished(self, routed: Routed, status: int, latency_s: float) -> None:
        """Count a finished request (and hand its shadow work to the queue). Refusals of the request itself
        (4xx that no version would answer) are not the version's doing and are not counted. The latency counted
        is the version's own time on the request (preprocessing and inference), without its waits for a thread
        or a batch: under load those are shared by every version and would hide a slow one."""
        if not routed.counted:
            return
        self._start_reporting()
        failed = routed.failed_over or (status >= 500 and not routed.shed)
        if status < 400 or failed:
            own_s = routed.service_s if routed.service_s is not None else latency_s
            self.counts.version(routed.ref.name, str(routed.ref.version)).observe(own_s * 1e3, failed)
        if routed.failed_over and routed.fallback is not None:  # no answer of its own: it agreed with nothing
            self._record(ShadowWork(routed.ref, routed.fallback, [], pa.table({})), PairCounts(compared=1))
        served = routed.served
        if status >= 400 or routed.table is None:
            return
        for shadow in routed.shadows:
            if shadow == served:  # failed over to it: its answer is the client's
                continue
            if self._shadows is None:
                self._shadows = ShadowQueue(
                    self.score, self._record, self.max_shadow_requests, self.max_shadow_bytes, self.shadow_timeout_s
                )
            self._shadows.offer(ShadowWork(answered=served, shadow=shadow, images=routed.images, answer=routed.table))

    def _record(self, work: ShadowWork, outcome: PairCounts) -> None:
        name, version, shadow = work.answered.name, str(work.answered.version), str(work.shadow.version)
        self.counts.pair(name, version, shadow).add(outcome)
        self.metrics.observe_shadow(name, version, shadow, outcome)

    def _start_reporting(self) -> None:
        if self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if not self.counts:
                continue
            sent, self.counts = self.counts, TrafficCounts()
            try:
                await self.control.report.remote(sent)
            except (RayError, RayServeException) as exc:  # the control plane is being replaced: these counts go
                logger.warning("could not report traffic to the control plane: %s", exc)
