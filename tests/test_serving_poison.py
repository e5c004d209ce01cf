"""A request whose image kills its replica, in each layout: it fails alone, the replica is replaced, and the node
refuses the image from then on (``pipeline/serving/poison.py``)."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from tests.serving import request_json


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _answered_200(url: str, body: bytes) -> bool:
    """One try of a request that may race a replica's death: a 5xx or a closed connection is a failed try."""
    try:
        return _post(url, body)[0] == 200
    except ConnectionError:
        return False


def test_a_request_that_kills_its_replica_fails_alone_and_the_replica_is_replaced(
    server: str, topology: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A second app whose model has the test-only crash step: the request whose image SIGKILLs its gateway
    replica fails (the replica is gone), the other replica answers everything after it, Serve replaces the dead
    one, and the same image sent again gets 422 with the reason."""
    from ray import serve

    from pipeline.serving.app import build_app
    from pipeline.serving.config import ServeConfig
    from tests.conftest import wait_for
    from tests.crash_operator import KILL_GREY, crashing_repository

    def png(grey: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 32), grey, dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    def replicas_running() -> dict:
        return dict(serve.status().applications["poison"].deployments["Gateway"].replica_states)

    repository = crashing_repository(tmp_path / "models")
    # In this run's layout: split decodes in the gateway replicas too, beside a separate scorer.
    config = ServeConfig(
        models_dir=repository.root,
        topology=topology,
        replicas=2,
        scorer_replicas=1 if topology == "split" else None,
        preprocess_cpus=0.1,
        scorer_cpus=0.1,
    )
    serve.run(build_app(config), name="poison", route_prefix="/poison")
    url = f"{server}/poison/predict/digits"
    try:
        assert _post(url, png(100))[0] == 200
        try:  # the proxy answers 500, or closes the connection (seen with both): no reason can reach the client
            status, body = _post(url, png(KILL_GREY))
        except ConnectionError as exc:
            status, body = 0, repr(exc).encode()
        assert status == 0 or 500 <= status < 600, (status, body)
        # A request racing the death (sent within milliseconds, seen once in about six runs) may still reach the
        # dying replica and fail; once one has succeeded, the surviving replica takes every request.
        wait_for(lambda: _answered_200(url, png(100)), 10, 0.05)
        assert [_post(url, png(100))[0] for _ in range(20)] == [200] * 20
        wait_for(lambda: replicas_running() == {"RUNNING": 2}, 120, 0.5)
        assert [_post(url, png(100))[0] for _ in range(10)] == [200] * 10
        # The node remembers the image: sent again, it is refused with the reason instead of killing another
        # replica (whichever replica takes it: the replacement and the survivor both know).
        for _ in range(4):
            status, body = _post(url, png(KILL_GREY))
            assert status == 422 and b"worker_crashed: this image killed the replica process" in body, body
        assert replicas_running() == {"RUNNING": 2}
        # The session's app never noticed: ready (once it has reloaded what earlier tests' versions evicted from
        # its cache: a replica loads what it lacks when asked).
        wait_for(lambda: request_json(f"{server}/v2/health/ready")[0] == 200, 60, 0.5)
    finally:
        serve.delete("poison")
