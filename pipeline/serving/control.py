"""The control plane: routing policies and version states that the admin API changes while the app runs.

One small replica holds the truth; gateways read it at most ``STATE_REFRESH_S`` old (and at once after their
own admin calls), so a change reaches every gateway replica within that time. A version is routable unless it
failed its check or was retired; a routing change naming one that is not routable is refused, so a bad
version never takes traffic and the previous routing stays.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from common.errors import ConfigError
from pipeline.model_ref import ModelRef
from pipeline.serving.routing import RoutingPolicy

STATE_REFRESH_S = 0.5


class VersionState(BaseModel):
    """What the admin API last decided about a version; a version with no state is ``ready``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["ready", "failed", "retired"] = "ready"
    error: str | None = None

    @property
    def routable(self) -> bool:
        return self.state == "ready"


READY = VersionState()


class ControlSnapshot(BaseModel):
    """The control plane's state at one revision, as gateways cache it."""

    model_config = ConfigDict(frozen=True)

    revision: int = 0
    routing: dict[str, RoutingPolicy] = Field(default_factory=dict)
    states: dict[ModelRef, VersionState] = Field(default_factory=dict)

    def state_of(self, ref: ModelRef) -> VersionState:
        return self.states.get(ref, READY)

    def states_of(self, name: str) -> dict[str, VersionState]:
        """Version -> state, for the versions of ``name`` that have one."""
        return {ref.version: s for ref, s in self.states.items() if ref.name == name and ref.version}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class ControlPlane:
    def __init__(self, routing: dict[str, RoutingPolicy]) -> None:
        self._snapshot = ControlSnapshot(routing=dict(routing))

    def snapshot(self) -> ControlSnapshot:
        return self._snapshot

    def set_state(self, ref: ModelRef, state: VersionState) -> int:
        return self._update(states={**self._snapshot.states, ref: state})

    def set_routing(self, name: str, policy: RoutingPolicy) -> int:
        blocked = {
            v: s.state
            for v in sorted(policy.versions())
            if not (s := self._snapshot.state_of(ModelRef(name=name, version=v))).routable
        }
        if blocked:
            raise ConfigError(f"routing for {name!r} names versions that cannot take traffic: {blocked}")
        return self._update(routing={**self._snapshot.routing, name: policy})

    def retire(self, ref: ModelRef) -> int:
        policy = self._snapshot.routing.get(ref.name)
        if policy is not None and ref.version in policy.versions():
            raise ConfigError(
                f"routing for {ref.name!r} still sends traffic to version {ref.version!r}; change it first"
            )
        return self.set_state(ref, VersionState(state="retired"))

    def _update(self, **changes: object) -> int:
        self._snapshot = self._snapshot.model_copy(update={**changes, "revision": self._snapshot.revision + 1})
        return self._snapshot.revision
