"""The gateway's health and metadata routes (V2): liveness, readiness of the app and of each model version, and
model metadata, over HTTP here and over gRPC through ``grpc_v2.py``.

Readiness is about what the routing scores: the app is ready when every version it routes to, shadows or falls
back to is loaded in this replica (both halves) and may take traffic; asking starts the loads of what is missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ray.exceptions import RayError
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import StreamScoreError
from pipeline.models.ref import ModelRef
from pipeline.serving import v2
from pipeline.serving.canary import Routed
from pipeline.serving.gateway_state import GatewayState
from pipeline.serving.routes import version_of
from pipeline.serving.routing import RoutingPolicy

logger = logging.getLogger(__name__)


class HealthRoutes(GatewayState):
    """Mixed into the ``Gateway`` deployment, whose state these handlers use (declared here and in
    ``gateway_state.py``, for the reader)."""

    _loading: set[ModelRef]
    _tasks: set[asyncio.Task[None]]

    async def _route(self, name: str, version: str | None, headers: Mapping[str, str]) -> Routed:
        raise NotImplementedError  # the gateway's

    async def server_metadata(self, _: Request) -> JSONResponse:
        """V2 server metadata (``tritonclient``'s ``get_server_metadata``)."""
        return JSONResponse(v2.server_metadata())

    async def live(self, _: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self, _: Request) -> JSONResponse:
        """Ready when every routed version of every model is loaded here and may take traffic. As the V2
        protocol says, 200 means ready and a 4xx not (with what is missing); a load starts for what is."""
        body = await self._readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 400)

    async def _readiness(self) -> dict[str, Any]:
        await self._view.refresh()
        waiting = await self._not_ready(self._routed(), load=True)
        return {"ready": False, "waiting_for": [str(r) for r in waiting]} if waiting else {"ready": True}

    async def metadata(self, request: Request) -> JSONResponse:
        return JSONResponse(
            await self._model_metadata(request.path_params["name"], version_of(request), request.headers)
        )

    async def _model_metadata(self, name: str, version: str | None, headers: Mapping[str, str]) -> dict[str, Any]:
        # Without a version: the one an inference request would reach now (the routing's choice), not merely the
        # repository's default, which a running app may not route to.
        ref = self._resolve(name, version) if version else (await self._route(name, None, headers)).ref
        graph, _ = await asyncio.to_thread(self._graphs.get, ref)
        versions = [str(ref.version)] if version else self._repository.versions(name)
        model = graph.model
        if model.manifest.task == "embedding":
            return v2.model_metadata(name, versions, 0, embedding_width=model.output_width)
        k = min(self._config.options.top_k, len(model.labels))  # what postprocess gives
        raw_width = len(model.labels) if self._config.options.raw_outputs else None
        return v2.model_metadata(name, versions, k, raw_width=raw_width)

    async def model_ready(self, request: Request) -> JSONResponse:
        """200 if ready, 400 if not (``_model_readiness``)."""
        body = await self._model_readiness(request.path_params["name"], version_of(request))
        return JSONResponse(body, status_code=200 if body["ready"] else 400)

    async def _model_readiness(self, name: str, version: str | None) -> dict[str, Any]:
        """A version is ready when loaded here and it neither failed its check nor was retired (Triton's
        meaning); a model, when every version its routing scores (routed, shadow, stable) is."""
        await self._view.refresh()
        if version is None:
            self._resolve(name, None)  # 404 for a model that is not there
            refs = [ref for ref in self._routed() if ref.name == name]
            ready = not await self._not_ready(refs, load=True)
            return {"name": name, "versions": [r.version for r in refs], "ready": ready}
        ref = self._resolve(name, version)
        state = self._snapshot.state_of(ref)
        ready = not await self._not_ready([ref], load=ref in self._routed())
        body = {"name": name, "version": ref.version, "ready": ready, "state": state.state}
        return body | ({"error": state.error} if state.error else {})

    def _routed(self) -> list[ModelRef]:
        """Every version some routing policy scores: routed, shadow and stable versions (a model without one,
        added after the deploy pinned the others: its default version)."""
        refs = []
        for name in self._repository.names():
            policy = self._snapshot.routing.get(name, RoutingPolicy())
            try:
                versions = sorted(policy.named_versions()) or [self._repository.resolve_version(name, None)]
            except StreamScoreError as exc:  # no default (several named versions), or a damaged pointer
                logger.warning("model %s takes no traffic without a version: %s", name, exc)
                continue  # served only where a request names its version: not the app's readiness to hold up
            refs += [ModelRef(name=name, version=v) for v in versions]
        return refs

    async def _not_ready(self, refs: list[ModelRef], load: bool) -> list[ModelRef]:
        """Those of ``refs`` not loaded here (both halves) or not routable (one call to the scorer). With
        ``load``, a routable one that is not loaded starts loading (only routed versions are asked to: loading
        others would evict routed ones)."""
        loaded = set(await self._scorer.loaded()) & set(self._graphs.cached())
        waiting = [ref for ref in refs if ref not in loaded or not self._snapshot.state_of(ref).routable]
        for ref in waiting:
            if load and self._snapshot.state_of(ref).routable and ref not in self._loading:
                self._loading.add(ref)
                task = asyncio.get_running_loop().create_task(self._load_quietly(ref))
                self._tasks.add(task)  # held: the loop keeps only a weak reference to a task
                task.add_done_callback(self._tasks.discard)
        return waiting

    async def _load_quietly(self, ref: ModelRef) -> None:
        try:
            await self._scorer.check(ref)
            await asyncio.to_thread(self._graphs.get, ref)
        except (StreamScoreError, RayError) as exc:
            logger.warning("loading %s for readiness failed: %s", ref, exc)
        finally:
            self._loading.discard(ref)
