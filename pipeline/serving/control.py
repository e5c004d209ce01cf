"""The control plane: routing policies and version states that the admin API changes while the app runs.

One small replica holds the truth; gateways read it at most ``refresh_s`` old (and at once after their own
admin calls), so a change reaches every gateway replica within that time. A version is routable unless it
failed its check or was retired; a routing change naming one that is not routable is refused, so a bad
version never takes traffic and the previous routing stays.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from pipeline.errors import ConfigError
from pipeline.serving.routing import RoutingPolicy


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class ControlPlane:
    def __init__(self, routing: dict[str, RoutingPolicy]) -> None:
        self._routing = dict(routing)
        self._states: dict[str, dict[str, Any]] = {}  # "name:version" -> {"state": ..., "error": ...}
        self._revision = 0

    def snapshot(self) -> tuple[int, dict[str, RoutingPolicy], dict[str, dict[str, Any]]]:
        return self._revision, dict(self._routing), dict(self._states)

    def set_state(self, ref: str, state: str, error: str | None = None) -> int:
        self._states[ref] = {"state": state, "error": error}
        self._revision += 1
        return self._revision

    def set_routing(self, name: str, policy: RoutingPolicy) -> int:
        blocked = {v: self._states[f"{name}:{v}"] for v in policy.versions() if f"{name}:{v}" in self._states}
        blocked = {v: s for v, s in blocked.items() if s["state"] != "ready"}
        if blocked:
            raise ConfigError(f"routing for {name!r} names versions that cannot take traffic: {blocked}")
        self._routing[name] = policy
        self._revision += 1
        return self._revision

    def retire(self, name: str, version: str) -> int:
        policy = self._routing.get(name)
        if policy is not None and version in policy.versions():
            raise ConfigError(f"routing for {name!r} still sends traffic to version {version!r}; change it first")
        return self.set_state(f"{name}:{version}", "retired")
