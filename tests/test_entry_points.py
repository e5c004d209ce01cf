"""End-to-end tests of the two entry points, as a user runs them: the ``streamscore score`` command and
``ray job submit`` of ``jobs/batch_score.py`` to a real ``ray start --head`` cluster.

Everything is real: subprocesses, local Ray instances, the dashboard's HTTP job API with token
authentication, files, ONNX Runtime. Each Ray-starting run costs seconds on 2 cores, so the runs are few and
each checks a lot.

Isolation from the session's in-process Ray (``ray_cluster`` in conftest.py) and from any other Ray on the
machine: every Ray started here gets its own temp dir (``RAY_TMPDIR`` for the CLI, ``--temp-dir`` for the
head). ``ray.init()`` without an address joins the last ``ray start`` cluster recorded in the default temp
dir, so a head recorded there would be joined by the CLI runs and by conftest; recorded in its own temp dir,
it is joined only by address. ``ray stop`` is never used: it stops every Ray on the machine. The head runs
under ``ray start --block`` and is stopped by SIGTERM to that one process, which takes its Ray processes
with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.graph import build_graph
from pipeline.models import ModelRepository
from pipeline.spec import GraphSpec
from tests.conftest import MODELS_DIR, REPO, wait_for

pytestmark = pytest.mark.slow

DEMO_IMAGES = REPO / "jobs" / "demo_images"
MODEL = "efficientnet-lite0"
OUTPUT_COLUMNS = {"id", "model", "model_version", "label", "score", "top_k", "error"}
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put the `ray` and `streamscore` console scripts

# Without these, a developer's shell could point a run at some other cluster or token.
_RAY_CLIENT_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _env(**updates: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RAY_CLIENT_ENV}
    env.update(updates)
    return env


def _short_tmp_dir(prefix: str) -> Path:
    """A temp dir for a Ray instance; under /tmp because Ray's Unix socket paths must stay under ~107 chars."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _script(name: str) -> str:
    """The console script installed with this interpreter (a venv may also see the system's packages)."""
    path = SCRIPTS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} not found in {SCRIPTS} or on PATH; run `pip install -e .`")
    return found


def _read_output(folder: Path) -> list[dict]:
    table = pq.read_table(folder)
    assert set(table.column_names) == OUTPUT_COLUMNS
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def _ray_sessions(ray_tmpdir: Path) -> list[Path]:
    return list((ray_tmpdir / "ray").glob("session_2*"))


# --- streamscore score ------------------------------------------------------------------------------------


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    ray_sessions: list[Path]  # Ray instances this run started (an empty list: Ray never started)


@pytest.fixture
def streamscore(tmp_path: Path) -> Iterator:
    """Run ``python -m jobs.cli ARGS`` as a user would; a Ray it starts lives in its own temp dir."""
    ray_tmpdir = _short_tmp_dir("ss-cli-")

    def run(*args: str, timeout_s: float = 180) -> CliRun:
        before = set(_ray_sessions(ray_tmpdir))
        done = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=REPO,
            env=_env(RAY_TMPDIR=str(ray_tmpdir)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return CliRun(done.returncode, done.stdout, done.stderr, sorted(set(_ray_sessions(ray_tmpdir)) - before))

    yield run
    shutil.rmtree(ray_tmpdir, ignore_errors=True)


def test_score_demo_images(streamscore, tmp_path: Path) -> None:
    """The README's first command: every demo photo scored, the broken one kept with its error, a summary."""
    out, summary_path = tmp_path / "out", tmp_path / "summary.json"
    args = ("--model", MODEL, "--models-dir", str(MODELS_DIR), "--overwrite", "--summary-json", str(summary_path))
    run = streamscore("score", str(DEMO_IMAGES), str(out), *args, "--show", "5")
    assert run.returncode == 0, run.stderr
    assert len(run.ray_sessions) == 1  # proves the no-Ray checks below can see a Ray start

    rows = {row["id"]: row for row in _read_output(out)}
    assert sorted(rows) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "truncated.jpg"]
    latest = ModelRepository(str(MODELS_DIR)).versions(MODEL)[-1]
    assert {(row["model"], row["model_version"]) for row in rows.values()} == {(MODEL, latest)}
    coffee = rows["coffee.jpg"]
    assert coffee["label"] == "espresso" and coffee["error"] is None
    assert coffee["top_k"][0] == {"label": "espresso", "score": pytest.approx(coffee["score"])}
    assert len(coffee["top_k"]) == 5
    broken = rows["truncated.jpg"]
    assert broken["error"].startswith("truncated")
    assert broken["label"] is None and broken["score"] is None and broken["top_k"] is None
    assert all(row["error"] is None for name, row in rows.items() if name != "truncated.jpg")

    summary = json.loads(summary_path.read_text())
    assert (summary["input_rows"], summary["rows"], summary["error_rows"]) == (5, 5, 1)
    assert summary["errors_by_reason"] == {"truncated": 1}
    assert summary["images_per_s"] > 0

    lines = run.stdout.splitlines()
    assert "rows: 5 (input rows: 5)" in lines
    assert "errors: 1" in lines and "  truncated: 1" in lines
    assert any(line.startswith("images/s: ") for line in lines)
    assert any(line.startswith("coffee.jpg: espresso (") for line in lines)
    assert any(line.startswith("truncated.jpg: error: truncated") for line in lines)


