"""``ray job submit`` of ``jobs/batch_score.py`` to a real ``ray start --head`` on 127.0.0.1, with token auth.

The head runs under ``ray start --block`` and is stopped by SIGTERM to that one process, which takes its Ray
processes with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from tests.processes import (
    MODEL,
    alive,
    clean_env,
    console_script,
    descendants,
    free_port,
    http_status,
    read_output,
    short_tmp_dir,
)

pytestmark = pytest.mark.slow


@dataclass
class RayHead:
    address: str  # the dashboard's HTTP address, for `ray job submit --address`
    client_env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token and where the token is
    token: str


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A real ``ray start --head`` on 127.0.0.1 with token authentication and its own token and temp dir.

    The token is a fresh one in a file named by ``RAY_AUTH_TOKEN_PATH`` (for the head, its workers and the
    client alike), so the test neither reads nor writes ``~/.ray/auth_token``.
    """
    temp_dir = short_tmp_dir("ss-head-")
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    dashboard_port = free_port()
    command = [
        console_script("ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--port={free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # Fixed defaults that another Ray on this machine may hold already.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = temp_dir / "ray_start.log"
    # SIGTERM makes `ray start --block` first drain the node, 30 s by default; nothing here needs draining.
    head_env = clean_env(**auth_env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown then stops the head.
    with log.open("w") as log_file:
        head = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=head_env, start_new_session=True
        )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        # The job API answers (with our token) once the dashboard and its job module are up.
        try:
            wait_for(lambda: head.poll() is not None or http_status(f"{address}/api/jobs/", token) == 200, 120)
        except TimeoutError:
            pytest.fail(f"the head's job API did not answer within 120 s:\n{log.read_text()[-3000:]}")
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        yield RayHead(address, clean_env(**auth_env), token)
    finally:
        started = descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # this head only; it stops the Ray processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        # Workers exit a moment after their raylet, and may still write into the temp dir until then.
        try:
            wait_for(lambda: not any(alive(pid) for pid in started), 30)
        except TimeoutError:
            for pid in filter(alive, started):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_scores_demo_images(ray_head: RayHead, tmp_path: Path) -> None:
    """The README's cluster command: the repo uploaded as the working dir (.gitignore'd files stay home)."""
    out = tmp_path / "out"
    # sys.executable rather than `python`: the entrypoint runs in a shell on the head, where `python` may not
    # be the interpreter that has Ray and our dependencies.
    entrypoint = [sys.executable, "jobs/batch_score.py", "jobs/demo_images", str(out), "--model", MODEL, "--overwrite"]
    command = [console_script("ray"), "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO), "--"]
    done = subprocess.run(
        command + entrypoint, env=ray_head.client_env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "succeeded" in output
    assert "rows: 5 (input rows: 5)" in output  # the job's own closing summary, tailed by `ray job submit`

    rows = {row["id"]: row for row in read_output(out)}
    assert len(rows) == 5
    assert rows["coffee.jpg"]["label"] == "espresso"
    assert rows["truncated.jpg"]["error"].startswith("truncated")


def test_ray_job_submit_runs_the_nightly_job_and_refuses_a_submission_without_the_token(
    ray_head: RayHead, tmp_path: Path
) -> None:
    """jobs/nightly.py as a scheduler submits it (deploy/nightly-cronjob.yaml), and the same submission
    without the token, refused before anything runs."""
    table = tmp_path / "scores.delta"
    entrypoint = [sys.executable, "jobs/nightly.py", "jobs/demo_images", str(table), "--model", MODEL]
    command = [console_script("ray"), "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO), "--"]
    no_token = {k: v for k, v in ray_head.client_env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run(command + entrypoint, env=no_token, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr
    assert not table.exists()

    done = subprocess.run(
        command + entrypoint, env=ray_head.client_env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "run 1: committed" in output and "in this run: 5" in output
    from deltalake import DeltaTable

    assert sorted(DeltaTable(str(table)).to_pyarrow_table().column("id").to_pylist()) == sorted(
        p.name for p in (REPO / "jobs" / "demo_images").iterdir()
    )


def test_ray_job_api_refuses_clients_without_the_token(ray_head: RayHead) -> None:
    """What the README's `export RAY_AUTH_MODE=token` is for: the CLI sends the token only in token mode."""
    no_mode = {k: v for k, v in ray_head.client_env.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run(
        [console_script("ray"), "job", "list", "--address", ray_head.address],
        env=no_mode,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Missing authentication token" in done.stdout + done.stderr

    assert http_status(f"{ray_head.address}/api/jobs/") == 401
    assert http_status(f"{ray_head.address}/api/jobs/", "0" * 64) == 403
    assert http_status(f"{ray_head.address}/api/jobs/", ray_head.token) == 200
