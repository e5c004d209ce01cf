"""Which version answers a request: an explicit version, else header rules, else a weighted (maybe sticky) split.

Ray Serve has no weighted traffic split or header rules of its own (it dropped traffic splitting after 1.x),
so the gateway applies a ``RoutingPolicy`` per model. Sticky splits hash the request key (e.g. a user id
header) to a fixed point in [0, 1), so one user keeps seeing one version while the weights stay put.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator


class HeaderRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str
    equals: str
    version: str


class RoutingPolicy(BaseModel):
    """``weights`` (version -> weight, any positive scale); empty weights mean the model's default version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(default_factory=dict)
    rules: list[HeaderRule] = Field(default_factory=list)
    sticky_header: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RoutingPolicy:
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights must not be negative: {self.weights}")
        if self.weights and not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"at least one version needs a positive weight: {self.weights}")
        return self

    def versions(self) -> set[str]:
        """Every version this policy can send traffic to."""
        return {v for v, w in self.weights.items() if w > 0} | {r.version for r in self.rules}

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


def _unit_hash(key: str) -> float:
    """A stable point in [0, 1) for ``key`` (the same in every replica and every run, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
