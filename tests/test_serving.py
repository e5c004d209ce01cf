"""The Serve app on 127.0.0.1 in the session's Ray instance: real HTTP, a standard V2 client, parity with batch."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.graph import build_graph
from pipeline.spec import GraphSpec

pytestmark = pytest.mark.slow
MODEL = "efficientnet-lite0"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="module", params=["split", "fused"])
def topology(request: pytest.FixtureRequest) -> str:
    """Every test of the app runs against both layouts: split (the GPU one) and fused (the CPU default)."""
    return str(request.param)


@pytest.fixture(scope="module")
def served_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 and four versions of digits (same weights; version 4 a broken upload)."""
    from tests.conftest import MODELS_DIR

    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(MODELS_DIR / MODEL, root / MODEL)
    for version in ("1", "2", "3", "4"):
        shutil.copytree(MODELS_DIR / "digits" / "1", root / "digits" / version)
        manifest = json.loads((root / "digits" / version / "manifest.json").read_text())
        (root / "digits" / version / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    (root / "digits" / "4" / "model.onnx").write_bytes(b"a broken upload, not an ONNX model")
    return root


@pytest.fixture(scope="module")
def server(ray_cluster, served_repository: Path, topology: str) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app over ``served_repository``, with a routing policy for digits: 80/20 between versions 1 and 2,
    version 3 at weight 0, X-Region: cn -> 2, sticky by X-User."""
    from ray import serve

    from pipeline.serving.app import ServeConfig, deploy
    from pipeline.serving.ingress import free_app_port

    routing = {
        "digits": {
            "weights": {"1": 80, "2": 20, "3": 0},
            "rules": [{"header": "X-Region", "equals": "cn", "version": "2"}],
            "sticky_header": "X-User",
        }
    }
    port = free_app_port()
    config = ServeConfig(
        models_dir=str(served_repository),
        max_request_bytes=3_000_000,
        topology=topology,
        preprocess_cpus=0.25,
        scorer_cpus=0.25,
        routing=routing,
        admin_token=ADMIN_TOKEN,
        preprocess_autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    )
    deploy(config, port=port)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()  # frees the replicas' CPUs for the batch tests that follow


def _request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, Any, dict]:
    """(status, headers (case-insensitive), JSON body)."""
    method = method or ("POST" if body is not None else "GET")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_autoscaling_settings_reach_serve(server: str, topology: str) -> None:
    from ray import serve
    from ray.serve.context import _get_global_client

    deployments = serve.status().applications["streamscore"].deployments
    expected = {"Gateway", "Scorer", "ControlPlane"} if topology == "split" else {"Gateway", "ControlPlane"}
    assert set(deployments) == expected
    assert all(d.status == "HEALTHY" for d in deployments.values())
    # Serve's own record of the deployed config (no public API exposes it yet).
    details = _get_global_client().get_serve_details()["applications"]["streamscore"]["deployments"]
    autoscaling = details["Gateway"]["deployment_config"]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 2)
    assert details["Gateway"]["deployment_config"]["max_ongoing_requests"] == 64
    if topology == "split":
        assert details["Scorer"]["deployment_config"].get("autoscaling_config") is None
        assert details["Scorer"]["deployment_config"]["max_ongoing_requests"] == 64


def test_health_and_metadata(server: str) -> None:
    assert _request(f"{server}/v2/health/live")[2] == {"live": True}
    assert _request(f"{server}/v2/health/ready")[2] == {"ready": True}
    status, _, meta = _request(f"{server}/v2/models/{MODEL}")
    assert status == 200 and meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert _request(f"{server}/v2/models/{MODEL}/versions/1/ready")[2]["ready"] is True
    status, _, body = _request(f"{server}/v2/models/no-such-model")
    assert status == 404 and "no model 'no-such-model'" in body["error"]
    assert _request(f"{server}/v2/models/{MODEL}/versions/9/ready")[0] == 404


def test_predict_matches_the_batch_graph(server: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])
    assert status == 200 and headers.get("X-Model-Version") == "1" and body["model_version"] == "1", body
    (prediction,) = body["predictions"]
    reference = build_graph(GraphSpec(model=MODEL), repository).run([photo_jpegs["coffee"]]).to_pylist()[0]
    assert prediction["label"] == reference["label"] == "espresso"
    np.testing.assert_allclose(
        [t["score"] for t in prediction["top_k"]], [t["score"] for t in reference["top_k"]], atol=1e-5
    )


def test_multipart_upload_of_several_files(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    boundary = uuid.uuid4().hex
    parts = b""
    for name in ("coffee", "chelsea"):
        parts += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + photo_jpegs[name]
            + b"\r\n"
        )
    parts += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, body = _request(f"{server}/predict/{MODEL}", parts, headers)
    assert status == 200, body
    assert [p["file"] for p in body["predictions"]] == ["coffee.jpg", "chelsea.jpg"]
    assert body["predictions"][0]["label"] == "espresso"
    assert {"tabby", "tiger cat", "Egyptian cat"} & {t["label"] for t in body["predictions"][1]["top_k"]}


def test_v2_infer_with_json_and_with_the_standard_client(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(photo_jpegs["coffee"]).decode()],
            }
        ],
    }
    status, headers, body = _request(f"{server}/v2/models/{MODEL}/infer", json.dumps(request).encode())
    assert status == 200 and body["id"] == "r1" and headers.get("X-Model-Version") == "1"
    labels = {o["name"]: o for o in body["outputs"]}["label"]
    assert labels["shape"] == [1, 5] and labels["data"][0] == "espresso"

    import tritonclient.http as tritonclient  # a test dependency: never skipped

    client = tritonclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_server_metadata()["name"] == "streamscore"
    assert client.get_model_metadata(MODEL)["inputs"][0]["datatype"] == "BYTES"
    images = np.array([photo_jpegs["coffee"], photo_jpegs["chelsea"]], dtype=object)
    inputs = [tritonclient.InferInput("image", [2], "BYTES")]
    inputs[0].set_data_from_numpy(images, binary_data=True)
    result = client.infer(MODEL, inputs, model_version="1")
    assert result.as_numpy("label")[0][0] in (b"espresso", "espresso")
    assert result.as_numpy("score").shape == (2, 5)


def test_bad_requests_get_4xx_with_a_reason(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = _request(f"{server}/predict/{MODEL}", b"this is not an image")
    assert status == 400 and "not_an_image" in body["error"] and headers.get("X-Model-Version") == "1"
    status, _, body = _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"][:2000])
    assert status == 400 and "truncated" in body["error"]
    status, _, body = _request(f"{server}/predict/{MODEL}", b"x" * 3_500_000)
    assert status == 413
    status, _, body = _request(f"{server}/v2/models/{MODEL}/infer", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, _, body = _request(f"{server}/predict/no-such-model", photo_jpegs["coffee"])
    assert status == 404
    status, _, body = _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "0.000001"})
    assert status == 504 and "not scored within" in body["error"]
    status, _, body = _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "soon"})
    assert status == 400 and "X-Request-Timeout-S" in body["error"]
    status, _, body = _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "0"})
    assert status == 400 and "positive" in body["error"]
    # A chunked multipart upload (no Content-Length) over the limit: refused while streaming, not parsed.
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    chunks = iter([b"--x\r\nContent-Disposition: form-data; name=f; filename=a.jpg\r\n\r\n"] + [b"0" * 500_000] * 8)
    connection.request("POST", f"/predict/{MODEL}", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
    response = connection.getresponse()
    assert response.status == 413 and b"limit" in response.read()
    connection.close()
    malformed = {"Content-Type": "multipart/form-data; boundary=x"}
    status, _, body = _request(f"{server}/predict/{MODEL}", b"--x\r\nContent-Disposition: form-data\r\n", malformed)
    assert 400 <= status < 500 and body["error"]
    # The replicas survived all of that.
    assert _request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[0] == 200


def test_concurrent_requests_all_succeed(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    images = list(photo_jpegs.values()) * 8
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda data: _request(f"{server}/predict/{MODEL}", data), images))
    assert [status for status, _, _ in results] == [200] * len(images)
    coffee = [
        body["predictions"][0]["label"]
        for (_, _, body), data in zip(results, images, strict=True)
        if data == photo_jpegs["coffee"]
    ]
    assert coffee == ["espresso"] * 8


def test_routing_weights_rules_sticky_and_explicit_versions(server: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    image = digit_files[0][0].read_bytes()

    def version(path: str = "/predict/digits", headers: dict[str, str] | None = None) -> str:
        status, response_headers, body = _request(f"{server}{path}", image, headers)
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
        versions = {_request(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[2]["model_version"] for _ in range(8)}
        assert versions == {"1"}
        assert _request(f"{server}/predict/{MODEL}?version=7", photo_jpegs["coffee"])[2]["model_version"] == "7"
    finally:
        shutil.rmtree(root / MODEL / "7")


def test_a_version_that_cannot_load_fails_only_its_own_requests(server: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    """Version 4 of digits is a broken upload that no check has refused yet: asking for it by name gets 503 with
    the reason, and requests for a good version sent at the same moment still succeed."""
    image = digit_files[0][0].read_bytes()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        broken = [pool.submit(_request, f"{server}/predict/digits?version=4", image) for _ in range(4)]
        good = [pool.submit(_request, f"{server}/predict/digits?version=1", image) for _ in range(12)]
        for future in broken:
            status, _, body = future.result()
            assert status == 503 and "version 4 of 'digits'" in body["error"], body
        assert [f.result()[0] for f in good] == [200] * 12


def test_metrics_count_requests_errors_latency_and_batches(server: str) -> None:
    """Runs after the tests above (module order), so it sees their traffic."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}

    def value(family: str, suffix: str = "", **labels: str) -> float:
        return sum(
            s.value
            for s in families[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        )

    ok = value("streamscore_requests", "_total", model=MODEL, version="1", endpoint="predict", status="200")
    assert ok >= 30  # the concurrency test alone sent 32
    assert value("streamscore_requests", "_total", model=MODEL, status="400") >= 2
    assert value("streamscore_requests", "_total", model=MODEL, status="413") >= 1
    assert value("streamscore_requests", "_total", model="unknown", status="404") >= 1  # bounded labels
    assert value("streamscore_requests", "_total", model="digits", version="3") >= 1
    assert value("streamscore_request_latency_seconds", "_count", model=MODEL, version="1") >= ok
    assert value("streamscore_batch_requests", "_count", model=MODEL, version="1") >= ok
    assert value("streamscore_images", "_total", model=MODEL, version="1") >= ok


def test_hot_updates_under_load_fail_no_request(server: str, digit_files) -> None:  # type: ignore[no-untyped-def]
    """Add a version, shift weights, refuse a broken version, roll back and retire, all while 16 clients
    keep scoring: every request succeeds, and the broken version never takes traffic."""
    import threading

    image = digit_files[0][0].read_bytes()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def call(method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, answer = _request(f"{server}{path}", data, headers if headers is not None else admin, method)
        return status, answer

    assert call("GET", "/admin/models/digits/routing", headers={})[0] == 401
    assert call("GET", "/admin/models/digits/routing", headers={"Authorization": "Bearer wrong"})[0] == 401

    stop, outcomes = threading.Event(), []

    def client() -> None:
        while not stop.is_set():
            status, headers, body = _request(f"{server}/predict/digits", image)
            outcomes.append((status, headers.get("X-Model-Version")))

    clients = [threading.Thread(target=client) for _ in range(16)]
    for thread in clients:
        thread.start()
    try:
        assert call("POST", "/admin/models/digits/versions/3/load") == (
            200, {"model": "digits", "version": "3", "state": "ready"}
        )  # fmt: skip
        assert call("PUT", "/admin/models/digits/routing", {"weights": {"1": 50, "3": 50}})[0] == 200
        status, body = call("POST", "/admin/models/digits/versions/4/load")
        assert status == 422 and body["state"] == "failed" and body["error"]
        status, body = call("PUT", "/admin/models/digits/routing", {"weights": {"4": 100}})
        assert status == 409 and "cannot take traffic" in body["error"]
        status, body = call("GET", "/admin/models/digits/routing")
        assert body["routing"]["weights"] == {"1": 50, "3": 50} and body["versions"]["4"]["state"] == "failed"
        assert "3" in body["loaded"] and "4" not in body["loaded"]
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
    served = {v for _, v in outcomes}
    assert "3" in served and "4" not in served and served <= {"1", "2", "3"}
    assert _request(f"{server}/predict/digits?version=3", image)[0] == 404  # retired
    assert _request(f"{server}/predict/digits?version=4", image)[0] == 404  # failed its check


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

    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
        text = response.read().decode()
    assert 'streamscore_version_checks_total{model="digits",outcome="failed",version="4"} 1.0' in text
    assert 'streamscore_version_checks_total{model="digits",outcome="ok",version="2"} 1.0' in text


def test_full_queues_answer_503_with_retry_after(server: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """A second app (the fused layout) that takes one request at a time and queues one more: a burst gets
    503 + Retry-After for the rest instead of queueing without bound, and the app serves again afterwards."""
    from ray import serve

    from pipeline.serving.app import ServeConfig, build_app

    config = ServeConfig(
        models_dir=repository.root,
        topology="fused",
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


def test_graph_cache_holds_the_least_recently_used_versions_up_to_its_capacity(repository) -> None:  # type: ignore[no-untyped-def]
    from pipeline.serving.app import GraphCache, ServeConfig

    cache = GraphCache(ServeConfig(models_dir=repository.root, max_cached_versions=2), "inference")
    first, _ = cache.get("digits:1")
    cache.get(f"{MODEL}:1")
    assert cache.cached() == ["digits:1", f"{MODEL}:1"]
    assert cache.get("digits:1")[0] is first  # a hit reuses the built graph and becomes most recent
    assert cache.cached() == [f"{MODEL}:1", "digits:1"]
    small = GraphCache(ServeConfig(models_dir=repository.root, max_cached_versions=1), "preprocess")
    small.get("digits:1")
    small.get(f"{MODEL}:1")
    assert small.cached() == [f"{MODEL}:1"]  # the least recently used went


def test_cluster_nodes_start_ray_with_the_fast_ingress_switches() -> None:
    """Ray reads them at `ray start`: cluster.yaml must set every one on the head and on the workers."""
    import yaml

    from pipeline.serving.ingress import FAST_INGRESS
    from tests.conftest import REPO

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert all(f"{name}={value}" in start for name, value in FAST_INGRESS.items()), start


def test_serve_config_file_deploys_the_app(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """jobs/serve_config.yaml passes Serve's own schema, and its import path and args build a working app."""
    import importlib

    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from tests.conftest import MODELS_DIR, REPO

    schema = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "jobs" / "serve_config.yaml").read_text()))
    (app,) = schema.applications
    # Small replicas: the session's 2 CPUs also hold the module's app.
    args = app.args | {"models_dir": str(MODELS_DIR), "replicas": 1, "preprocess_cpus": 0.1, "scorer_cpus": 0.1}
    module, builder = app.import_path.split(":")
    serve.run(getattr(importlib.import_module(module), builder)(args), name="from-config", route_prefix="/from-config")
    try:
        status, headers, body = _request(f"{server}/from-config/predict/{MODEL}", photo_jpegs["coffee"])
        assert status == 200 and body["predictions"][0]["label"] == "espresso", body
    finally:
        serve.delete("from-config")


def test_layout_is_settled_from_the_cluster_and_what_the_user_set_wins() -> None:
    from pipeline.serving.app import ServeConfig

    def settled(resources: dict[str, float], **settings: Any) -> tuple:
        c = ServeConfig(**settings).for_cluster(resources)
        return c.topology, c.scorer_gpus, c.replicas, c.scorer_replicas

    assert settled({"CPU": 2.0}) == ("fused", 0.0, 2, None)  # one replica per CPU, as batch actors
    assert settled({"CPU": 16.0, "GPU": 2.0}) == ("split", 1.0, 15, 2)  # a scorer per GPU, gateways on the rest
    assert settled({"CPU": 8.0, "GPU": 1.0}, scorer_gpus=0.5) == ("split", 0.5, 7, 2)
    assert settled({"CPU": 8.0, "GPU": 1.0}, scorer_gpus=0) == ("fused", 0, 8, None)  # GPUs left alone
    assert settled({"CPU": 8.0}, topology="split", replicas=3) == ("split", 0.0, 3, 1)
    assert settled({"CPU": 8.0}, preprocess_cpus=1, scorer_cpus=1) == ("fused", 0.0, 4, None)
    assert settled({"CPU": 8.0}, scorer_replicas=2) == ("split", 0.0, 7, 2)  # a scorer sized apart: split
    with pytest.raises(ValueError, match="split topology"):
        ServeConfig(topology="fused", scorer_autoscaling={"min_replicas": 1, "max_replicas": 4})


def test_app_ports_that_serve_takes_for_itself_are_refused() -> None:
    from pipeline.errors import ConfigError
    from pipeline.serving.ingress import check_port, free_app_port

    check_port(8000)
    with pytest.raises(ConfigError, match="fallback HTTP proxy"):
        check_port(8500)
    with pytest.raises(ConfigError, match="ports 30000-31000"):
        check_port(30500)
    check_port(free_app_port())
