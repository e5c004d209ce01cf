"""The Open Inference Protocol over gRPC, on the session's app (both layouts): NVIDIA's ``tritonclient.grpc``, a
client no one here wrote, in a virtual environment of its own; and grpcio with the app's own stubs for what
tritonclient cannot send (typed contents, malformed requests). Answers must equal the HTTP route's, refusals
must carry the gRPC code their HTTP status stands for and the same message."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from open_inference.grpc import protocol as pb
from open_inference.grpc.service import GRPCInferenceServiceStub

from pipeline.serving.app import APP_NAME
from tests.conftest import SERVED_MAX_REQUEST_BYTES
from tests.serving import EMBED_MODEL, MODEL, request_json

TRITONCLIENT = "tritonclient[grpc]==2.73.0"
APPLICATION = {"application": APP_NAME}
CLIENT_SCRIPT = Path(__file__).with_name("triton_grpc_client.py")


@pytest.fixture(scope="session")
def triton_python() -> Path:
    """A virtual environment with tritonclient (from the package index; kept between runs in ~/.cache)."""
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamscore-tests"
    folder = home / TRITONCLIENT.replace("[", "-").replace("]", "").replace("==", "-")
    python = folder / "bin" / "python"
    check = [str(python), "-c", "import tritonclient.grpc"]
    if not python.exists() or subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
        venv.create(folder, with_pip=True, clear=True)
        install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TRITONCLIENT]
        done = subprocess.run(install, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"could not install {TRITONCLIENT}: {done.stderr[-2000:]}"
    return python


def triton(python: Path, target: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Each call with the ``application`` metadata Serve routes on when it runs several apps (other tests of the
    session deploy their own beside this one; with one app a client may leave it out)."""
    calls = [call | {"headers": {**APPLICATION, **call.get("headers", {})}} for call in calls]
    done = subprocess.run(
        [str(python), str(CLIENT_SCRIPT), target],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(done.stdout)
    return results


@pytest.fixture(scope="module")
def photo_files(photo_jpegs: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("grpc_photos")
    for name, data in photo_jpegs.items():
        (folder / f"{name}.jpg").write_bytes(data)
    return sorted(folder.glob("*.jpg"))


def http_infer(server: str, model: str, files: list[Path], version: str | None = None) -> dict[str, Any]:
    data = [base64.b64encode(p.read_bytes()).decode() for p in files]
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]})
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, _, answer = request_json(server + path, body.encode())
    assert status == 200, answer
    return {o["name"]: o for o in answer["outputs"]} | {"model_version": answer["model_version"]}


def test_tritonclient_sees_a_live_ready_server_and_the_same_metadata_as_http(
    server: str, grpc_target: str, triton_python: Path
) -> None:
    live, ready, model_ready, unknown_ready, server_meta, model_meta, embed_meta = triton(
        triton_python,
        grpc_target,
        [
            {"op": "live"},
            {"op": "ready"},
            {"op": "model_ready", "model": MODEL},
            {"op": "model_ready", "model": "no-such-model"},
            {"op": "server_metadata"},
            {"op": "model_metadata", "model": MODEL},
            {"op": "model_metadata", "model": EMBED_MODEL},
        ],
    )
    assert live is True and ready is True and model_ready is True
    assert unknown_ready["code"] == "StatusCode.NOT_FOUND" and "no-such-model" in unknown_ready["message"]
    _, _, http_server = request_json(server + "/v2")
    assert server_meta == http_server  # name, version, extensions
    for grpc_meta, model in ((model_meta, MODEL), (embed_meta, EMBED_MODEL)):
        _, _, http_meta = request_json(f"{server}/v2/models/{model}")
        for tensors in ("inputs", "outputs"):  # protobuf's JSON writes int64 shapes as strings
            for tensor in grpc_meta[tensors]:
                tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert {k: grpc_meta[k] for k in http_meta} == http_meta


