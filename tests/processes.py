"""Helpers for tests that run StreamScore as a user does: subprocesses, private Ray temp dirs, process trees.

Isolation from the session's in-process Ray (``ray_cluster`` in conftest.py) and from any other Ray on the
machine: every Ray started by these tests gets its own temp dir (``RAY_TMPDIR`` for the CLI, ``--temp-dir`` for a
head). ``ray.init()`` without an address joins the last ``ray start`` cluster recorded in the default temp dir,
so a head recorded there would be joined by the CLI runs and by conftest; recorded in its own temp dir, it is
joined only by address. ``ray stop`` is never used: it stops every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sysconfig
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

DEMO_IMAGES = REPO / "jobs" / "demo_images"
MODEL = "efficientnet-lite0"
OUTPUT_COLUMNS = {"id", "model", "model_version", "label", "score", "top_k", "error", "error_reason"}
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put the `ray` and `streamscore` console scripts

# Without these, a developer's shell could point a run at some other cluster or token.
_RAY_CLIENT_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def descendants(root: int) -> list[int]:
    """Every process started under ``root`` that still runs (psutil's walk, as the CLI's Ctrl-C uses)."""
    try:
        return [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def clean_env(**updates: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RAY_CLIENT_ENV}
    env.update(updates)
    return env


def short_tmp_dir(prefix: str) -> Path:
    """A temp dir for a Ray instance; under /tmp because Ray's Unix socket paths must stay under ~107 chars."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def console_script(name: str) -> str:
    """The console script installed with this interpreter (a venv may also see the system's packages)."""
    path = SCRIPTS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} not found in {SCRIPTS} or on PATH; run `pip install -e .`")
    return found


def read_output(folder: Path) -> list[dict]:
    table = pq.read_table(folder)
    assert set(table.column_names) == OUTPUT_COLUMNS
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def ray_sessions(ray_tmpdir: Path) -> list[Path]:
    return list((ray_tmpdir / "ray").glob("session_2*"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cmdline(pid: int) -> str:
    """A process's command line, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening yet


def kill_ray_in(ray_tmpdir: Path) -> None:
    """SIGKILL every process of the Ray instance kept in ``ray_tmpdir``, and their children (its workers):
    what a driver that was killed leaves running."""
    import signal

    marker = str(ray_tmpdir)
    mine = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker in Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace"):
                    mine.append(int(entry.name))
            except OSError:
                continue
    for pid in {p for root in mine for p in [root, *descendants(root)]}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