def test_error_budget_exceeded_exits_3_and_writes_every_row(streamscore, tmp_path: Path) -> None:
    images = tmp_path / "mostly_bad"
    images.mkdir()
    shutil.copy(DEMO_IMAGES / "coffee.jpg", images / "good.jpg")
    shutil.copy(DEMO_IMAGES / "truncated.jpg", images / "cut.jpg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.png").write_bytes(b"not a picture, just text\n" * 10)
    out, summary_path = tmp_path / "out", tmp_path / "summary.json"

    run = streamscore(
        "score", str(images), str(out), "--model", MODEL, "--models-dir", str(MODELS_DIR), "--max-error-fraction", "0.1",
        "--summary-json", str(summary_path),
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert "3 of 4 rows failed" in run.stderr and "over the allowed 10.0%" in run.stderr
    assert "rows: 4 (input rows: 4)" in run.stdout.splitlines()  # the closing summary is still printed
    summary = json.loads(summary_path.read_text())
    assert summary["errors_by_reason"] == {"truncated": 1, "empty": 1, "not_an_image": 1}

    rows = {row["id"]: row for row in _read_output(out)}
    assert sorted(rows) == ["cut.jpg", "empty.jpg", "good.jpg", "notes.png"]
    assert rows["good.jpg"]["label"] == "espresso" and rows["good.jpg"]["error"] is None
    reasons = {name: row["error"].split(":")[0] for name, row in rows.items() if row["error"]}
    assert reasons == {"cut.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not_an_image"}


def test_unknown_model_exits_2_before_ray_starts(streamscore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = streamscore("score", str(DEMO_IMAGES), str(out), "--model", "no-such-model", "--models-dir", str(MODELS_DIR))
    assert run.returncode == 2
    assert run.stderr.startswith("streamscore: error: no model 'no-such-model'"), run.stderr
    assert MODEL in run.stderr  # the message lists the models there are
    assert run.ray_sessions == []
    assert not out.exists()


def test_missing_input_exits_2_before_ray_starts(streamscore, tmp_path: Path) -> None:
    missing, out = tmp_path / "no-such-folder", tmp_path / "out"
    run = streamscore("score", str(missing), str(out), "--model", MODEL, "--models-dir", str(MODELS_DIR))
    assert run.returncode == 2
    assert run.stderr.strip() == f"streamscore: error: input {missing} does not exist"
    assert run.ray_sessions == []
    assert not out.exists()


def test_non_empty_output_exits_2_before_ray_starts(streamscore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's data")
    run = streamscore("score", str(DEMO_IMAGES), str(out), "--model", MODEL, "--models-dir", str(MODELS_DIR))
    assert run.returncode == 2
    assert "is not empty; pass --overwrite" in run.stderr, run.stderr
    assert run.ray_sessions == []
    assert (out / "keep.txt").read_text() == "someone's data"


def test_help_of_installed_console_script() -> None:
    done = subprocess.run(
        [_script("streamscore"), "score", "--help"], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: streamscore score")
    for option in ("--model", "--models-dir", "--max-error-fraction", "--summary-json", "--show", "--address"):
        assert option in done.stdout


# --- ray job submit ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayHead:
    address: str  # the dashboard's HTTP address, for `ray job submit --address`
    client_env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token and where the token is
    token: str


def _descendants(pid: int) -> list[int]:
    """Every process started under ``pid`` (Linux ``/proc``): the head's Ray processes and their workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening yet


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A real ``ray start --head`` on 127.0.0.1 with token authentication and its own token and temp dir.

    The token is a fresh one in a file named by ``RAY_AUTH_TOKEN_PATH`` (for the head, its workers and the
    client alike), so the test neither reads nor writes ``~/.ray/auth_token``.
    """
    temp_dir = _short_tmp_dir("ss-head-")
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    dashboard_port = _free_port()
    command = [
        _script("ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--port={_free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # Fixed defaults that another Ray on this machine may hold already.
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = temp_dir / "ray_start.log"
    # SIGTERM makes `ray start --block` first drain the node, 30 s by default; nothing here needs draining.
    head_env = _env(**auth_env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown then stops the head.
    with log.open("w") as log_file:
        head = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=head_env, start_new_session=True
        )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        # The job API answers (with our token) once the dashboard and its job module are up.
        try:
            wait_for(lambda: head.poll() is not None or _http_status(f"{address}/api/jobs/", token) == 200, 120)
        except TimeoutError:
            pytest.fail(f"the head's job API did not answer within 120 s:\n{log.read_text()[-3000:]}")
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        yield RayHead(address, _env(**auth_env), token)
    finally:
        started = _descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # this head only; it stops the Ray processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        # Workers exit a moment after their raylet, and may still write into the temp dir until then.
        try:
            wait_for(lambda: not any(_alive(pid) for pid in started), 30)
        except TimeoutError:
            for pid in filter(_alive, started):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_scores_demo_images(ray_head: RayHead, tmp_path: Path) -> None:
    """The README's cluster command: the repo uploaded as the working dir (.gitignore'd files stay home)."""
    out = tmp_path / "out"
    # sys.executable rather than `python`: the entrypoint runs in a shell on the head, where `python` may not
    # be the interpreter that has Ray and our dependencies.
    entrypoint = [sys.executable, "jobs/batch_score.py", "jobs/demo_images", str(out), "--model", MODEL, "--overwrite"]
    command = [_script("ray"), "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO), "--"]
    done = subprocess.run(
        command + entrypoint, env=ray_head.client_env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "succeeded" in output
    assert "rows: 5 (input rows: 5)" in output  # the job's own closing summary, tailed by `ray job submit`

    rows = {row["id"]: row for row in _read_output(out)}
    assert len(rows) == 5
    assert rows["coffee.jpg"]["label"] == "espresso"
    assert rows["truncated.jpg"]["error"].startswith("truncated")


def test_ray_job_api_refuses_clients_without_the_token(ray_head: RayHead) -> None:
    """What the README's `export RAY_AUTH_MODE=token` is for: the CLI sends the token only in token mode."""
    no_mode = {k: v for k, v in ray_head.client_env.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run(
        [_script("ray"), "job", "list", "--address", ray_head.address],
        env=no_mode,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Missing authentication token" in done.stdout + done.stderr

    assert _http_status(f"{ray_head.address}/api/jobs/") == 401
    assert _http_status(f"{ray_head.address}/api/jobs/", "0" * 64) == 403
    assert _http_status(f"{ray_head.address}/api/jobs/", ray_head.token) == 200


# --- streamscore serve ------------------------------------------------------------------------------------


def test_streamscore_serve_answers_http_until_interrupted(tmp_path: Path) -> None:
    """`streamscore serve` starts its own Ray and Serve app, answers /predict, and stops cleanly on Ctrl-C."""
    from pipeline.serving.ingress import free_app_port

    ray_tmpdir = _short_tmp_dir("ss-serve-")
    port = free_app_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "--models-dir", str(MODELS_DIR), "--port", str(port)],
        cwd=REPO,
        env=_env(RAY_TMPDIR=str(ray_tmpdir)),
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
        reference = build_graph(GraphSpec(model=MODEL), ModelRepository(str(MODELS_DIR))).run([coffee]).to_pylist()[0]
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
