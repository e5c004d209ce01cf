"""The nightly job on a real multi-node Ray cluster on 127.0.0.1 (a head and worker raylets), with real kills.

``streamscore nightly --address`` runs as a user's driver would; the cluster outlives it (``tests/cluster_keeper.py``).
Every scenario ends with the same check: each input of the frozen set is in the table exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from deltalake import DeltaTable

from jobs.exit_codes import ExitCode
from jobs.nightly import FAULT_ENV
from tests.conftest import MODELS_DIR, REPO, wait_for
from tests.crash_operator import digits_with_step
from tests.processes import clean_env, descendants

# Over the default 300 s: a failing scenario should fail on its own deadlines (the keeper's answers, the first shard,
# each run's exit), which report the run's output, before pytest-timeout ends the whole session.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def read_line(stream: IO[str], timeout_s: float) -> str:
    """The next line of ``stream``, or a TimeoutError after ``timeout_s``: a keeper that hangs must fail the
    test, not stall CI (a bare ``readline()`` waits forever)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no answer from the cluster keeper within {timeout_s} s") from None


@dataclass
class Keeper:
    process: subprocess.Popen
    address: str
    nodes: list[str]

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(read_line(self.process.stdout, 120))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Keeper]:
    """A head (no CPUs: the driver's) and two 1-CPU worker nodes, each its own raylet."""
    command = [sys.executable, "-m", "tests.cluster_keeper", "--workers", "2", "--cpus", "1"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=clean_env(RAY_AUTH_MODE="disabled"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        started = json.loads(read_line(process.stdout, 180))
        yield Keeper(process, started["address"], started["nodes"])
    finally:
        started_pids = descendants(process.pid)
        with contextlib.suppress(OSError, BrokenPipeError):
            process.stdin.write("quit\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in started_pids:  # whatever the shutdown left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slow_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits taking 50 ms a row (a test-only step that sleeps): runs last as long as a scenario needs while
    the two cores stay free for Ray."""
    root = tmp_path_factory.mktemp("slow-models")
    digits_with_step(root, "sleep_per_row", seconds_per_row=0.05)
    return root


def _digits(folder: Path, digit_files: list[tuple[Path, int]], n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        path = digit_files[i % len(digit_files)][0]
        shutil.copy(path, folder / f"{i:04d}-{path.name}")
    return folder


def _command(cluster: Keeper, images: Path, table: Path, report: Path, models: Path = MODELS_DIR) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.cli",
        "nightly",
        str(images),
        str(table),
        "--model",
        "digits",
        "--models-dir",
        str(models),
        "--address",
        cluster.address,
        "--shard-rows",
        "20",
        "--batch-size",
        "8",
        "--report-json",
        str(report),
    ]


def _start(command: list[str], fault: str | None = None) -> subprocess.Popen:
    env = clean_env(RAY_AUTH_MODE="disabled", **({FAULT_ENV: fault} if fault else {}))
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(run: subprocess.Popen, timeout_s: float = 180) -> tuple[int, str]:
    out, _ = run.communicate(timeout=timeout_s)
    return run.returncode, out


def _shards_written(table: Path) -> int:
    return len(list((table / "_streamscore").glob("*/run-*/*/shard-*.parquet")))


@dataclass
class SlowRun:
    images: Path
    table: Path
    report: Path
    command: list[str]
    process: subprocess.Popen


def _slow_run_under_way(cluster: Keeper, models: Path, digit_files, tmp_path: Path, n: int) -> SlowRun:  # type: ignore[no-untyped-def]
    """A nightly run of ``n`` slow digits, once its first shard is written (or it ended)."""
    images, table, report = _digits(tmp_path / "images", digit_files, n), tmp_path / "t.delta", tmp_path / "r.json"
    command = _command(cluster, images, table, report, models)
    run = _start(command)
    wait_for(lambda: _shards_written(table) > 0 or run.poll() is not None, 120, 0.05)
    return SlowRun(images, table, report, command, run)


def _exactly_once(table: Path, images: Path) -> list[dict]:
    rows = DeltaTable(str(table)).to_pyarrow_table().to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in images.iterdir())
    return rows


def test_rows_are_scored_on_every_node_including_one_that_joins_mid_run(
    cluster: Keeper, slow_digits: Path, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # 40 s on two actors: long enough for Ray Data to see the new node, since its autoscaling coordinator
    # refreshes the cluster's resources every 20 s (Ray 2.60); only then may a pool grow.
    slow = _slow_run_under_way(cluster, slow_digits, digit_files, tmp_path, 1600)
    images, table, run = slow.images, slow.table, slow.process
    joined = cluster.ask("add 1")["node_id"]  # as an autoscaler or a spot replacement would
    code, out = _finish(run)
    assert code == 0, out[-3000:]
    nodes = {r["node_id"] for r in _exactly_once(table, images)}
    assert set(cluster.nodes) <= nodes, nodes  # both nodes there at the start scored rows
    assert joined in nodes  # and the pool grew onto the node that joined
    cluster.ask(f"kill {joined}")  # back to two nodes for the next tests


def test_a_worker_node_killed_mid_run_still_ends_with_every_input_once(
    cluster: Keeper, slow_digits: Path, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    slow = _slow_run_under_way(cluster, slow_digits, digit_files, tmp_path, 400)
    images, table, report, command, run = slow.images, slow.table, slow.report, slow.command, slow.process
    assert run.poll() is None, "the run ended before a node could be killed"
    victim = cluster.nodes.pop(0)
    cluster.ask(f"kill {victim}")  # its raylet and every worker on it, SIGKILL; answered once they are gone
    assert victim not in cluster.ask("nodes")["nodes"]
    # Still running once the node is gone: the kill landed mid-run, not after the run had ended.
    assert run.poll() is None, "the run ended before the kill landed: nothing was tested"
    cluster.nodes.append(cluster.ask("add 1")["node_id"])  # the cluster replaces it, as a cloud would
    code, out = _finish(run)
    # The actor on the lost node may exhaust its retries before the node is declared dead: the run then
    # stops (exit 2) and keeps its shards; the same command finishes it.
    assert code in (0, 2), out[-8000:]
    if code == 2:
        assert "run the same command again to resume it" in out, out[-3000:]
        again, out = _finish(_start(command))
        assert again == 0, out[-3000:]
        resumed = json.loads(report.read_text())["runs"][0]
        assert resumed["resumed"] and resumed["shards_reused"] >= 1
    _exactly_once(table, images)


def _actor_pids(cluster: Keeper) -> list[int]:
    found = []
    for pid in descendants(cluster.process.pid):
        try:
            if b"FusedActor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_an_inference_actor_killed_mid_run_changes_nothing(
    cluster: Keeper, slow_digits: Path, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    slow = _slow_run_under_way(cluster, slow_digits, digit_files, tmp_path, 400)
    images, table, run = slow.images, slow.table, slow.process
    wait_for(lambda: bool(_actor_pids(cluster)) or run.poll() is not None, 60, 0.05)
    assert run.poll() is None, "the run ended before an actor could be killed"
    os.kill(_actor_pids(cluster)[0], signal.SIGKILL)
    assert run.poll() is None, "the run ended before the kill landed: nothing was tested"
    code, out = _finish(run)
    assert code == 0, out[-3000:]
    truth = {path.name: str(label) for path, label in digit_files}
    rows = _exactly_once(table, images)
    assert all(r["error"] is None for r in rows)
    assert sum(r["label"] == truth[r["id"].split("-", 1)[1]] for r in rows) >= 0.9 * len(rows)


@pytest.mark.parametrize("fault", ["after_claim", "after_shards=2", "before_commit", "after_commit"])
def test_a_driver_killed_at_any_point_is_completed_by_the_same_command(
    cluster: Keeper, digit_files, tmp_path: Path, fault: str
) -> None:  # type: ignore[no-untyped-def]
    images, table, report = _digits(tmp_path / "images", digit_files, 80), tmp_path / "t.delta", tmp_path / "r.json"
    command = _command(cluster, images, table, report)
    killed, out = _finish(_start(command, fault))
    assert killed == -signal.SIGKILL, out[-3000:]
    assert DeltaTable(str(table)).to_pyarrow_dataset().count_rows() == (80 if fault == "after_commit" else 0)

    again, out = _finish(_start(command))
    assert again == 0, out[-3000:]
    runs = json.loads(report.read_text())["runs"]
    if fault == "after_commit":
        assert [r["outcome"] for r in runs] == ["nothing new"]
    else:
        resumed = runs[0]
        assert resumed["resumed"] and resumed["outcome"] == "committed" and resumed["shards"] == 4
        assert resumed["shards_reused"] == {"after_shards=2": 2, "before_commit": 4}.get(fault, 0)
        assert resumed["scored_now"] == 80 - 20 * resumed["shards_reused"]
        assert runs[1]["outcome"] == "nothing new"
    _exactly_once(table, images)
    assert not list((table / "_streamscore").glob("*/run-*"))  # the staging is gone once committed


def test_two_runs_started_at_once_overlap_and_commit_once(
    cluster: Keeper, slow_digits: Path, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Two drivers started together on one table: one commits, the other is refused (exit 4) while the first is
    still running. The refusal, given before the other run ended and naming it, is the proof that the two runs
    overlapped; one run after the other would end with "nothing new" instead (exit 0), and fail this test."""
    images, table = _digits(tmp_path / "images", digit_files, 120), tmp_path / "t.delta"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    # Slow digits (120 rows, about 3 s of scoring after the claim): the winner is still at work when the loser,
    # which never connects to Ray, reads the claim.
    runs = [_start(_command(cluster, images, table, report, slow_digits)) for report in reports]
    ended: dict[int, tuple[int, str, bool]] = {}  # run -> (exit code, output, was the other run still running)

    def finish(i: int) -> None:
        code, out = _finish(runs[i])
        ended[i] = (code, out, runs[1 - i].poll() is None)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [ended[i][0] for i in range(2)]
    assert sorted(codes) == [ExitCode.OK, ExitCode.IN_PROGRESS], [ended[i][1][-1500:] for i in range(2)]
    loser = codes.index(ExitCode.IN_PROGRESS)
    winner = 1 - loser
    _, refusal, winner_running = ended[loser]
    assert winner_running, "the refused run ended after the other one: the runs did not overlap"
    # Refused at the claim (both froze the inputs, one claimed first) or at the resume check (the claim was there).
    assert (
        "another run of this job started run 1 first" in refusal
        or f"is running here (process {runs[winner].pid})" in refusal
    ), refusal[-1500:]
    assert not reports[loser].exists()
    outcomes = [r["outcome"] for r in json.loads(reports[winner].read_text())["runs"]]
    assert outcomes == ["committed"], outcomes
    _exactly_once(table, images)


def test_labelled_nodes_take_their_role(cluster: Keeper, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """cluster.yaml and deploy/ label decode (CPU) and inference (GPU) nodes; in the split layout the
    preprocess actors then run on the decode nodes and the model on the inference nodes, never elsewhere."""
    decode, inference = (cluster.ask(f"add 1 {role}")["node_id"] for role in ("decode", "inference"))
    try:
        images, table = _digits(tmp_path / "images", digit_files, 60), tmp_path / "t.delta"
        one_each = [
            "--layout",
            "split",
            "--preprocess-actors",
            "1",
            "--max-preprocess-actors",
            "1",
            "--inference-actors",
            "1",
            "--max-inference-actors",
            "1",
            "--cpus-per-preprocess-actor",
            "0.5",
            "--cpus-per-inference-actor",
            "0.5",
        ]
        code, out = _finish(_start(_command(cluster, images, table, tmp_path / "r.json") + one_each))
        assert code == 0, out[-3000:]
        rows = _exactly_once(table, images)
        assert {r["decode_node_id"] for r in rows} == {decode}
        assert {r["node_id"] for r in rows} == {inference}
    finally:
        for node in (decode, inference):
            cluster.ask(f"kill {node}")
