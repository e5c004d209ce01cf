"""The admin routes of the gateway: load and check a version, retire one, read and set a model's routing, release a
version its guard rolled back.

Kept apart from the scoring routes (``gateway.py``) because they change the app rather than use it: each
checks the bearer token first (``auth.py``) and then acts through the control plane, which every gateway
replica follows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import ConfigError, HttpError, StreamScoreError
from pipeline.serving.auth import BearerAuth
from pipeline.serving.control_store import VersionState
from pipeline.serving.gateway_state import GatewayState
from pipeline.serving.http_body import BodyReader
from pipeline.serving.metrics import GatewayMetrics
from pipeline.serving.routing import RoutingPolicy


class AdminRoutes(GatewayState):
    """Mixed into the ``Gateway`` deployment, whose state these handlers use (declared here and in
    ``gateway_state.py``, for the reader)."""

    _auth: BearerAuth
    _bodies: BodyReader
    _control: Any  # the ControlPlane deployment's handle
    _metrics: GatewayMetrics

    def _missing_versions(self, name: str, policy: RoutingPolicy) -> list[str]:
        raise NotImplementedError  # the gateway's

    def _start_pushing_metrics(self) -> None:
        raise NotImplementedError  # the gateway's

    async def admin_load(self, request: Request) -> JSONResponse:
        """Load and check a version (warm-up batch, finite outputs); only a passing version can take traffic."""
        self._auth.check(request)
        name, version = request.path_params["name"], request.path_params["version"]
        ref = self._resolve(name, version)
        self._start_pushing_metrics()
        try:
            await self._scorer.check(ref)
            await asyncio.to_thread(self._graphs.get, ref)
            state = VersionState()
        except StreamScoreError as exc:  # cannot load, or scores badly: reported, never served
            message = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
            state = VersionState(state="failed", error=message)
        await self._control.set_state.remote(ref, state)
        await self._view.refresh(force=True)
        self._metrics.version_checks.labels(name, version, "ok" if state.routable else "failed").inc()
        body = {"model": name, "version": version, "state": state.state}
        return JSONResponse(body | ({"error": state.error} if state.error else {}), 200 if state.routable else 422)

    async def admin_retire(self, request: Request) -> JSONResponse:
        self._auth.check(request)
        name, version = request.path_params["name"], request.path_params["version"]
        ref = self._resolve(name, version)
        try:
            await self._control.retire.remote(ref)
        except ConfigError as exc:
            raise HttpError(409, _refusal(exc)) from None
        await self._view.refresh(force=True)
        return JSONResponse({"model": name, "version": version, "state": "retired"})

    async def admin_get_routing(self, request: Request) -> JSONResponse:
        self._auth.check(request)
        name = request.path_params["name"]
        await self._view.refresh(force=True)
        snapshot = self._snapshot
        policy = snapshot.routing.get(name, RoutingPolicy())
        states = {v: s.model_dump(exclude_none=True) for v, s in snapshot.states_of(name).items()}
        held = [ref.version for ref in await self._scorer.loaded() if ref.name == name]
        guard = snapshot.guards.get(name)
        window_s = policy.guard.window_s if policy.guard else 60.0
        return JSONResponse(
            {
                "model": name,
                "routing": policy.model_dump(exclude_defaults=True),
                "versions": states,
                "loaded": held,
                "guard": guard.model_dump() if guard else None,
                "halted": {str(r.version): e.model_dump() for r, e in snapshot.halted.items() if r.name == name},
                "traffic": await self._control.traffic.remote(name, window_s) if snapshot.observed(name) else None,
            }
        )

    async def admin_release(self, request: Request) -> JSONResponse:
        """An operator's word that a version its guard rolled back may be routed again."""
        self._auth.check(request)
        ref = self._resolve(request.path_params["name"], request.path_params["version"])
        try:
            await self._control.release.remote(ref)
        except ConfigError as exc:
            raise HttpError(409, _refusal(exc)) from None
        await self._view.refresh(force=True)
        return JSONResponse({"model": ref.name, "version": ref.version, "released": True})

    async def admin_put_routing(self, request: Request) -> JSONResponse:
        self._auth.check(request)
        name = request.path_params["name"]
        try:  # a model needs versions to route, not a default (routing is how one with only named versions gets one)
            known = self._repository.versions(name, fresh=True)
        except ConfigError as exc:
            raise HttpError(404, str(exc)) from None
        if not known:
            raise HttpError(404, f"no model {name!r} in the repository")
        try:
            body = await self._bodies.body(request)
            policy = RoutingPolicy.model_validate_json(body)
        except ValidationError as exc:
            raise HttpError(400, f"bad routing policy: {exc}") from None
        if missing := self._missing_versions(name, policy):
            raise HttpError(404, f"routing names versions {missing} that {name!r} does not have")
        # As the deploy does, the control plane refuses versions a replica could not hold at once (they would evict
        # one another); routing left for a model since removed from the repository holds no slot.
        present = {*self._repository.names(), name}  # this one was just found (a listing reused for 1 s may lack it)
        try:
            await self._control.set_routing.remote(name, policy, self._config.max_cached_versions, present)
        except ConfigError as exc:
            raise HttpError(409, _refusal(exc)) from None
        await self._view.refresh(force=True)
        return JSONResponse({"model": name, "routing": self._snapshot.routing[name].model_dump(exclude_defaults=True)})


def _refusal(exc: ConfigError) -> str:
    """The control plane's own words: a refusal raised there reaches us wrapped in Ray's task error, whose text
    carries the remote traceback."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, Exception) else exc)
