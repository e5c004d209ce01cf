"""``streamscore serve`` as a user runs it: its own Ray and Serve app, real HTTP, a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.graph import build_graph
from pipeline.models.repository import ModelRepository
from tests.conftest import MODELS_DIR, REPO, wait_for
from tests.processes import (
    DEMO_IMAGES,
    MODEL,
    clean_env,
    console_script,
    kill_ray_in,
    ray_sessions,
    short_tmp_dir,
)

pytestmark = pytest.mark.slow


def _start_serve(models_dir: Path, port: int, ray_tmpdir: Path, log: Path, *extra: str, **env: str) -> subprocess.Popen:
    with log.open("w") as out:  # the child holds its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "serve", "--models-dir", str(models_dir), "--port", str(port), *extra],
            cwd=REPO,
            env=clean_env(RAY_TMPDIR=str(ray_tmpdir), **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_until_ready(server: subprocess.Popen, base: str, log: Path) -> None:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                return json.loads(response.read()) == {"ready": True}
        except (OSError, ValueError):
            return server.poll() is not None  # stop waiting if it died; asserted below

    wait_for(ready, timeout_s=120, interval_s=0.5)
    assert server.poll() is None, log.read_text()[-3000:]


def _stop(server: subprocess.Popen, signum: int, ray_tmpdir: Path) -> None:
    server.send_signal(signum)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    kill_ray_in(ray_tmpdir)  # nothing is left of a clean stop; what a failed one leaves goes
    shutil.rmtree(ray_tmpdir, ignore_errors=True)


def test_streamscore_serve_answers_http_until_interrupted(tmp_path: Path) -> None:
    """`streamscore serve` starts its own Ray and Serve app, answers /predict, and stops cleanly on Ctrl-C."""
    from jobs.ingress import free_app_port

    ray_tmpdir, port, log = short_tmp_dir("ss-serve-"), free_app_port(), tmp_path / "serve.log"
    server = _start_serve(MODELS_DIR, port, ray_tmpdir, log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(server, base, log)
        coffee = (DEMO_IMAGES / "coffee.jpg").read_bytes()
        request = urllib.request.Request(f"{base}/predict/{MODEL}", data=coffee)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
            assert response.headers.get("X-Model-Version") == "1"
        # The default (fused) topology answers as the batch graph does.
        reference = build_graph(MODEL, ModelRepository(str(MODELS_DIR))).run([coffee]).to_pylist()[0]
        assert body["predictions"][0]["label"] == reference["label"] == "espresso"
        np.testing.assert_allclose(
            [t["score"] for t in body["predictions"][0]["top_k"]], [t["score"] for t in reference["top_k"]], atol=1e-5
        )
    finally:
        _stop(server, signal.SIGINT, ray_tmpdir)
    assert server.returncode == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("ha_proxy", ["1", "0"])
def test_grpc_port_serves_v2_behind_haproxy_and_behind_serves_python_proxy(ha_proxy: str, tmp_path: Path) -> None:
    """``--grpc-port``: ModelInfer and a refusal with its code, both through HAProxy (replicas' own gRPC servers)
    and through Serve's Python proxy, which pickles each message (the wheel's messages could not be pickled until
    ``pipeline.serving.grpc_service`` named their module)."""
    import grpc
    from open_inference.grpc import protocol as pb
    from open_inference.grpc.service import GRPCInferenceServiceStub

    from jobs.ingress import free_app_port

    ray_tmpdir, log = short_tmp_dir("ss-grpc-"), tmp_path / "serve.log"
    port, grpc_port = free_app_port(), free_app_port()
    server = _start_serve(
        MODELS_DIR, port, ray_tmpdir, log, "--grpc-port", str(grpc_port), RAY_SERVE_ENABLE_HA_PROXY=ha_proxy
    )
    try:
        _wait_until_ready(server, f"http://127.0.0.1:{port}", log)
        stub = GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=60).ready
        image = pb.ModelInferRequest.InferInputTensor(
            name="image",
            datatype="BYTES",
            shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[(DEMO_IMAGES / "coffee.jpg").read_bytes()]),
        )
        answer = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[image]), timeout=60)
        assert answer.model_version == "1" and answer.raw_output_contents[0][4:12] == b"espresso"
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(pb.ModelInferRequest(model_name="no-such-model", inputs=[image]), timeout=60)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in refused.value.details()
    finally:
        _stop(server, signal.SIGINT, ray_tmpdir)
    assert server.returncode == 0, log.read_text()[-3000:]
    assert f"gRPC V2 on 127.0.0.1:{grpc_port}" in log.read_text()


@pytest.mark.timeout(240)
def test_sigterm_lets_requests_in_flight_finish_then_exits_0(digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM (what Kubernetes, systemd and `docker stop` send) drains: a request the app is working on when the
    signal lands is answered in full, then the command exits 0 and the port is free."""
    from jobs.ingress import free_app_port
    from tests.crash_operator import digits_with_step
    from tests.processes import http_status
    from tests.serving import request_json

    models, started = tmp_path / "models", tmp_path / "started"
    shutil.copytree(MODELS_DIR / "digits" / "1", models / "digits" / "1")
    digits_with_step(models, "sleep_per_row", model="digits-slow", seconds_per_row=3.0, started_file=str(started))
    ray_tmpdir, port, log = short_tmp_dir("ss-term-"), free_app_port(), tmp_path / "serve.log"
    server = _start_serve(models, port, ray_tmpdir, log)
    base = f"http://127.0.0.1:{port}"
    path, label = digit_files[0]
    answer: dict[str, object] = {}

    def in_flight() -> None:
        try:
            answer["status"], _, answer["body"] = request_json(f"{base}/predict/digits-slow", path.read_bytes())
        except OSError as exc:  # the connection closed or reset: asserted below
            answer["error"] = repr(exc)

    request = threading.Thread(target=in_flight)
    try:
        _wait_until_ready(server, base, log)
        request.start()
        wait_for(started.exists, 30, 0.05)  # the replica is decoding it: 3 s of work left
        server.send_signal(signal.SIGTERM)
        request.join(timeout=60)
        assert answer.get("status") == 200, (answer, log.read_text()[-3000:])
        assert answer["body"]["predictions"][0]["label"] == str(label)  # type: ignore[index]
        server.wait(timeout=60)
        assert server.returncode == 0, log.read_text()[-3000:]
        assert http_status(f"{base}/v2/health/live") == 0  # nothing listens there any more
    finally:
        _stop(server, signal.SIGKILL, ray_tmpdir)


def test_serve_on_a_port_another_process_holds_says_so_in_one_line(tmp_path: Path) -> None:
    """Before Ray starts: one line naming the port, exit 2 (it was a 45-line traceback and exit 1)."""
    import socket

    from jobs.ingress import free_app_port

    ray_tmpdir = short_tmp_dir("ss-port-")
    with socket.socket() as holder:
        port = free_app_port()  # outside the ports Serve keeps, which are refused with another message
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=clean_env(RAY_TMPDIR=str(ray_tmpdir)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    try:
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"streamscore: error: port {port} on 127.0.0.1 is in use by another process; choose another with --port"
        ]
        assert ray_sessions(ray_tmpdir) == []
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def test_models_list_outside_the_repository_finds_the_bundled_models(tmp_path: Path) -> None:
    """Run from any folder: the models bundled with the checkout StreamScore was installed from; an explicit
    empty folder says what to do."""
    command = [console_script("streamscore"), "models", "list"]
    done = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"models in {MODELS_DIR}" in done.stdout and f"  {MODEL}: versions 1" in done.stdout
    env = clean_env(STREAMSCORE_MODELS_DIR=str(tmp_path))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"no models in {tmp_path}" in done.stderr
