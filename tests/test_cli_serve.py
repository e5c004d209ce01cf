"""``streamscore serve`` as a user runs it: its own Ray and Serve app, real HTTP, a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.graph import build_graph
from pipeline.models import ModelRepository
from tests.conftest import MODELS_DIR, REPO, wait_for
from tests.processes import (
    DEMO_IMAGES,
    MODEL,
    clean_env,
    console_script,
    ray_sessions,
    short_tmp_dir,
)

pytestmark = pytest.mark.slow


def test_streamscore_serve_answers_http_until_interrupted(tmp_path: Path) -> None:
    """`streamscore serve` starts its own Ray and Serve app, answers /predict, and stops cleanly on Ctrl-C."""
    from jobs.ingress import free_app_port

    ray_tmpdir = short_tmp_dir("ss-serve-")
    port = free_app_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "--models-dir", str(MODELS_DIR), "--port", str(port)],
        cwd=REPO,
        env=clean_env(RAY_TMPDIR=str(ray_tmpdir)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                return json.loads(response.read()) == {"ready": True}
        except (OSError, ValueError):
            return server.poll() is not None  # stop waiting if it died; asserted below

    try:
        wait_for(ready, timeout_s=120, interval_s=0.5)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
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
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


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
            cwd=REPO, env=clean_env(RAY_TMPDIR=str(ray_tmpdir)), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
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
    done = subprocess.run([console_script("streamscore"), "models", "list"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"models in {MODELS_DIR}" in done.stdout and f"  {MODEL}: versions 1" in done.stdout
    env = clean_env(STREAMSCORE_MODELS_DIR=str(tmp_path))
    done = subprocess.run([console_script("streamscore"), "models", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and f"no models in {tmp_path}" in done.stderr
