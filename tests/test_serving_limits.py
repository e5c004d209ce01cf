"""The Serve app's server-side limits over real HTTP on 127.0.0.1: ``request_timeout_s`` (504, and the replica
keeps answering), ``max_concurrent_body_reads`` (bodies past the cap wait their turn, then 503), and the admin
routes of an app deployed without a token (403).

One app with small limits serves every test here (a Serve app costs 20-40 s to start on 2 cores): one fused
gateway replica over ``digits`` and ``digits-slow``, whose own step sleeps 3 s per image (``tests/crash_operator.py``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import MODELS_DIR, wait_for
from tests.crash_operator import digits_with_step
from tests.serving import request_json

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
SLOW_S = 3.0  # per image of digits-slow: past the request limit


@pytest.fixture(scope="module")
def limited_app(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import shutil

    from ray import serve

    from jobs.ingress import free_app_port
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig

    root = tmp_path_factory.mktemp("limits-models")
    shutil.copytree(MODELS_DIR / "digits" / "1", root / "digits" / "1")
    digits_with_step(root, "sleep_per_row", model="digits-slow", seconds_per_row=SLOW_S)
    config = ServeConfig(
        models_dir=str(root),
        topology="fused",
        replicas=1,
        preprocess_cpus=0.25,
        scorer_cpus=0.25,
        request_timeout_s=REQUEST_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        min_body_bytes_per_s=1.0,  # a slow client holds its body slot until body_timeout_s
        max_concurrent_body_reads=1,
        admin_token=None,
    )
    port = free_app_port()
    deploy(config, "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: request_json(f"{base}/v2/health/ready")[0] == 200, 60, 0.2)
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def digit(digit_files) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    path, label = digit_files[0]
    return path.read_bytes(), str(label)


def test_a_request_past_request_timeout_s_gets_504_and_the_replica_keeps_answering(limited_app: str, digit) -> None:  # type: ignore[no-untyped-def]
    from ray import serve

    image, label = digit
    start = time.monotonic()
    status, headers, body = request_json(f"{limited_app}/predict/digits-slow", image)
    took = time.monotonic() - start
    assert (status, body) == (504, {"error": f"not scored within {REQUEST_TIMEOUT_S:g} s"})
    assert headers["X-Model-Version"] == "1"
    assert REQUEST_TIMEOUT_S <= took < SLOW_S, took  # answered at the limit, not when the work ended

    # The client may ask for less (X-Request-Timeout-S), never for more.
    status, _, body = request_json(f"{limited_app}/predict/digits-slow", image, {"X-Request-Timeout-S": "0.5"})
    assert (status, body) == (504, {"error": "not scored within 0.5 s"})
    status, _, body = request_json(f"{limited_app}/predict/digits-slow", image, {"X-Request-Timeout-S": "60"})
    assert (status, body) == (504, {"error": f"not scored within {REQUEST_TIMEOUT_S:g} s"})

    # The replica that gave up on them goes on answering, while their images still sleep in its decoder threads.
    status, _, body = request_json(f"{limited_app}/predict/digits", image)
    assert status == 200 and body["predictions"][0]["label"] == label, body
    assert request_json(f"{limited_app}/v2/health/ready")[0] == 200
    gateway = serve.status().applications["streamscore"].deployments["Gateway"]
    assert gateway.status == "HEALTHY" and gateway.replica_states == {"RUNNING": 1}


def test_admin_routes_answer_403_when_the_app_has_no_token(limited_app: str) -> None:
    disabled = {"error": "admin API disabled: set STREAMSCORE_ADMIN_TOKEN or admin_token in the config"}
    calls = [
        ("GET", "/admin/models/digits/routing", None),
        ("PUT", "/admin/models/digits/routing", b'{"weights": {"1": 100}}'),
        ("POST", "/admin/models/digits/versions/1/load", b""),
        ("DELETE", "/admin/models/digits/versions/1", None),
    ]
    for method, path, data in calls:
        for headers in ({}, {"Authorization": "Bearer anything"}):  # no token is right when none is set
            status, _, body = request_json(f"{limited_app}{path}", data, headers, method)
            assert (status, body) == (403, disabled), (method, path, headers)
    status, _, body = request_json(f"{limited_app}/v2/models/digits/versions/1/ready")
    assert (status, body["state"]) == (200, "ready")  # not retired


def _start_slow_upload(base: str, sent: int) -> socket.socket:
    """A client that sends its headers and ``sent`` of the 1,000 body bytes it announces, then nothing."""
    host, port = base.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST /predict/digits HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    client.sendall(head.encode() + b"x" * sent)
    return client


def _answer_of(client: socket.socket) -> tuple[int, bytes]:
    """The status and body of the response (read to its Content-Length: the upload never finished, so the
    connection may stay open)."""
    with client:
        data = b""
        while b"\r\n\r\n" not in data:
            data += client.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
        length = int({k.strip().lower(): v for k, v in fields.items()}[b"content-length"])
        while len(body) < length:
            body += client.recv(4096)
    return int(head.split(b" ", 2)[1]), body


def test_bodies_past_max_concurrent_body_reads_wait_their_turn_then_get_503(limited_app: str, digit) -> None:  # type: ignore[no-untyped-def]
    """One slot. A stalled upload holds it for the 1 s grace (408, too slow); a second, that sent 10 bytes (1 byte/s
    is the minimum here), takes it next and holds it for body_timeout_s (408). A good request behind them cannot
    get the slot within body_timeout_s: 503 with Retry-After. Once the slot is free it is answered."""
    image, _ = digit

    def live() -> bool:  # a round trip through the ingress: what was sent before it has reached the replica
        return request_json(f"{limited_app}/v2/health/live")[0] == 200

    stalled = _start_slow_upload(limited_app, 0)
    wait_for(live, 10)
    trickling = _start_slow_upload(limited_app, 10)
    wait_for(live, 10)
    answer: dict[str, object] = {}

    def good() -> None:
        start = time.monotonic()
        answer["status"], answer["headers"], answer["body"] = request_json(f"{limited_app}/predict/digits", image)
        answer["took"] = time.monotonic() - start

    waiting = threading.Thread(target=good)
    waiting.start()
    waiting.join(timeout=30)
    assert (answer["status"], answer["body"]) == (503, {"error": "too many uploads in progress; retry shortly"})
    assert answer["headers"]["Retry-After"] == "1"  # type: ignore[index]
    assert BODY_TIMEOUT_S <= answer["took"] < 1.5 * BODY_TIMEOUT_S, answer["took"]  # type: ignore[operator]
    status, body = _answer_of(stalled)
    assert status == 408 and b"arrives too slowly: 0 bytes in 1.0 s" in body, body
    status, body = _answer_of(trickling)
    assert status == 408 and f"did not arrive within {BODY_TIMEOUT_S:g} s".encode() in body, body
    status, _, body = request_json(f"{limited_app}/predict/digits", image)
    assert status == 200, body
