"""The Serve app over real HTTP on 127.0.0.1, both layouts: V2 and /predict, a standard client, parity with
batch, bad requests, health and app-wide metrics."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from pipeline.graph import build_graph
from tests.serving import EMBED_MODEL, MODEL, request_json

pytestmark = pytest.mark.slow


def test_autoscaling_settings_reach_serve(server: str, topology: str) -> None:
    from ray import serve
    from ray.serve.context import _get_global_client

    deployments = serve.status().applications["streamscore"].deployments
    expected = {"Gateway", "ControlPlane", "MetricsHub"} | ({"Scorer"} if topology == "split" else set())
    assert set(deployments) == expected
    assert all(d.status == "HEALTHY" for d in deployments.values())
    assert deployments["Gateway"].replica_states.get("RUNNING") == 2
    # Serve's own record of the deployed config (no public API exposes it yet).
    details = _get_global_client().get_serve_details()["applications"]["streamscore"]["deployments"]
    autoscaling = details["Gateway"]["deployment_config"]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (2, 2)
    assert details["Gateway"]["deployment_config"]["max_ongoing_requests"] == 64
    if topology == "split":
        assert details["Scorer"]["deployment_config"].get("autoscaling_config") is None
        assert details["Scorer"]["deployment_config"]["max_ongoing_requests"] == 64


def test_health_and_metadata(server: str) -> None:
    assert request_json(f"{server}/v2/health/live")[2] == {"live": True}
    # Ready: every routed version (digits 1 and 2, efficientnet-lite0's latest) loaded on the answering replica.
    for _ in range(6):  # whichever replica answers
        status, _, body = request_json(f"{server}/v2/health/ready")
        assert (status, body) == (200, {"ready": True}), body
    status, _, meta = request_json(f"{server}/v2/models/{MODEL}")
    assert status == 200 and meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert request_json(f"{server}/v2/models/{MODEL}/versions/1/ready")[2]["ready"] is True
    # A model is ready when every version its routing sends traffic to is (digits: 1 and 2, not the newest 4).
    status, _, body = request_json(f"{server}/v2/models/digits/ready")
    assert (status, body["ready"], body["versions"]) == (200, True, ["1", "2"]), body
    # A version no routing sends traffic to is not loaded until used: not ready, as in Triton.
    status, _, body = request_json(f"{server}/v2/models/digits/versions/3/ready")
    assert (status, body["ready"], body["state"]) == (400, False, "ready"), body
    status, _, body = request_json(f"{server}/v2/models/no-such-model")
    assert status == 404 and "no model 'no-such-model'" in body["error"]
    assert request_json(f"{server}/v2/models/{MODEL}/versions/9/ready")[0] == 404


def test_predict_matches_the_batch_graph(server: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])
    assert status == 200 and headers.get("X-Model-Version") == "1" and body["model_version"] == "1", body
    (prediction,) = body["predictions"]
    reference = build_graph(MODEL, repository).run([photo_jpegs["coffee"]]).to_pylist()[0]
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
    status, _, body = request_json(f"{server}/predict/{MODEL}", parts, headers)
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
    status, headers, body = request_json(f"{server}/v2/models/{MODEL}/infer", json.dumps(request).encode())
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


def test_embeddings_over_v2_and_predict_equal_the_batch_graph(server: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as tritonclient

    images = [photo_jpegs["coffee"], photo_jpegs["chelsea"]]
    reference = np.array(build_graph(EMBED_MODEL, repository).run(images).column("embedding").to_pylist())
    client = tritonclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.get_model_metadata(EMBED_MODEL)["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 1280]}
    ]
    inputs = [tritonclient.InferInput("image", [2], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    vectors = client.infer(EMBED_MODEL, inputs).as_numpy("embedding")
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    status, _, body = request_json(f"{server}/predict/{EMBED_MODEL}", images[0])
    assert status == 200 and set(body["predictions"][0]) == {"file", "embedding"}, body
    np.testing.assert_allclose(body["predictions"][0]["embedding"], reference[0], atol=1e-5)


def test_bad_requests_get_4xx_with_a_reason(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = request_json(f"{server}/predict/{MODEL}", b"this is not an image")
    assert status == 400 and "not_an_image" in body["error"] and headers.get("X-Model-Version") == "1"
    status, _, body = request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"][:2000])
    assert status == 400 and "truncated" in body["error"]
    status, _, body = request_json(f"{server}/predict/{MODEL}", b"x" * 3_500_000)
    assert status == 413
    status, _, body = request_json(f"{server}/v2/models/{MODEL}/infer", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, _, body = request_json(f"{server}/predict/no-such-model", photo_jpegs["coffee"])
    assert status == 404
    status, _, body = request_json(
        f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "0.000001"}
    )
    assert status == 504 and "not scored within" in body["error"]
    status, _, body = request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "soon"})
    assert status == 400 and "X-Request-Timeout-S" in body["error"]
    status, _, body = request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": "0"})
    assert status == 400 and "positive" in body["error"]
    # A chunked multipart upload (no Content-Length) over the limit: refused while streaming, not parsed.
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    chunks = iter([b"--x\r\nContent-Disposition: form-data; name=f; filename=a.jpg\r\n\r\n"] + [b"0" * 500_000] * 8)
    connection.request(
        "POST",
        f"/predict/{MODEL}",
        body=chunks,
        encode_chunked=True,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    response = connection.getresponse()
    assert response.status == 413 and b"limit" in response.read()
    connection.close()
    malformed = {"Content-Type": "multipart/form-data; boundary=x"}
    status, _, body = request_json(f"{server}/predict/{MODEL}", b"--x\r\nContent-Disposition: form-data\r\n", malformed)
    assert 400 <= status < 500 and body["error"]
    # Probes that answered 500: parameters that are not an object, JSON nested 100,000 deep, a NaN time limit.
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aa=="], "parameters": [1]}]}
    status, _, body = request_json(f"{server}/v2/models/{MODEL}/infer", json.dumps(v2).encode())
    assert status == 400 and "parameters must be an object" in body["error"], body
    status, _, body = request_json(f"{server}/v2/models/{MODEL}/infer", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested too deeply" in body["error"], body
    for limit in ("nan", "inf", "-1"):
        status, _, body = request_json(
            f"{server}/predict/{MODEL}", photo_jpegs["coffee"], {"X-Request-Timeout-S": limit}
        )
        assert status == 400 and "X-Request-Timeout-S" in body["error"], (limit, body)
    headers = {"Inference-Header-Content-Length": "12x"}
    status, _, body = request_json(f"{server}/v2/models/{MODEL}/infer", b"{}", headers)
    assert status == 400 and "Inference-Header-Content-Length" in body["error"], body
    strip = io.BytesIO()
    Image.new("RGB", (4000, 1), (200, 30, 30)).save(strip, "PNG")  # a <100-byte aspect-ratio bomb
    assert request_json(f"{server}/predict/{MODEL}", strip.getvalue())[0] == 200
    for path in ("/docs", "/redoc", "/openapi.json", "/v2/models"):  # not part of the API
        status, _, body = request_json(f"{server}{path}")
        assert status == 404 and "no route" in body["error"], (path, body)
    status, headers, body = request_json(f"{server}/predict/{MODEL}")  # a route of another method
    assert status == 405 and headers.get("Allow") == "POST" and "GET is not allowed" in body["error"], body
    status, headers, _ = request_json(f"{server}/v2/health/live", method="DELETE")
    assert status == 405 and set(headers.get("Allow", "").split(", ")) == {"GET", "HEAD"}
    five = [base64.b64encode(photo_jpegs["coffee"][:100]).decode()] * 5
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [5], "data": five}]}
    status, _, body = request_json(f"{server}/v2/models/{MODEL}/infer", json.dumps(v2).encode())
    assert status == 413 and "holds 5 images, over the limit of 4" in body["error"], body
    wide = io.BytesIO()
    Image.new("RGB", (2000, 2000), (90, 60, 30)).save(wide, "PNG")  # 4 megapixels in a few kB
    status, _, body = request_json(f"{server}/predict/{MODEL}", wide.getvalue())
    assert status == 413 and "declare 4,000,000 pixels together, over the limit of 3,000,000" in body["error"], body
    # A client that stalls mid-body, or trickles it, is cut off with 408 after the one-second grace, once its
    # body falls under the minimum rate; others are served meanwhile.
    for pause_s in (None, 0.1):  # stalled; one byte every 0.1 s
        slow = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        slow.putrequest("POST", f"/predict/{MODEL}")
        slow.putheader("Content-Length", "100000")
        slow.endheaders()
        slow.send(b"\xff\xd8" + b"0" * 1000)
        assert request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[0] == 200
        if pause_s:
            with contextlib.suppress(OSError):  # the server hangs up once it has answered
                for _ in range(30):
                    slow.send(b"0")
                    time.sleep(pause_s)
        response = slow.getresponse()
        assert response.status == 408 and b"arrives too slowly" in response.read()
        slow.close()
    # The replicas survived all of that.
    assert request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[0] == 200


def test_concurrent_requests_all_succeed(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    images = list(photo_jpegs.values()) * 8
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda data: request_json(f"{server}/predict/{MODEL}", data), images))
    assert [status for status, _, _ in results] == [200] * len(images)
    coffee = [
        body["predictions"][0]["label"]
        for (_, _, body), data in zip(results, images, strict=True)
        if data == photo_jpegs["coffee"]
    ]
    assert coffee == ["espresso"] * 8


def _scrape(server: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    )


def test_metrics_are_the_whole_apps_whichever_replica_answers(server: str, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """N requests spread over two gateway replicas read back as N from any scrape; errors, latency, images and
    batch sizes are counted with them."""
    from tests.conftest import wait_for

    def requests_ok() -> float:
        return _total(_scrape(server), "streamscore_requests_total", model=MODEL, version="1", status="200")

    settled: list[float] = []
    wait_for(lambda: settled.append(requests_ok()) or settled[-2:] == [settled[-1]] * 2 and len(settled) > 1, 30, 0.6)
    before, n = settled[-1], 24
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda _: request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[0], range(n))
        )
    assert statuses == [200] * n
    request_json(f"{server}/predict/{MODEL}", b"not an image")  # a 400, counted apart
    wait_for(lambda: requests_ok() == before + n, 30, 0.3)
    scrapes = [_scrape(server) for _ in range(6)]  # HAProxy spreads them over both replicas
    for samples in scrapes:
        assert _total(samples, "streamscore_requests_total", model=MODEL, version="1", status="200") == before + n
    samples = scrapes[-1]
    assert _total(samples, "streamscore_requests_total", model=MODEL, status="400") >= 1
    assert _total(samples, "streamscore_request_latency_seconds_count", model=MODEL, version="1") >= before + n
    assert _total(samples, "streamscore_images_total", model=MODEL, version="1") >= before + n
    assert _total(samples, "streamscore_batch_requests_count", model=MODEL, version="1") >= before + n
    request_json(f"{server}/predict/no-such-model", b"x")
    wait_for(lambda: _total(_scrape(server), "streamscore_requests_total", model="unknown", status="404") >= 1, 30, 0.3)


def test_non_default_options_answer_as_the_batch_graph(server: str, topology: str, repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """A second app, in this run's layout, with the batch job's non-default options (OpenCV decode and resize, a
    lowered pixel limit, top-3): the same bytes get the batch row's answer, and an image the batch refuses is
    refused with its reason."""
    from ray import serve

    from pipeline.options import ScoringOptions
    from pipeline.serving.app import build_app
    from pipeline.serving.config import ServeConfig

    options = ScoringOptions(
        decode_backend="opencv", resize_backend="opencv", max_pixels=200_000, top_k=3, raw_outputs=True
    )
    config = ServeConfig(
        models_dir=repository.root,
        options=options,
        topology=topology,
        replicas=1,
        scorer_replicas=1 if topology == "split" else None,
        preprocess_cpus=0.1,
        scorer_cpus=0.1,
    )
    small, large = photo_jpegs["chelsea"], photo_jpegs["coffee"]  # 451 x 300 is under the limit, 600 x 400 over
    batch = {
        r["id"]: r for r in build_graph(MODEL, repository, options).run([small, large], ["small", "large"]).to_pylist()
    }
    assert batch["large"]["error"].startswith("too_many_pixels") and batch["small"]["error"] is None
    serve.run(build_app(config), name="options", route_prefix="/options")
    try:
        status, _, body = request_json(f"{server}/options/predict/{MODEL}", small)
        assert status == 200, body
        (answer,) = body["predictions"]
        assert answer["label"] == batch["small"]["label"] and len(answer["top_k"]) == 3
        np.testing.assert_allclose(answer["raw_output"], batch["small"]["raw_output"], atol=1e-5)
        np.testing.assert_allclose(
            [t["score"] for t in answer["top_k"]], [t["score"] for t in batch["small"]["top_k"]], atol=1e-5
        )
        status, _, body = request_json(f"{server}/options/predict/{MODEL}", large)
        assert status == 400 and body["error"] == f"image: {batch['large']['error']}", body
    finally:
        serve.delete("options")
