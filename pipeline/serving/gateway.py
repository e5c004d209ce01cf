"""The HTTP gateway: Open Inference Protocol (V2) routes and ``/predict`` for people, with clear 4xx errors.

It also preprocesses (decode, resize, crop: CPU work that scales with requests, like the HTTP parsing) and sends
uint8 pixels to the scorer, so a request makes one hop between deployments.

Every scoring response names the version that served it, in the body and in ``X-Model-Version``. Bodies over
``max_request_bytes`` are refused with 413 from ``Content-Length`` or while streaming, never read whole.
"""

import asyncio
import hmac
import inspect
import logging
import os
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from operators.base import ERROR, object_array
from pipeline.errors import ConfigError, StreamScoreError
from pipeline.models import ModelRepository, check_id
from pipeline.serving import v2
from pipeline.serving.app import GraphCache, ModelScorer, Scored, ServeConfig
from pipeline.serving.metrics import GatewayMetrics
from pipeline.serving.routing import RoutingPolicy

STATE_REFRESH_S = 0.5
logger = logging.getLogger(__name__)

http = FastAPI(title="StreamScore")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@http.exception_handler(HttpError)
async def _http_error(_: Request, exc: HttpError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


@http.exception_handler(StarletteHTTPException)
async def _starlette_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (bad multipart, unknown route) in our shape: ``{"error": ...}``."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@serve.deployment
@serve.ingress(http)
class Gateway:
    def __init__(self, config: ServeConfig, scorer: Any | None, control: Any) -> None:
        """``scorer``: the Scorer deployment's handle, or None to score in this replica (fused topology)."""
        self._config = config
        self._repository = ModelRepository(config.models_dir)
        self._graphs = GraphCache(config, "preprocess")
        self._scorer: Any = scorer
        self._local_scorer = ModelScorer(config) if scorer is None else None
        self._rng = random.Random()
        self._metrics = GatewayMetrics()
        self._control = control
        self._admin_token = os.environ.get("STREAMSCORE_ADMIN_TOKEN") or config.admin_token
        self._routing: dict[str, RoutingPolicy] = dict(config.routing)
        self._states: dict[str, dict[str, Any]] = {}
        self._state_time = 0.0
        for model, policy in config.routing.items():  # a policy naming a missing version fails the deploy
            if missing := self._missing_versions(model, policy):
                raise ConfigError(f"routing for {model!r} names versions {missing} not in the repository")

    # ------------------------------------------------------------------ health and metadata
    @http.get("/v2")
    def server_metadata(self) -> dict[str, Any]:
        """V2 server metadata (``tritonclient``'s ``get_server_metadata``)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("streamscore")
        except PackageNotFoundError:  # run from a source tree that was never installed
            release = "unknown"
        return {"name": "streamscore", "version": release, "extensions": ["binary_tensor_data"]}

    @http.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @http.get("/v2/health/ready")
    def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @http.get("/v2/models/{name}")
    @http.get("/v2/models/{name}/versions/{version}")
    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        resolved = self._resolve(name, version)
        versions = [resolved] if version else self._repository.versions(name)
        return v2.model_metadata(name, versions, self._config.top_k)

    @http.get("/v2/models/{name}/ready")
    @http.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        return {"name": name, "version": self._resolve(name, version), "ready": True}

    @http.get("/metrics")
    def metrics(self) -> Response:
        return Response(self._metrics.render(), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ scoring
    @http.post("/v2/models/{name}/infer")
    @http.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(self, name: str, request: Request, version: str | None = None) -> JSONResponse:
        return await self._observed("infer", name, version, request, self._infer)

    async def _infer(self, name: str, resolved: str, request: Request) -> JSONResponse:
        body = await self._read_body(request)
        header_length = request.headers.get("inference-header-content-length")
        try:
            parsed = v2.parse_infer_request(body, int(header_length) if header_length else None)
        except (v2.BadRequest, ValueError) as exc:
            raise HttpError(400, str(exc)) from None
        labels = [f"image {i}" for i in range(len(parsed.images))]
        table = await self._score(name, resolved, parsed.images, labels, request)
        return self._answer(v2.infer_response(table, parsed.request_id), resolved)

    @http.post("/predict/{name}")
    async def predict(self, name: str, request: Request, version: str | None = None) -> JSONResponse:
        """A raw image body, or a multipart upload of one or more files; JSON with label, score and top-k."""
        return await self._observed("predict", name, version, request, self._predict)

    async def _predict(self, name: str, resolved: str, request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            # Read within the limit first: Starlette limits the size of fields, not of files (a chunked upload
            # without Content-Length would otherwise have no bound).
            body = await self._read_body(request)

            async def replay() -> AsyncGenerator[bytes, None]:
                yield body

            parser = MultiPartParser(request.headers, replay(), max_part_size=self._config.max_request_bytes)
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                raise HttpError(400, f"bad multipart upload: {exc.message}") from None
            files = [(str(getattr(f, "filename", "") or key), await f.read()) for key, f in form.multi_items()
                     if hasattr(f, "read")]  # fmt: skip
            if not files:
                raise HttpError(400, "multipart upload holds no files")
        else:
            files = [("image", await self._read_body(request))]
        table = await self._score(name, resolved, [data for _, data in files], [f for f, _ in files], request)
        rows = table.to_pylist()
        predictions = [
            {"file": filename, "label": r["label"], "score": r["score"], "top_k": r["top_k"]}
            for (filename, _), r in zip(files, rows, strict=True)
        ]
        return self._answer({"model": name, "model_version": resolved, "predictions": predictions}, resolved)

    # ------------------------------------------------------------------ helpers
    def _missing_versions(self, name: str, policy: RoutingPolicy) -> list[str]:
        return sorted(policy.versions() - set(self._repository.versions(name)))

    async def _observed(self, endpoint: str, name: str, version: str | None, request: Request, handler: Any) -> Any:
        """Route, run ``handler(name, resolved_version, request)`` and record the outcome and latency."""
        start, resolved, status = time.perf_counter(), "none", 500
        try:
            resolved = await self._route(name, version, request)
            response = await handler(name, resolved, request)
            status = response.status_code
            return response
        except StarletteHTTPException as exc:  # e.g. a malformed multipart body
            status = exc.status_code
            raise
        except HttpError as exc:
            status = exc.status
            if resolved != "none":  # a request refused after routing still names the version it went to
                exc.headers.setdefault("X-Model-Version", resolved)
            raise
        finally:
            # A name that resolved to no version is not a model: one label for all of them keeps /metrics bounded.
            model = name if resolved != "none" else "unknown"
            self._metrics.observe(model, resolved, endpoint, status, time.perf_counter() - start)

    async def _refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._state_time > STATE_REFRESH_S:
            _, self._routing, self._states = await self._control.snapshot.remote()
            self._state_time = time.monotonic()

    async def _route(self, name: str, version: str | None, request: Request) -> str:
        """An explicit version always wins; otherwise the model's routing policy picks (latest if none)."""
        await self._refresh()
        policy = self._routing.get(name)
        if version is None and policy is not None:
            version = policy.choose(request.headers, self._rng)
        resolved = self._resolve(name, version)
        state = self._states.get(f"{name}:{resolved}", {"state": "ready"})
        if state["state"] != "ready":
            raise HttpError(404, f"version {resolved} of {name!r} is {state['state']}" + (
                f": {state['error']}" if state.get("error") else ""))  # fmt: skip
        return resolved

    # ------------------------------------------------------------------ admin
    def _authorize(self, request: Request) -> None:
        if not self._admin_token:
            raise HttpError(403, "admin API disabled: set STREAMSCORE_ADMIN_TOKEN or admin_token in the config")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._admin_token}".encode()):
            raise HttpError(401, "admin API needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})

    @http.post("/admin/models/{name}/versions/{version}/load")
    async def admin_load(self, name: str, version: str, request: Request) -> JSONResponse:
        """Load and check a version (warm-up batch, finite outputs); only a passing version can take traffic."""
        self._authorize(request)
        self._resolve(name, version)
        ref = f"{name}:{version}"
        try:
            await self._check_version(ref)
        except Exception as exc:  # noqa: BLE001 - any failure of the new version is reported, never served
            message = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
            await self._control.set_state.remote(ref, "failed", message)
            await self._refresh(force=True)
            self._metrics.version_checks.labels(name, version, "failed").inc()
            return JSONResponse({"model": name, "version": version, "state": "failed", "error": message}, 422)
        await self._control.set_state.remote(ref, "ready")
        await self._refresh(force=True)
        self._metrics.version_checks.labels(name, version, "ok").inc()
        return JSONResponse({"model": name, "version": version, "state": "ready"})

    @http.delete("/admin/models/{name}/versions/{version}")
    async def admin_retire(self, name: str, version: str, request: Request) -> JSONResponse:
        self._authorize(request)
        self._resolve(name, version)
        try:
            await self._control.retire.remote(name, version)
        except ConfigError as exc:
            raise HttpError(409, str(exc)) from None
        await self._refresh(force=True)
        return JSONResponse({"model": name, "version": version, "state": "retired"})

    @http.get("/admin/models/{name}/routing")
    async def admin_get_routing(self, name: str, request: Request) -> JSONResponse:
        self._authorize(request)
        await self._refresh(force=True)
        policy = self._routing.get(name, RoutingPolicy())
        states = {ref.split(":", 1)[1]: s for ref, s in self._states.items() if ref.split(":", 1)[0] == name}
        loaded = await self._loaded_versions()
        held = [ref.split(":", 1)[1] for ref in loaded if ref.split(":", 1)[0] == name]
        return JSONResponse({"model": name, "routing": policy.model_dump(), "versions": states, "loaded": held})

    @http.put("/admin/models/{name}/routing")
    async def admin_put_routing(self, name: str, request: Request) -> JSONResponse:
        self._authorize(request)
        self._resolve(name, None)
        try:
            policy = RoutingPolicy.model_validate_json(await self._read_body(request))
        except ValueError as exc:
            raise HttpError(400, f"bad routing policy: {exc}") from None
        if missing := self._missing_versions(name, policy):
            raise HttpError(404, f"routing names versions {missing} that {name!r} does not have")
        try:
            await self._control.set_routing.remote(name, policy)
        except ConfigError as exc:
            raise HttpError(409, str(exc)) from None
        await self._refresh(force=True)
        return JSONResponse({"model": name, "routing": policy.model_dump()})

    def _resolve(self, name: str, version: str | None) -> str:
        try:
            check_id("name", name)
            if version is not None:
                check_id("version", version)
            return self._repository.resolve_version(name, version)
        except StreamScoreError as exc:
            raise HttpError(404, str(exc)) from None

    def _check_declared_length(self, request: Request) -> None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._config.max_request_bytes:
            raise HttpError(413, f"request body of {declared} bytes is over the {self._config.max_request_bytes} limit")

    async def _read_body(self, request: Request) -> bytes:
        self._check_declared_length(request)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._config.max_request_bytes:
                raise HttpError(413, f"request body is over the {self._config.max_request_bytes}-byte limit")
            chunks.append(chunk)
        if not size:
            raise HttpError(400, "empty request body: send an image")
        return b"".join(chunks)

    async def _score(self, name: str, version: str, images: list[bytes], labels: list[str], request: Request) -> Any:
        """Preprocess and score within the request's time limit: the config's ``request_timeout_s``, or less
        when the client asks with ``X-Request-Timeout-S``. Full queues answer 503 with ``Retry-After``."""
        timeout = self._config.request_timeout_s
        asked = request.headers.get("x-request-timeout-s")
        if asked:
            try:
                timeout = min(timeout, float(asked))
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise HttpError(400, f"X-Request-Timeout-S must be a positive number of seconds, got {asked!r}")
        try:
            return await asyncio.wait_for(self._score_now(name, version, images, labels), timeout)
        except TimeoutError:
            raise HttpError(504, f"not scored within {timeout:g} s") from None
        except BackPressureError:
            raise HttpError(503, "the scoring queues are full; retry shortly", {"Retry-After": "1"}) from None
        except HttpError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dead scorer replica, a storage error: the server's fault, said so
            logger.exception("scoring %s:%s failed", name, version)
            raise HttpError(503, f"version {version} of {name!r} could not score: {type(exc).__name__}") from None

    async def _score_now(self, name: str, version: str, images: list[bytes], labels: list[str]) -> Any:
        """Preprocess, then score; any image that cannot be scored fails the request with its reason (400)."""
        ref = f"{name}:{version}"
        try:
            pixels, errors = await asyncio.to_thread(self._preprocess, ref, images)
        except StreamScoreError as exc:  # the version's files cannot be loaded here
            raise HttpError(503, f"version {version} of {name!r} cannot be loaded: {exc}") from None
        bad = [f"{label}: {e}" for label, e in zip(labels, errors, strict=True) if e is not None]
        if bad:
            raise HttpError(400, "; ".join(bad))
        table, batch_requests, error = await self._score_pixels(ref, pixels)
        if error is not None:
            raise HttpError(503, f"version {version} of {name!r} could not score: {error}")
        self._metrics.images.labels(name, version).inc(len(images))
        self._metrics.batch_size.labels(name, version).observe(batch_requests)
        return table

    async def _score_pixels(self, model_ref: str, pixels: Any) -> Scored:
        return await self._call_scorer("score", model_ref, pixels)  # type: ignore[no-any-return]

    async def _loaded_versions(self) -> list[str]:
        """``name:version`` held by the scorer that answers (one replica's view; LRU, bounded)."""
        return list(await self._call_scorer("loaded"))

    async def _check_version(self, model_ref: str) -> None:
        await self._call_scorer("check", model_ref)

    async def _call_scorer(self, method: str, *args: Any) -> Any:
        """Call the Scorer deployment's ``method`` (split), or the one in this replica (fused: ``score`` is
        batched with this replica's other requests; the rest run in a worker thread)."""
        if self._local_scorer is None:
            return await getattr(self._scorer, method).remote(*args)
        local = getattr(self._local_scorer, method)
        if inspect.iscoroutinefunction(local):
            return await local(*args)
        return await asyncio.to_thread(local, *args)

    def _preprocess(self, model_ref: str, images: list[bytes]) -> tuple[Any, list[str | None]]:
        """Encoded images -> uint8 pixels ``(N, H, W, C)`` and a per-image error (or None)."""
        _, preprocess = self._graphs.get(model_ref)
        out = preprocess({"id": object_array([str(i) for i in range(len(images))]), "bytes": object_array(images)})
        return out["pixels"], list(out[ERROR])

    @staticmethod
    def _answer(body: dict[str, Any], version: str) -> JSONResponse:
        return JSONResponse(body, headers={"X-Model-Version": version})
