"""The guard on a model's canaries: when one is rolled back, and when a progressive canary takes its next step.

Pure functions over ``TrafficCounts`` (what every gateway replica saw in the guard's window, summed by the
control plane), so the decision is the same whichever replica served which request, and is tested alone. The
control plane calls ``review`` after each report; it applies the outcome to the routing and records it.

Why these figures: a canary that answers wrongly still answers 200, so only a comparison with the stable
version on the same requests shows it (``agreement``, from the stable version scored in the shadow); one that
fails on some inputs is seen in its error rate (the client got the stable version's answer instead); one that
is slow, in its p99 against a fixed bound or the stable version's p99 over the same window (a ratio holds
whatever the machine's load).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.serving.routing import Guard, RoutingPolicy
from pipeline.serving.traffic import TrafficCounts

Action = Literal["started", "advanced", "rolled_back", "promoted", "released"]


class GuardEvent(BaseModel):
    """Who did what to which version, why and when (Unix time), as ``admin routing`` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    by: Literal["guard", "operator"]
    action: Action
    version: str
    reason: str


class GuardStatus(BaseModel):
    """A guarded model's canary as the control plane follows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["watching", "rolled_back", "promoted"] = "watching"
    stable: str
    started_at: float  # the routing was set: traffic from before does not count
    step: int | None = None  # index into the policy's steps
    step_since: float | None = None
    events: list[GuardEvent] = Field(default_factory=list)

    def with_event(self, event: GuardEvent, **changes: object) -> GuardStatus:
        return self.model_copy(update={**changes, "events": [*self.events, event][-20:]})


class Review(BaseModel):
    """What ``review`` decided: the routing to set and the status to keep (None: nothing changes)."""

    model_config = ConfigDict(frozen=True)

    policy: RoutingPolicy
    status: GuardStatus
    rolled_back: str | None = None  # the canary version rolled back


def start(policy: RoutingPolicy, now: float | None = None) -> tuple[RoutingPolicy, GuardStatus]:
    """The routing to set when an operator sets ``policy`` (at its first step), and its guard's status."""
    now = time.time() if now is None else now
    policy = policy.model_copy(update={"stable": policy.stable_version()})  # the weights change; it does not
    canaries = ", ".join(sorted(policy.canaries())) or "none"
    steps = f"; steps {policy.steps} every {policy.interval_s:g} s" if policy.steps else ""
    event = GuardEvent(at=now, by="operator", action="started", version=canaries, reason=f"routing set{steps}")
    status = GuardStatus(stable=str(policy.stable_version()), started_at=now).with_event(event)
    if policy.steps:
        return policy.at_step(policy.steps[0]), status.model_copy(update={"step": 0, "step_since": now})
    return policy, status


def enough(policy: RoutingPolicy, counts: TrafficCounts, model: str) -> bool:
    """Whether every canary has ``min_requests`` in ``counts``. The control plane judges on the guard's window
    when it does, else on everything since the canary started (within the reports it keeps): a canary too slow
    to answer ``min_requests`` within ``window_s`` is judged all the same, once it has answered that many."""
    needed = policy.guard.min_requests if policy.guard else 0
    return all(
        (seen := counts.versions.get((model, canary))) is not None and seen.requests >= needed
        for canary in policy.canaries()
    )


