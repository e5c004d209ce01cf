"""Which version answers a request: an explicit version, else header rules, else a weighted (maybe sticky) split.

Ray Serve has no weighted traffic split or header rules of its own (it dropped traffic splitting after 1.x),
so the gateway applies a ``RoutingPolicy`` per model. Sticky splits hash the request key (e.g. a user id
header) to a fixed point in [0, 1), so one user keeps seeing one version while the weights stay put.

A policy may also name a ``shadow`` version (scored beside the answer, never returned) and a ``guard`` on its
canaries (every routed version but the ``stable`` one): ``guard.py`` says when a canary is rolled back, and
``steps`` walk a single canary's share up while the guard holds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ConfigError
from pipeline.models.ref import ModelRef


class HeaderRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    header: str
    equals: str
    version: str


class Shadow(BaseModel):
    """Score ``fraction`` of a model's requests with ``version`` too, in the background; only compared."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: str
    fraction: float = Field(default=1.0, gt=0, le=1)


class Guard(BaseModel):
    """When a canary is rolled back: any limit breached over the last ``window_s``, once the canary has had
    ``min_requests`` there. Agreement is with the stable version, scored in the shadow on canary requests
    (top-1 equal for classifiers, cosine similarity for embeddings); errors are the canary's failures that the
    stable version answered (the client then got the stable version's answer); p99 is of the canary's own time
    on a request (its preprocessing and inference, without the waits for a thread or a batch that every
    version shares), in ms or as a ratio to the stable version's over the same window. ``min_requests`` must
    come within ``window_s``: a canary too slow for that is stopped by the request timeout instead."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_agreement: float | None = Field(default=None, ge=0, le=1)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_p99_ratio: float | None = Field(default=None, gt=0)
    min_requests: int = Field(default=50, ge=1)
    window_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> Guard:
        if all(x is None for x in (self.min_agreement, self.max_error_rate, self.max_p99_ms, self.max_p99_ratio)):
            raise ValueError("a guard needs a limit: min_agreement, max_error_rate, max_p99_ms or max_p99_ratio")
        return self


class RoutingPolicy(BaseModel):
    """``weights`` (version -> weight, any positive scale); empty weights mean the model's default version.

    ``stable``: with a ``guard``, the version a rolled-back canary's traffic returns to; by default the version
    with the largest weight. ``steps`` (canary percentages, rising, ending at 100) need weights naming the stable
    version and one canary, whose share the app sets to each step in turn every ``interval_s`` while the guard
    holds; at 100 the canary is promoted (it takes all traffic).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    weights: dict[str, float] = Field(default_factory=dict)
    rules: list[HeaderRule] = Field(default_factory=list)
    sticky_header: str | None = None
    shadow: Shadow | None = None
    guard: Guard | None = None
    stable: str | None = None
    steps: list[float] = Field(default_factory=list)
    interval_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> RoutingPolicy:
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights must not be negative: {self.weights}")
        if self.weights and not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"at least one version needs a positive weight: {self.weights}")
        if (self.guard or self.steps) and self.stable_version() is None:
            raise ValueError("a guard needs the stable version: name it in 'stable' (the weights do not tell)")
        if self.steps:
            if self.guard is None:
                raise ValueError("steps advance only while a guard holds: add a guard")
            if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)) or self.steps[0] <= 0:
                raise ValueError(f"steps must rise from above 0: {self.steps}")
            if self.steps[-1] != 100 or len(self.steps) < 2:
                raise ValueError(f"steps must end at 100 (the canary promoted), after one below it: {self.steps}")
            if len(self.canaries()) != 1:
                raise ValueError(f"steps need weights naming the stable version and one canary: {self.weights}")
        return self

    def versions(self) -> set[str]:
        """Every version this policy can send traffic to."""
        return {v for v, w in self.weights.items() if w > 0} | {r.version for r in self.rules}

    def named_versions(self) -> set[str]:
        """Every version this policy scores: those it routes to, its shadow, and the stable version a guard
        falls back to and compares with."""
        shadow = {self.shadow.version} if self.shadow else set()
        stable = {s} if (self.guard or self.steps) and (s := self.stable_version()) else set()
        return self.versions() | shadow | stable

    def stable_version(self) -> str | None:
        """The version a guarded canary's traffic returns to: ``stable``, else the only largest weight."""
        if self.stable is not None:
            return self.stable
        positive = {v: w for v, w in self.weights.items() if w > 0}
        top = [v for v, w in positive.items() if w == max(positive.values(), default=0)]
        return top[0] if len(top) == 1 else None

    def canaries(self) -> set[str]:
        """The versions a guard watches: every routed version but the stable one."""
        return self.versions() - {self.stable_version()} if self.guard or self.steps else set()

    def at_step(self, percent: float) -> RoutingPolicy:
        """This policy with the canary at ``percent`` of the split traffic (the rest to the stable version)."""
        (canary,) = self.canaries()
        stable = str(self.stable_version())
        return self.model_copy(
            update={"weights": {stable: 100 - percent, canary: percent} if percent < 100 else {canary: 100}}
        )

    def without(self, version: str) -> RoutingPolicy:
        """This policy with ``version``'s traffic sent to the stable version: no weight, no rule, no steps."""
        stable = str(self.stable_version())
        weights = {v: w for v, w in self.weights.items() if v != version}
        if self.weights and not any(w > 0 for w in weights.values()):  # rules only: the default's traffic stays
            weights = {**weights, stable: 1.0}
        rules = [r for r in self.rules if r.version != version]
        return self.model_copy(update={"weights": weights, "rules": rules, "steps": [], "stable": stable})

    def choose(self, headers: Mapping[str, str], rng: random.Random) -> str | None:
        """The version for a request without an explicit one; None means the default version."""
        lowered = {k.lower(): v for k, v in headers.items()}
        for rule in self.rules:
            if lowered.get(rule.header.lower()) == rule.equals:
                return rule.version
        candidates = [(v, w) for v, w in self.weights.items() if w > 0]
        if not candidates:
            return None
        key = lowered.get(self.sticky_header.lower()) if self.sticky_header else None
        point = _unit_hash(key) if key is not None else rng.random()
        total = sum(w for _, w in candidates)
        cumulative = 0.0
        for version, weight in candidates:
            cumulative += weight / total
            if point < cumulative:
                return version
        return candidates[-1][0]


def scored_versions(routing: Mapping[str, RoutingPolicy]) -> list[ModelRef]:
    """Every version the routing has a replica score (routed, shadow and stable versions): what each replica
    loads before it is ready."""
    return [ModelRef(name=name, version=v) for name, policy in routing.items() for v in sorted(policy.named_versions())]


def check_fits_cache(routing: Mapping[str, RoutingPolicy], max_cached_versions: int) -> None:
    """Refuse routing whose versions a replica cannot hold at once: they would evict one another, each
    request of one reloading it."""
    scored = scored_versions(routing)
    if len(scored) > max_cached_versions:
        raise ConfigError(
            f"the routing sends traffic to {len(scored)} versions ({', '.join(map(str, scored))}) but a replica "
            f"holds at most max_cached_versions={max_cached_versions}; raise it"
        )


def _unit_hash(key: str) -> float:
    """A stable point in [0, 1) for ``key`` (the same in every replica and every run, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