def test_tritonclient_infer_answers_what_http_answers(
    server: str, grpc_target: str, triton_python: Path, photo_files: list[Path]
) -> None:
    files = [str(p) for p in photo_files]
    classified, scores_only, embedded = triton(
        triton_python,
        grpc_target,
        [
            {"op": "infer", "model": MODEL, "images": files, "id": "request-7"},
            {"op": "infer", "model": MODEL, "images": files[:1], "outputs": ["score"]},
            {"op": "infer", "model": EMBED_MODEL, "images": files},
        ],
    )
    http = http_infer(server, MODEL, photo_files)
    assert classified["model_name"] == MODEL and classified["model_version"] == http["model_version"]
    assert classified["id"] == "request-7"
    assert classified["label"]["data"] == np.reshape(http["label"]["data"], http["label"]["shape"]).tolist()
    assert classified["label"]["shape"] == http["label"]["shape"] == [len(files), 5]
    np.testing.assert_allclose(
        classified["score"]["data"], np.reshape(http["score"]["data"], http["score"]["shape"]), rtol=0, atol=1e-6
    )
    assert classified["label"]["data"][files.index(next(f for f in files if "coffee" in f))][0] == "espresso"
    assert set(scores_only) == {"model_name", "model_version", "id", "score"}  # only what was asked for
    http_embedded = http_infer(server, EMBED_MODEL, photo_files)["embedding"]
    assert embedded["embedding"]["datatype"] == "FP32" and embedded["embedding"]["shape"] == http_embedded["shape"]
    np.testing.assert_allclose(
        embedded["embedding"]["data"], np.reshape(http_embedded["data"], http_embedded["shape"]), atol=1e-6
    )


def test_tritonclient_refusals_carry_the_grpc_code_of_their_http_status(
    grpc_target: str, triton_python: Path, photo_files: list[Path], digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "junk.jpg").write_bytes(b"these bytes are not an image")
    (tmp_path / "large.bin").write_bytes(os.urandom(SERVED_MAX_REQUEST_BYTES + 1000))  # under gRPC's own cap
    (tmp_path / "huge.bin").write_bytes(os.urandom(SERVED_MAX_REQUEST_BYTES + (2 << 20)))  # over it
    photo, digit = str(photo_files[0]), str(digit_files[0][0])
    calls = [
        {"op": "infer", "model": "no-such-model", "images": [photo]},
        {"op": "infer", "model": MODEL, "images": [str(tmp_path / "junk.jpg")]},
        {"op": "infer", "model": MODEL, "images": [photo] * 5},
        {"op": "infer", "model": MODEL, "images": [str(tmp_path / "large.bin")]},
        {"op": "infer", "model": MODEL, "images": [str(tmp_path / "huge.bin")]},
        {"op": "infer", "model": MODEL, "images": [photo], "outputs": ["no_such_output"]},
        {"op": "infer", "model": MODEL, "images": [photo], "headers": {"x-request-timeout-s": "0.000001"}},
        {"op": "infer", "model": MODEL, "images": [photo], "headers": {"x-request-timeout-s": "soon"}},
        {"op": "infer", "model": "digits", "version": "9", "images": [digit]},
    ]
    results = triton(triton_python, grpc_target, calls)
    expected = [
        ("NOT_FOUND", "no model 'no-such-model'"),
        ("INVALID_ARGUMENT", "image 0: not_an_image"),
        ("RESOURCE_EXHAUSTED", "the request holds 5 images, over the limit of 4"),
        ("RESOURCE_EXHAUSTED", f"over the limit of {SERVED_MAX_REQUEST_BYTES:,}"),
        ("RESOURCE_EXHAUSTED", ""),  # refused by gRPC itself, before the message is held in memory
        ("INVALID_ARGUMENT", "no output named 'no_such_output'"),
        ("DEADLINE_EXCEEDED", "not scored within 1e-06 s"),
        ("INVALID_ARGUMENT", "X-Request-Timeout-S must be a positive number"),
        ("NOT_FOUND", "version"),
    ]
    for call, result, (code, message) in zip(calls, results, expected, strict=True):
        assert isinstance(result, dict) and result.get("code") == f"StatusCode.{code}", (call, result)
        assert message in result["message"], (call, result)