def breach(guard: Guard, counts: TrafficCounts, model: str, stable: str, canary: str) -> str | None:
    """Why ``canary`` breaks ``guard`` over ``counts`` (its window), or None while it holds or has too few
    requests to tell."""
    seen = counts.versions.get((model, canary))
    if seen is None or seen.requests < guard.min_requests:
        return None
    if guard.max_error_rate is not None and seen.errors / seen.requests > guard.max_error_rate:
        rate = seen.errors / seen.requests
        return f"error rate {rate:.1%} > {guard.max_error_rate:.1%} ({seen.errors} of {seen.requests} requests failed)"
    p99 = seen.p99_ms()
    if guard.max_p99_ms is not None and p99 > guard.max_p99_ms:
        return f"p99 {p99:.0f} ms > {guard.max_p99_ms:g} ms over {seen.requests} requests"
    base = counts.versions.get((model, stable))
    if guard.max_p99_ratio is not None and base is not None and base.requests >= guard.min_requests:
        ratio = p99 / base.p99_ms()
        if math.isfinite(ratio) and ratio > guard.max_p99_ratio:
            return f"p99 {p99:.0f} ms is {ratio:.1f}x the stable version's {base.p99_ms():.0f} ms (> {guard.max_p99_ratio:g}x)"
    pair = counts.pairs.get((model, canary, stable))
    if guard.min_agreement is not None and pair is not None and pair.compared >= guard.min_requests:
        agreement = pair.agreement / pair.compared
        if not agreement >= guard.min_agreement:  # NaN (a non-finite comparison) breaks the guard too
            return (
                f"agreement with version {stable} {agreement:.1%} < {guard.min_agreement:.1%}"
                f" over {pair.compared} requests"
            )
    return None


def evidence_missing(guard: Guard, counts: TrafficCounts, model: str, stable: str, canary: str) -> str | None:
    """What ``counts`` lack to show that ``canary`` keeps every limit of ``guard`` (None: nothing): a step is
    taken only on evidence, never because a limit could not be checked (shadow work dropped, say)."""
    seen = counts.versions.get((model, canary))
    if seen is None or seen.requests < guard.min_requests:
        return f"{seen.requests if seen else 0} of {guard.min_requests} canary requests"
    pair = counts.pairs.get((model, canary, stable))
    if guard.min_agreement is not None and (pair is None or pair.compared < guard.min_requests):
        return f"{pair.compared if pair else 0} of {guard.min_requests} comparisons with version {stable}"
    base = counts.versions.get((model, stable))
    if guard.max_p99_ratio is not None and (base is None or base.requests < guard.min_requests):
        return f"{base.requests if base else 0} of {guard.min_requests} requests of version {stable} for the p99 ratio"
    return None


def review(
    model: str, policy: RoutingPolicy, status: GuardStatus, window: TrafficCounts, step: TrafficCounts, now: float
) -> Review | None:
    """Roll back a canary that breaks the guard over ``window``; else, with steps, advance one step once
    ``interval_s`` has passed with ``min_requests`` canary requests in ``step`` (the counts since the step
    began). None when nothing changes."""
    guard = policy.guard
    if guard is None or status.state != "watching":
        return None
    for canary in sorted(policy.canaries()):
        reason = breach(guard, window, model, status.stable, canary)
        if reason is not None:
            event = GuardEvent(at=now, by="guard", action="rolled_back", version=canary, reason=reason)
            rolled_back = policy.without(canary)
            # Other canaries of the policy stay watched; the last one gone, the guard's work is done.
            state = "watching" if rolled_back.canaries() else "rolled_back"
            return Review(
                policy=rolled_back,
                status=status.with_event(event, state=state, step=None, step_since=None),
                rolled_back=canary,
            )
    if status.step is None or status.step_since is None or now - status.step_since < policy.interval_s:
        return None
    (canary,) = policy.canaries()
    if evidence_missing(guard, step, model, status.stable, canary) is not None:
        return None  # too little to call this step good: wait
    held = f"the guard held over {step.versions[(model, canary)].requests} requests"
    following = status.step + 1
    if following == len(policy.steps) - 1:  # the last step is 100: promotion
        event = GuardEvent(at=now, by="guard", action="promoted", version=canary, reason=held)
        promoted = policy.model_copy(update={"weights": {canary: 100.0}, "steps": [], "stable": canary, "rules": []})
        return Review(policy=promoted, status=status.with_event(event, state="promoted", step=None, step_since=None))
    percent = policy.steps[following]
    event = GuardEvent(at=now, by="guard", action="advanced", version=canary, reason=f"to {percent:g} %: {held}")
    return Review(policy=policy.at_step(percent), status=status.with_event(event, step=following, step_since=now))
