"""The gateway's route table: method and path template -> handler, matched with Starlette's own path matching.

The gateway is a plain Serve deployment whose ``__call__`` gets every request, not a FastAPI app: measured on
2 cores, the same endpoint on Serve answered 0.93x / 0.90x the requests/s of its FastAPI-free twin at 16 / 64
clients (``benchmarks/serving_peer_on_serve.py`` with and without ``--bare``), FastAPI's middleware stack,
routing and dependency solving taking about 30 % of a replica's event loop. Our handlers need none of it: they
read their path parameters and the request themselves and answer a Starlette response. (For the gateway
itself the gain was smaller than the machine's drift between runs: docs/performance.md.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from common.errors import HttpError

Endpoint = Callable[[Request], Awaitable[Response]]


class Routes:
    """Routes in the order added; ``{name}`` in a template matches one path segment (Starlette's syntax)."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, method: str, path: str, endpoint: Endpoint) -> None:
        self._routes.append(Route(path, endpoint, methods=[method]))  # only matched: we call ``endpoint`` ourselves

    async def answer(self, request: Request) -> Response:
        """The route's answer; a request refused (``HttpError``, or Starlette's own refusals) gets its status
        and ``{"error": ...}``, and one that found a deployment of the app unavailable 503 and ``Retry-After``."""
        try:
            return await self.endpoint_for(request)(request)
        except HttpError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        except StarletteHTTPException as exc:
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
        except RayServeException as exc:  # a deployment of the app (the control plane) being replaced: passing
            message = f"the app is replacing one of its parts; try again shortly ({type(exc).__name__})"
            return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})

    def endpoint_for(self, request: Request) -> Endpoint:
        """The endpoint for ``request``, its path parameters put in ``request.path_params``. 404 for a path no
        route has; 405 (with ``Allow``) for a path that routes have, for other methods."""
        allowed: set[str] = set()
        for route in self._routes:
            match, child = route.matches(request.scope)
            if match is Match.FULL:
                request.scope["path_params"] = child["path_params"]
                endpoint: Endpoint = route.endpoint
                return endpoint
            if match is Match.PARTIAL:  # the path, not the method
                allowed |= route.methods or set()
        if allowed:
            methods = ", ".join(sorted(allowed))
            raise HttpError(405, f"{request.method} is not allowed on {request.url.path}", {"Allow": methods})
        raise HttpError(404, f"no route {request.url.path}: see the README for the V2 and /predict routes")


def version_of(request: Request) -> str | None:
    """The version a request names: in its path (``/versions/{version}``), else ``?version=``, else none."""
    return request.path_params.get("version", request.query_params.get("version"))