def test_tritonclient_reaches_versions_by_name_header_rule_and_sticky_key(
    grpc_target: str, triton_python: Path, digit_files
) -> None:  # type: ignore[no-untyped-def]
    digit = [str(digit_files[0][0])]
    # gRPC metadata keys are lower case (grpcio refuses others before sending); the rules match either way.
    calls = [
        {"op": "infer", "model": "digits", "version": "3", "images": digit},  # weight 0: only when named
        *[{"op": "infer", "model": "digits", "images": digit, "headers": {"x-region": "cn"}}] * 3,
        *[{"op": "infer", "model": "digits", "images": digit, "headers": {"x-user": "ada"}}] * 6,
    ]
    results = triton(triton_python, grpc_target, calls)
    assert results[0]["model_version"] == "3"
    assert [r.get("model_version") for r in results[1:4]] == ["2", "2", "2"], results[1]  # X-Region: cn -> 2
    assert len({r["model_version"] for r in results[4:]}) == 1  # one user, one version
    assert {r["label"]["data"][0][0] for r in results} == {str(digit_files[0][1])}


def _infer_request(model: str, **tensor: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(**tensor)])


def test_typed_contents_and_malformed_requests_over_plain_grpcio(
    server: str, grpc_target: str, photo_files: list[Path]
) -> None:
    """Typed ``bytes_contents`` (what tritonclient never sends) answer as raw does; every malformed request is
    INVALID_ARGUMENT with a reason, and the requests are counted in /metrics under ``grpc_infer``."""
    stub = GRPCInferenceServiceStub(grpc.insecure_channel(grpc_target))
    images = [p.read_bytes() for p in photo_files[:2]]
    typed = stub.ModelInfer(
        _infer_request(
            MODEL, name="image", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=images)
        ),
        timeout=60,
        metadata=tuple(APPLICATION.items()),
    )
    scores = np.frombuffer(typed.raw_output_contents[1], dtype="<f4").reshape(2, 5)
    http = http_infer(server, MODEL, photo_files[:2])
    np.testing.assert_allclose(scores, np.reshape(http["score"]["data"], (2, 5)), atol=1e-6)
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    malformed = {
        "no input": pb.ModelInferRequest(model_name=MODEL),
        "two inputs": pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[0])] * 2,
        ),
        "FP32 input": _infer_request(MODEL, name="image", datatype="FP32", shape=[1]),
        "2-d shape": _infer_request(MODEL, name="image", datatype="BYTES", shape=[1, 1]),
        "shape says 3": _infer_request(
            MODEL, name="image", datatype="BYTES", shape=[3], contents=pb.InferTensorContents(bytes_contents=images)
        ),
        "no images": _infer_request(MODEL, name="image", datatype="BYTES", shape=[0]),
        "raw cut short": pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[2])],
            raw_input_contents=[raw[:-10]],
        ),
        "raw and typed": pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="image", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=images)
                )
            ],
            raw_input_contents=[raw],
        ),
    }
    for what, request in malformed.items():
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=60, metadata=tuple(APPLICATION.items()))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, refused.value)
        assert refused.value.details(), what
    status, text = _get_text(server + "/metrics")
    assert status == 200
    counted = [line for line in text.splitlines() if 'endpoint="grpc_infer"' in line and 'status="400"' in line]
    assert counted, "refused gRPC requests are not in /metrics"


def _get_text(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read().decode()


def test_the_grpc_client_script_is_run_by_another_interpreter_than_this_one(triton_python: Path) -> None:
    """The client's protobuf (below 7) must never be the app's: two environments, two protobufs."""
    import google.protobuf

    done = subprocess.run(
        [str(triton_python), "-c", "import google.protobuf, tritonclient.grpc; print(google.protobuf.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and int(done.stdout.split(".")[0]) < 7 <= int(google.protobuf.__version__.split(".")[0])
    assert Path(sys.executable).resolve() != triton_python.resolve()
