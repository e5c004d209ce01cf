"""Versions in the Serve app: routing, hot updates under load, the admin API and CLI, full queues, the config
file."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.serving import ADMIN_TOKEN, MODEL, request_json

pytestmark = pytest.mark.slow


def test_routing_weights_rules_sticky_and_explicit_versions(server: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    image = digit_files[0][0].read_bytes()

    def version(path: str = "/predict/digits", headers: dict[str, str] | None = None) -> str:
        status, response_headers, body = request_json(f"{server}{path}", image, headers)
        assert status == 200, body
        assert response_headers.get("X-Model-Version") == body["model_version"]
        return body["model_version"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        split = list(pool.map(lambda _: version(), range(300)))
    share = split.count("1") / len(split)
    # 80% expected; 4 standard deviations of a binomial(300, 0.8) is 0.092.
    assert abs(share - 0.8) < 0.092, share
    assert split.count("3") == 0 and split.count("1") + split.count("2") == 300
    assert {version(headers={"X-Region": "cn"}) for _ in range(20)} == {"2"}
    assert version("/predict/digits?version=3") == "3"  # an explicit version always wins
    for user in ("ana", "bo", "chen"):
        assert len({version(headers={"X-User": user}) for _ in range(8)}) == 1


def test_a_version_added_while_serving_takes_no_traffic_until_routed(  # type: ignore[no-untyped-def]
    server: str, served_repository: Path, photo_jpegs
) -> None:
    """The latest version at deploy time is pinned; a new folder in the repository is reachable only by name."""
    root = served_repository
    shutil.copytree(root / MODEL / "1", root / MODEL / "7")
    manifest = json.loads((root / MODEL / "7" / "manifest.json").read_text())
    (root / MODEL / "7" / "manifest.json").write_text(json.dumps(manifest | {"version": "7"}))
    try:
        versions = {
            request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[2]["model_version"] for _ in range(8)
        }
        assert versions == {"1"}
        assert request_json(f"{server}/predict/{MODEL}?version=7", photo_jpegs["coffee"])[2]["model_version"] == "7"
    finally:
        shutil.rmtree(root / MODEL / "7")


def test_a_version_that_cannot_load_fails_only_its_own_requests(server: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    """Version 4 of digits is a broken upload that no check has refused yet: asking for it by name gets 503 with
    the reason, and requests for a good version sent at the same moment still succeed."""
    image = digit_files[0][0].read_bytes()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        broken = [pool.submit(request_json, f"{server}/predict/digits?version=4", image) for _ in range(4)]
        good = [pool.submit(request_json, f"{server}/predict/digits?version=1", image) for _ in range(12)]
        for future in broken:
            status, _, body = future.result()
            assert status == 503 and "version 4 of 'digits'" in body["error"], body
        assert [f.result()[0] for f in good] == [200] * 12


def test_hot_updates_under_load_fail_no_request(server: str, grpc_target: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    """Add a version, shift weights, refuse a broken version, roll back and retire, all while 12 HTTP and 4 gRPC
    clients keep scoring: every request succeeds, and the broken version never takes traffic."""
    import threading

    import grpc
    from open_inference.grpc import protocol as pb
    from open_inference.grpc.service import GRPCInferenceServiceStub

    from pipeline.serving.app import APP_NAME

    image = digit_files[0][0].read_bytes()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def call(method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, answer = request_json(f"{server}{path}", data, headers if headers is not None else admin, method)
        return status, answer

    assert call("GET", "/admin/models/digits/routing", headers={})[0] == 401
    assert call("GET", "/admin/models/digits/routing", headers={"Authorization": "Bearer wrong"})[0] == 401

    stop, outcomes = threading.Event(), []

    def client() -> None:
        while not stop.is_set():
            status, headers, body = request_json(f"{server}/predict/digits", image)
            outcomes.append((status, headers.get("X-Model-Version")))

    stub = GRPCInferenceServiceStub(grpc.insecure_channel(grpc_target))
    contents = pb.InferTensorContents(bytes_contents=[image])
    tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1], contents=contents)

    def grpc_client() -> None:
        while not stop.is_set():
            try:
                request = pb.ModelInferRequest(model_name="digits", inputs=[tensor])
                answer = stub.ModelInfer(request, timeout=60, metadata=(("application", APP_NAME),))
                outcomes.append((200, answer.model_version))
                grpc_outcomes.append(answer.model_version)
            except grpc.RpcError as error:
                outcomes.append((error.code(), None))

    grpc_outcomes: list[str] = []
    clients = [threading.Thread(target=client) for _ in range(12)] + [
        threading.Thread(target=grpc_client) for _ in range(4)
    ]
    for thread in clients:
        thread.start()
    try:
        assert call("POST", "/admin/models/digits/versions/3/load") == (
            200,
            {"model": "digits", "version": "3", "state": "ready"},
        )
        assert call("PUT", "/admin/models/digits/routing", {"weights": {"1": 50, "3": 50}})[0] == 200
        status, body = call("POST", "/admin/models/digits/versions/4/load")
        assert status == 422 and body["state"] == "failed" and body["error"]
        status, body = call("PUT", "/admin/models/digits/routing", {"weights": {"4": 100}})
        assert status == 409 and "cannot take traffic" in body["error"]
        status, body = call("GET", "/admin/models/digits/routing")
        assert body["routing"]["weights"] == {"1": 50, "3": 50} and body["versions"]["4"]["state"] == "failed"
        assert "4" not in body["loaded"]
        # "loaded" is the answering replica's; the one that did not run the load takes 3 up with its traffic.
        wait_for(lambda: "3" in call("GET", "/admin/models/digits/routing")[1]["loaded"], 30, 0.1)
        assert call("DELETE", "/admin/models/digits/versions/3")[0] == 409  # still routed to
        assert call("PUT", "/admin/models/digits/routing", {"weights": {"1": 100}})[0] == 200  # roll back
        assert call("DELETE", "/admin/models/digits/versions/3")[0] == 200
        while len(outcomes) < 200:
            stop.wait(0.1)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert [s for s, _ in outcomes if s != 200] == []
    assert len(grpc_outcomes) >= 20 and set(grpc_outcomes) <= {"1", "2", "3"}
    served = {v for _, v in outcomes}
    assert "3" in served and "4" not in served and served <= {"1", "2", "3"}

    # Retired, on every gateway replica within the 0.5 s they take to see a change (two replicas here).
    def retired_everywhere() -> bool:
        return [request_json(f"{server}/predict/digits?version=3", image)[0] for _ in range(6)] == [404] * 6

    wait_for(retired_everywhere, 10, 0.1)
    assert request_json(f"{server}/predict/digits?version=4", image)[0] == 404  # failed its check
    # V2 readiness says the same, whichever gateway replica answers. The app is ready again once the routed
    # versions are loaded (the versions cache may have let one go for versions loaded meanwhile).
    # Each gateway replica loads what it lacks when asked, so ask until several answers in a row (both replicas)
    # say ready.
    wait_for(lambda: all(request_json(f"{server}/v2/health/ready")[0] == 200 for _ in range(6)), 60, 0.5)
    for _ in range(4):
        status, _, body = request_json(f"{server}/v2/models/digits/versions/4/ready")
        assert (status, body["ready"], body["state"]) == (400, False, "failed") and body["error"], body
        status, _, body = request_json(f"{server}/v2/models/digits/versions/3/ready")
        assert (status, body["ready"], body["state"]) == (400, False, "retired"), body
        assert request_json(f"{server}/v2/health/ready")[0] == 200


def test_admin_cli_wraps_the_api(server: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from jobs.cli import main

    assert main(["admin", "--url", server, "--token", ADMIN_TOKEN, "load", "digits", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "ready"
    policy = '{"weights": {"1": 90, "2": 10}}'
    assert main(["admin", "--url", server, "--token", ADMIN_TOKEN, "routing", "digits", "--set", policy]) == 0
    capsys.readouterr()
    assert main(["admin", "--url", server, "--token", ADMIN_TOKEN, "routing", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["routing"]["weights"] == {"1": 90.0, "2": 10.0}
    assert main(["admin", "--url", server, "--token", "wrong", "retire", "digits", "2"]) == 1

    # The hub sums what each replica last pushed (every PUSH_INTERVAL_S when changed): the counts of the replica
    # that did not answer this scrape arrive within that time.
    wanted = [
        'streamscore_version_checks_total{model="digits",outcome="failed",version="4"} 1.0',
        'streamscore_version_checks_total{model="digits",outcome="ok",version="2"} 1.0',
    ]

    def scrape() -> str:
        with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
            return str(response.read().decode())

    wait_for(lambda: all(line in scrape() for line in wanted), 15, 0.5)


def test_full_queues_answer_503_with_retry_after(server: str, topology: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """A second app (this run's layout) that takes one request at a time and queues one more: a burst gets
    503 + Retry-After for the rest instead of queueing without bound, and the app serves again afterwards."""
    from ray import serve

    from pipeline.serving.app import build_app
    from pipeline.serving.config import ServeConfig

    config = ServeConfig(
        models_dir=repository.root,
        topology=topology,
        replicas=1,
        preprocess_cpus=0.25,
        scorer_cpus=0.25,
        max_ongoing_requests=1,
        max_queued_requests=1,
    )
    serve.run(build_app(config), name="tight", route_prefix="/tight")
    try:
        images = list(photo_jpegs.values()) * 2  # eight photos a request: long enough for a queue to form
        boundary = uuid.uuid4().hex
        parts = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="{i}.jpg"\r\n\r\n'.encode()
            + data
            + b"\r\n"
            for i, data in enumerate(images)
        )
        parts += f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

        def post() -> tuple[int, Any]:
            request = urllib.request.Request(f"{server}/tight/predict/{MODEL}", data=parts, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, response.headers
            except urllib.error.HTTPError as error:
                error.read()
                return error.code, error.headers

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: post(), range(16)))
        statuses = sorted(status for status, _ in results)
        assert set(statuses) == {200, 503}, statuses
        assert all(h.get("Retry-After") for status, h in results if status == 503)
        assert post()[0] == 200
    finally:
        serve.delete("tight")


def test_serve_config_file_deploys_the_app(server: str, topology: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """jobs/serve_config.yaml passes Serve's own schema, and its import path and args build a working app."""
    import importlib

    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from tests.conftest import MODELS_DIR, REPO

    schema = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "jobs" / "serve_config.yaml").read_text()))
    (app,) = schema.applications
    from pipeline.serving.grpc_v2 import SERVICER

    assert schema.grpc_options.grpc_servicer_functions == [SERVICER]  # the gRPC service `serve --grpc-port` starts
    from ray.serve.config import gRPCOptions

    assert len(gRPCOptions(**schema.grpc_options.model_dump()).grpc_servicer_func_callable) == 1  # importable
    # Small replicas: the session's 2 CPUs also hold the module's app.
    args = app.args | {
        "models_dir": str(MODELS_DIR),
        "topology": topology,  # this run's layout
        "replicas": 1,
        "preprocess_cpus": 0.1,
        "scorer_cpus": 0.1,
    }
    module, builder = app.import_path.split(":")
    serve.run(getattr(importlib.import_module(module), builder)(args), name="from-config", route_prefix="/from-config")
    try:
        status, headers, body = request_json(f"{server}/from-config/predict/{MODEL}", photo_jpegs["coffee"])
        assert status == 200 and body["predictions"][0]["label"] == "espresso", body
    finally:
        serve.delete("from-config")
