"""The gateway: Open Inference Protocol (V2) scoring routes, ``/predict`` for people, metrics; health and metadata
routes from ``health.py``, admin routes from ``admin.py``, the V2 gRPC methods from ``grpc_v2.py``; canary
fallbacks and shadows through ``canary.py``.

It also preprocesses (decode, resize, crop: CPU work that scales with requests, like the HTTP parsing) and sends
uint8 pixels to the scorer, so a request makes one hop between deployments. Every scoring response names the
version that served it, in the body and in ``X-Model-Version``. Bad requests get 4xx with ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.errors import ConfigError, HttpError, ModelNotFoundError, StreamScoreError
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.serving import v2
from pipeline.serving.admin import AdminRoutes
from pipeline.serving.auth import BearerAuth
from pipeline.serving.canary import CanaryTraffic, Routed, plan
from pipeline.serving.config import ServeConfig
from pipeline.serving.control import ControlView
from pipeline.serving.grpc_v2 import GrpcMethods
from pipeline.serving.health import HealthRoutes
from pipeline.serving.http_body import BodyReader, request_timeout_s
from pipeline.serving.metrics import GatewayMetrics, guard_metrics, push_forever, render
from pipeline.serving.poison import PoisonMemory
from pipeline.serving.request_limits import check_request_images
from pipeline.serving.routes import Routes, version_of
from pipeline.serving.routing import RoutingPolicy
from pipeline.serving.scorer import GraphCache, LocalScorer, ModelScorer, RemoteScorer, Scored, ScorerClient

logger = logging.getLogger(__name__)
Handler = Callable[[Routed, Request], Awaitable[JSONResponse]]
Answer = TypeVar("Answer")


@serve.deployment
class Gateway(AdminRoutes, HealthRoutes, GrpcMethods):
    def __init__(
        self, config: ServeConfig, scorer: Any | None, control: Any, metrics_hub: Any, warm: list[ModelRef]
    ) -> None:
        """``scorer``: the Scorer deployment's handle, or None to score in this replica (fused topology).
        ``warm``: the routed versions, loaded before this replica takes traffic."""
        self._config = config
        self._repository = ModelRepository(config.models_dir, listing_ttl_s=1.0)
        self._graphs = GraphCache(config, "preprocess")
        self._bodies = BodyReader(config.body_limits(), config.max_concurrent_body_reads)
        self._auth = BearerAuth(config.admin_token)
        self._poison = PoisonMemory.for_config(config)
        # Its own bounded pool (not asyncio's default, sized by the machine's cores): what bounds decode memory.
        self._decoders = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="streamscore-decode")
        local = LocalScorer(ModelScorer(config, warm), (config.max_batch_size or 1) > 1) if scorer is None else None
        self._scorer: ScorerClient = local or RemoteScorer(scorer)
        self._inline = local.inline if local else None  # fused without batches: scored in the decoding thread
        self._rng = random.Random()
        self._metrics, self._metrics_hub, self._replica = GatewayMetrics(), metrics_hub, uuid.uuid4().hex
        self._pusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: set[ModelRef] = set()
        self._control = control
        self._view = ControlView(control, config.routing)
        self._shadow_decoder = ThreadPoolExecutor(1, thread_name_prefix="streamscore-shadow")
        self._canary = CanaryTraffic(
            control,
            self._metrics,
            self._shadow_score,
            config.max_shadow_requests,
            config.max_shadow_bytes,
            config.request_timeout_s,
        )
        for model, policy in config.routing.items():  # a policy naming a missing version fails the deploy
            if missing := self._missing_versions(model, policy):
                raise ConfigError(f"routing for {model!r} names versions {missing} not in the repository")
        for ref in warm:
            self._graphs.get(ref)
        # No /docs, /redoc or /openapi.json: the API is the V2 protocol and /predict, documented in the README.
        self._routes = Routes()
        for method, path, endpoint in [
            ("GET", "/v2", self.server_metadata),
            ("GET", "/v2/health/live", self.live),
            ("GET", "/v2/health/ready", self.ready),
            ("GET", "/v2/models/{name}", self.metadata),
            ("GET", "/v2/models/{name}/versions/{version}", self.metadata),
            ("GET", "/v2/models/{name}/ready", self.model_ready),
            ("GET", "/v2/models/{name}/versions/{version}/ready", self.model_ready),
            ("GET", "/metrics", self.metrics),
            ("POST", "/v2/models/{name}/infer", self.infer),
            ("POST", "/v2/models/{name}/versions/{version}/infer", self.infer),
            ("POST", "/predict/{name}", self.predict),
            ("POST", "/admin/models/{name}/versions/{version}/load", self.admin_load),
            ("DELETE", "/admin/models/{name}/versions/{version}", self.admin_retire),
            ("POST", "/admin/models/{name}/versions/{version}/release", self.admin_release),
            ("GET", "/admin/models/{name}/routing", self.admin_get_routing),
            ("PUT", "/admin/models/{name}/routing", self.admin_put_routing),
        ]:
            self._routes.add(method, path, endpoint)

    async def __call__(self, request: Request) -> Response:
        """Every HTTP request to the app."""
        return await self._routes.answer(request)

    async def metrics(self, _: Request) -> Response:
        """The whole app's counts (every gateway replica's), in the Prometheus text format."""
        self._start_pushing_metrics()
        await self._metrics_hub.push.remote(self._replica, self._metrics.snapshot())
        snapshot = self._snapshot
        guards = guard_metrics(
            snapshot.routing,
            [(r.name, str(r.version)) for r in snapshot.halted],
            {(r.name, str(r.version)): n for r, n in snapshot.rollbacks.items()},
        )
        body = await self._metrics_hub.render.remote() + render(guards)
        return Response(body, media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ scoring
    async def infer(self, request: Request) -> JSONResponse:
        return await self._observed_http("infer", request, self._infer)

    async def _infer(self, routed: Routed, request: Request) -> JSONResponse:
        body = await self._bodies.body(request)
        header_length = request.headers.get("inference-header-content-length")
        if header_length is not None and not header_length.isdigit():
            raise HttpError(400, f"Inference-Header-Content-Length must be a number of bytes, got {header_length!r}")
        try:
            parsed = v2.parse_infer_request(body, int(header_length) if header_length else None)
        except v2.BadRequest as exc:
            raise HttpError(400, str(exc)) from None
        labels = [f"image {i}" for i in range(len(parsed.images))]
        table = await self._score(routed, parsed.images, labels, request.headers)
        return self._answer(v2.infer_response(table, parsed.request_id), routed.served)

    async def predict(self, request: Request) -> JSONResponse:
        """A raw image body, or a multipart upload of one or more files; JSON with label, score and top-k."""
        return await self._observed_http("predict", request, self._predict)

    async def _predict(self, routed: Routed, request: Request) -> JSONResponse:
        files = await self._bodies.files(request)
        table = await self._score(routed, [data for _, data in files], [f for f, _ in files], request.headers)
        ref = routed.served
        # The row's answer as in a batch row: label, score and top-k (raw_output when kept), or the embedding.
        answer = [c for c in table.column_names if c not in ("id", "model", "model_version", "error", "error_reason")]
        predictions = [
            {"file": filename} | {c: r[c] for c in answer}
            for (filename, _), r in zip(files, table.to_pylist(), strict=True)
        ]
        return self._answer({"model": ref.name, "model_version": ref.version, "predictions": predictions}, ref)

    # ------------------------------------------------------------------ helpers
    def _missing_versions(self, name: str, policy: RoutingPolicy) -> list[str]:
        return sorted(policy.named_versions() - set(self._repository.versions(name, fresh=True)))

    async def _observed_http(self, endpoint: str, request: Request, handler: Handler) -> JSONResponse:
        name, version = request.path_params["name"], version_of(request)
        return await self._observed(endpoint, name, version, request.headers, lambda routed: handler(routed, request))

    async def _observed(
        self,
        endpoint: str,
        name: str,
        version: str | None,
        headers: Mapping[str, str],
        handler: Callable[[Routed], Awaitable[Answer]],
    ) -> Answer:
        """Route, run ``handler(routed)`` and record the outcome (its HTTP status, or the one a gRPC code stands
        for) and latency."""
        self._start_pushing_metrics()
        start, routed, status = time.perf_counter(), None, 500
        try:
            routed = await self._route(name, version, headers)
            response = await handler(routed)
            status = getattr(response, "status_code", 200)
            return response
        except StarletteHTTPException as exc:  # e.g. a malformed multipart body
            status = exc.status_code
            raise
        except HttpError as exc:
            status = exc.status
            if routed is not None:  # a request refused after routing still names the version it went to
                exc.headers.setdefault("X-Model-Version", str(routed.served.version))
            raise
        except RayServeException:  # a deployment of the app being replaced: ``Routes.answer`` says 503
            status = 503
            raise
        finally:
            # A name that resolved to no version is not a model: one label for all of them keeps /metrics bounded.
            served = routed.served if routed is not None else None
            model, resolved = (served.name, str(served.version)) if served is not None else ("unknown", "none")
            elapsed_s = time.perf_counter() - start
            self._metrics.observe(model, resolved, endpoint, status, elapsed_s)
            if routed is not None:
                self._canary.finished(routed, status, elapsed_s)

    def _start_pushing_metrics(self) -> None:
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(
                push_forever(self._metrics_hub, self._replica, self._metrics)
            )

    async def _route(self, name: str, version: str | None, headers: Mapping[str, str]) -> Routed:
        """An explicit version always wins; otherwise the model's routing policy picks (the default version if none)
        from the request's headers (gRPC: its metadata), with a fallback and a shadow where it says so."""
        await self._view.refresh()
        snapshot = self._snapshot
        policy = snapshot.routing.get(name)
        chosen_by_policy = version is None and policy is not None
        if version is None and policy is not None:
            version = policy.choose(headers, self._rng)
        ref = self._resolve(name, version)
        state = snapshot.state_of(ref)
        if not state.routable:
            raise HttpError(
                404, f"version {ref.version} of {name!r} is {state.state}" + (f": {state.error}" if state.error else "")
            )
        return plan(snapshot, ref, chosen_by_policy, self._rng)

    def _resolve(self, name: str, version: str | None) -> ModelRef:
        """The version ``version`` of ``name`` (its default for None); 404 when there is none."""
        try:
            ref = ModelRef(name=name, version=version)
            return ref.at(self._repository.resolve_version(ref.name, ref.version))
        except (ModelNotFoundError, ConfigError) as exc:  # no such model or version, or an unsafe name
            raise HttpError(404, str(exc)) from None
        except StreamScoreError as exc:  # the repository's own state (a damaged default pointer): ours to mend
            raise HttpError(503, str(exc)) from None

    async def _score(self, routed: Routed, images: list[bytes], labels: list[str], headers: Mapping[str, str]) -> Any:
        """Preprocess and score within the request's time limit. Full queues answer 503 with ``Retry-After``. A
        guarded canary that cannot answer hands the request to the stable version (``canary.py``)."""
        timeout = request_timeout_s(headers, self._config.request_timeout_s)
        ref, spent = routed.ref, list[float]()
        try:
            async with asyncio.timeout(timeout):  # a scope, not wait_for: no task of its own per request
                try:
                    table = await self._score_or_refuse(ref, images, labels, spent)
                except HttpError as exc:
                    routed.service_s = sum(spent)
                    if routed.fallback is None:
                        raise
                    ref = routed.fallback
                    table = await self._score_or_refuse(ref, images, labels)  # its refusal, if any, is the answer
                    routed.failed_over = True
                    logger.info("canary %s failed a request that %s answered: %s", routed.ref, ref, exc.message)
                else:
                    routed.service_s = sum(spent)
                routed.answered, routed.images, routed.table = ref, images, table
                return table
        except TimeoutError:
            raise HttpError(504, f"not scored within {timeout:g} s") from None
        except BackPressureError:
            routed.shed = True  # the app's load, not the version's doing
            raise HttpError(503, "the scoring queues are full; retry shortly", {"Retry-After": "1"}) from None

    async def _score_or_refuse(
        self, ref: ModelRef, images: list[bytes], labels: list[str], spent: list[float] | None = None
    ) -> Any:
        try:
            return await self._score_now(ref, images, labels, spent)
        except RayError as exc:  # a scorer replica died mid-request: the server's fault, said so
            logger.warning("scoring %s failed: %s", ref, exc)
            raise HttpError(
                503, f"version {ref.version} of {ref.name!r} could not score: {type(exc).__name__}"
            ) from None

    async def _shadow_score(self, ref: ModelRef, images: list[bytes]) -> Any:
        """``ref``'s table for ``images``, for a comparison only: preprocessed in the shadow's own thread, so
        clients' decoders are never taken; raises on any error (the shadow queue counts it)."""
        stop = threading.Event()
        stage = (await asyncio.to_thread(self._graphs.get, ref))[1]
        loop = asyncio.get_running_loop()
        pixels, errors = await loop.run_in_executor(self._shadow_decoder, self._poison.preprocess, stage, images, stop)
        if any(e is not None for e in errors):
            raise StreamScoreError("; ".join(str(e) for e in errors if e is not None))
        # Never through the batches clients' requests share: a client would wait for the shadow's inference.
        if self._inline is not None:
            scored = await loop.run_in_executor(self._shadow_decoder, self._inline.score_now, ref, pixels)
        else:
            scored = await self._scorer.score_alone(ref, pixels)
        if scored.error is not None:
            raise StreamScoreError(scored.error)
        return scored.table

    async def _score_now(
        self, ref: ModelRef, images: list[bytes], labels: list[str], spent: list[float] | None = None
    ) -> Any:
        """Preprocess, then score; any image that cannot be scored fails the request with its reason (400).
        ``spent`` gets the seconds the version's own work took (preprocessing, inference), without waits."""
        spent = spent if spent is not None else []
        stop = threading.Event()  # set when the request is given up (504): its images not yet begun are skipped
        try:
            loop = asyncio.get_running_loop()
            pixels, errors, scored = await loop.run_in_executor(self._decoders, self._work, ref, images, stop, spent)
        except HttpError:  # a refusal of this request (its limits, a known poison image): answered as it is
            raise
        except StreamScoreError as exc:  # the version's files cannot be loaded here
            raise HttpError(503, f"version {ref.version} of {ref.name!r} cannot be loaded: {exc}") from None
        finally:
            stop.set()
        bad = [f"{label}: {e}" for label, e in zip(labels, errors, strict=True) if e is not None]
        if bad:
            raise HttpError(400, "; ".join(bad))
        if scored is None:
            scored = await self._scorer.score(ref, pixels)
            spent.append(scored.seconds)
        if scored.error is not None:
            raise HttpError(503, f"version {ref.version} of {ref.name!r} could not score: {scored.error}")
        self._metrics.images.labels(ref.name, ref.version).inc(len(images))
        self._metrics.batch_size.labels(ref.name, ref.version).observe(scored.batch_requests)
        return scored.table

    def _work(
        self, ref: ModelRef, images: list[bytes], stop: threading.Event, spent: list[float]
    ) -> tuple[np.ndarray, list[str | None], Scored | None]:
        """A request's work in one decoder thread: encoded images -> uint8 pixels ``(N, H, W, C)`` and a
        per-image error (or None); with inline scoring and no errors, also the scores (else None). Its time
        goes into ``spent``."""
        stage = self._graphs.get(ref)[1]  # a first load is not the version's time on the request: not timed
        start = time.perf_counter()
        try:
            check_request_images(images, self._config)  # header parsing: CPU work, kept off the event loop
            pixels, errors = self._poison.preprocess(stage, images, stop)
            if self._inline is None or any(e is not None for e in errors) or stop.is_set():
                return pixels, errors, None
            return pixels, errors, self._inline.score_now(ref, pixels)
        finally:
            spent.append(time.perf_counter() - start)

    @staticmethod
    def _answer(body: dict[str, Any], ref: ModelRef) -> JSONResponse:
        return JSONResponse(body, headers={"X-Model-Version": str(ref.version)})
