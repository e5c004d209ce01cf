"""The peer's own endpoint as a Ray Serve app: what Serve's HTTP path costs, with none of StreamScore in it.

    python -m benchmarks.serving_peer_on_serve --model-dir models/efficientnet-lite0/1 --port 8000 [--bare]

The same route and function as ``benchmarks/serving_peer.py`` (``score_image`` in Starlette's thread pool), one
replica per core (1 CPU each), behind the ingress ``streamscore serve`` uses (HAProxy, replicas taking HTTP
themselves, Serve's throughput-optimized mode; ``jobs/ingress.py``), on a local Ray instance without the
dashboard. Between the peer under uvicorn and this is Serve's own cost; between this and ``streamscore serve``
is ours. With ``--bare`` the same function runs from a plain ``__call__`` deployment (Serve hands it a Starlette
request: no FastAPI, no routing), the leanest HTTP endpoint Serve can host: Serve's floor. Runs until Ctrl-C.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations at run time, which Serve's
# class-based views cannot resolve from strings.
import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

REPO = Path(__file__).resolve().parent.parent
app = FastAPI()


async def _answer(score: Any, request: Request) -> JSONResponse:
    """The peer's endpoint: the body on the event loop, decoding and scoring in Starlette's thread pool.
    Defined above the deployments: run as ``__main__``, they are pickled by value as they are declared."""
    data = await request.body()
    try:
        return JSONResponse(await run_in_threadpool(score, data))
    except (OSError, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


class _Peer:
    """Holds the peer's scoring function, loaded for ``model_dir`` in the replica."""

    def __init__(self, model_dir: str) -> None:
        os.environ["STREAMSCORE_PEER_MODEL_DIR"] = model_dir
        from benchmarks import serving_peer

        self._score = serving_peer.score_image


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class PeerOnServe(_Peer):
    @app.post("/predict/{model}")
    async def predict(self, model: str, request: Request) -> JSONResponse:
        return await _answer(self._score, request)


@serve.deployment(max_ongoing_requests=64)
class BarePeerOnServe(_Peer):
    """The same endpoint without FastAPI: every request to the app, whatever its path, scores its body."""

    async def __call__(self, request: Request) -> JSONResponse:
        return await _answer(self._score, request)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bare", action="store_true", help="a plain __call__ deployment instead of FastAPI")
    args = parser.parse_args(argv)
    import ray

    from jobs.ingress import use_fast_ingress

    use_fast_ingress()
    cpus = os.cpu_count() or 1
    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO)}}  # the replicas import this module
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    chosen: Any = BarePeerOnServe if args.bare else PeerOnServe  # Serve Deployments, untyped by Ray's stubs
    deployment = chosen.options(num_replicas=cpus, ray_actor_options={"num_cpus": 1})
    serve.run(deployment.bind(str(Path(args.model_dir).resolve())), name="peer", route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
