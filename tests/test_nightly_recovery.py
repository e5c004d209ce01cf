"""``streamscore nightly`` as a scheduler runs it, on the local executor (nothing here depends on Ray): a run that
holds its claim keeps a second one out (exit 4), a claimant killed with SIGKILL is taken over by the next run,
which finishes the killed run's frozen set even when the inputs changed meanwhile; ``--retry-reasons`` and the
error budget (exit 3).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from jobs.exit_codes import ExitCode
from operators.reasons import Reason
from tests.conftest import MODELS_DIR, REPO, wait_for
from tests.crash_operator import digits_with_step
from tests.processes import alive, clean_env, descendants

JOB = "recovery-test"


def _command(images: Path, table: Path, models: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "jobs.cli", "nightly", str(images), str(table), "--model", "digits"),
        *("--models-dir", str(models), "--job-id", JOB, "--executor", "local", "--processes", "1", *extra),
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)


def _copy(digit_files: list[tuple[Path, int]], folder: Path, start: int, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for path, _ in digit_files[start : start + count]:
        shutil.copy(path, folder / path.name)
    return [path.name for path, _ in digit_files[start : start + count]]


def _rows(table: Path) -> list[dict]:
    return DeltaTable(str(table)).to_pyarrow_dataset().to_table().to_pylist()


@pytest.mark.timeout(180)
def test_a_live_claimant_keeps_others_out_and_a_killed_one_is_taken_over_with_changed_inputs(
    digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    images, table = tmp_path / "images", tmp_path / "scores.delta"
    frozen = sorted(_copy(digit_files, images, 0, 24))
    # One process, 0.25 s per row, batches of 8, shards of 4: shards 0-1 land after about 2 s, 2-3 and 4-5 at
    # 2 s steps after that. Stopped once shard 0 is there, the run is 4 s short of its commit.
    models = tmp_path / "models"
    digits_with_step(models, "sleep_per_row", seconds_per_row=0.25)
    command = _command(images, table, models, "--shard-rows", "4")
    first = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: any(table.glob("_streamscore/*/run-000001/*/shard-00000.parquet")), 60, 0.05)
        os.kill(first.pid, signal.SIGSTOP)  # alive and holding the claim, whatever it does next: deterministic
        children = descendants(first.pid)
        assert DeltaTable(str(table)).transaction_version(JOB) == 1  # claimed, not committed

        second = _run(command)
        assert second.returncode == ExitCode.IN_PROGRESS, second.stderr
        assert f"run 1 of job {JOB!r} is running here (process {first.pid})" in second.stderr
        assert DeltaTable(str(table)).transaction_version(JOB) == 1  # the claim stands, nothing committed

        os.kill(first.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), 30)  # its children finish their batch and exit

    # Between the kill and the rerun the inputs change: two new files, one frozen file rewritten, one deleted.
    new = _copy(digit_files, images, 24, 2)
    changed, deleted = frozen[0], frozen[-1]  # shard 0 (finished before the kill), shard 5 (not scored then)
    shutil.copy(digit_files[30][0], images / changed)
    later = time.time() + 60
    os.utime(images / changed, (later, later))
    (images / deleted).unlink()

    report = tmp_path / "report.json"
    rerun = _run(_command(images, table, models, "--shard-rows", "4", "--report-json", str(report), "--processes", "2"))
    assert rerun.returncode == ExitCode.OK, rerun.stderr
    resumed, after = json.loads(report.read_text())["runs"]
    assert (resumed["run_version"], resumed["resumed"], resumed["outcome"]) == (1, True, "committed")
    assert (resumed["frozen"], resumed["shards"]) == (24, 6) and 2 <= resumed["shards_reused"] <= 4
    assert resumed["errors_by_reason"] == {"read_failed": 1}  # the deleted file, still in run 1's frozen set
    assert (after["run_version"], after["resumed"], after["frozen"], after["skipped"]) == (2, False, 3, 22)

    rows = _rows(table)
    run_1 = [r for r in rows if r["run_version"] == 1]
    run_2 = [r for r in rows if r["run_version"] == 2]
    assert sorted(r["id"] for r in run_1) == frozen  # each input of the frozen set exactly once
    assert sorted(r["id"] for r in run_2) == sorted([*new, changed])
    assert len({(r["id"], r["fingerprint"]) for r in rows}) == len(rows) == 27
    fingerprints = {r["run_version"]: r["fingerprint"] for r in rows if r["id"] == changed}
    assert fingerprints[1] != fingerprints[2]  # run 2 scored the new bytes under their own fingerprint
    assert [r["error"] for r in run_1 if r["id"] == deleted][0].startswith("read_failed:")
    assert not list(table.glob("_streamscore/*/run-*"))  # committed runs leave no staging behind

    again = _run(command)
    assert again.returncode == ExitCode.OK and "run 3: nothing new" in again.stdout, again.stderr


def test_retry_reasons_choose_what_is_scored_again_and_the_error_budget_exits_3(digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = tmp_path / "images"
    names = _copy(digit_files, images, 0, 3)
    (images / "damaged.png").write_bytes(digit_files[5][0].read_bytes()[:60])  # the same bytes fail the same way
    listing = tmp_path / "inputs.txt"
    inputs = [str(images / n) for n in [*names, "damaged.png"]] + [str(tmp_path / "missing.png")]
    listing.write_text("\n".join(inputs) + "\n")
    table = tmp_path / "scores.delta"
    command = _command(listing, table, MODELS_DIR)

    budget = _run([*command, "--max-error-fraction", "0.2"])
    assert budget.returncode == ExitCode.ERROR_BUDGET_EXCEEDED, budget.stderr
    assert "2 of 5 rows failed (40.0%), over the allowed 20.0%; the rows are committed" in budget.stderr
    assert len(_rows(table)) == 5  # committed anyway, error rows included

    truncated_only = _run([*command, "--retry-reasons", "truncated", "--max-error-fraction", "1"])
    assert truncated_only.returncode == ExitCode.OK, truncated_only.stderr
    assert "in this run: 1" in truncated_only.stdout and "  truncated: 1" in truncated_only.stdout
    nothing = _run([*command, "--retry-reasons", ""])  # a night with nothing new takes no run number
    assert nothing.returncode == ExitCode.OK and "run 3: nothing new" in nothing.stdout, nothing.stderr
    default = _run(command)  # read_failed and inference_failed: the storage or the runtime failed, not the input
    assert default.returncode == ExitCode.OK and "  read_failed: 1" in default.stdout, default.stderr

    rows = DeltaTable(str(table)).to_pyarrow_dataset().to_table()
    per_run = {}
    for run in (1, 2, 3):
        ids = rows.filter(pc.field("run_version") == run).column("id").to_pylist()
        per_run[run] = sorted(Path(i).name for i in ids)
    assert per_run == {1: sorted([*names, "damaged.png", "missing.png"]), 2: ["damaged.png"], 3: ["missing.png"]}

    unknown = _run([*command, "--retry-reasons", "truncated,flaky"])
    assert unknown.returncode == ExitCode.ERROR
    assert unknown.stderr.strip().splitlines() == [
        f"streamscore: error: --retry-reasons: unknown reasons ['flaky']; reasons: {[r.value for r in Reason]}"
    ]


def _can_take_another_hostname() -> bool:
    """``unshare --uts`` (root, or a user namespace) gives a process a hostname of its own: another host, as far
    as the claim can tell."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "hostname", "ci-other-host"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.timeout(180)
@pytest.mark.skipif(not _can_take_another_hostname(), reason="needs unshare --uts to run a claimant as another host")
def test_a_claimant_on_another_host_keeps_others_out_until_its_heartbeat_is_older_than_the_lease(
    digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The claimant runs under another hostname (its own UTS namespace) and is SIGKILLed: from here its process
    cannot be seen, so only its heartbeat tells. While the heartbeat is fresh the next run exits 4; once it is
    older than the lease (``os.utime`` stands in for two minutes of silence) the next run takes run 1 over."""
    from pipeline.nightly.job import LEASE_TIMEOUT_S

    images, table = tmp_path / "images", tmp_path / "scores.delta"
    frozen = sorted(_copy(digit_files, images, 0, 16))
    models = tmp_path / "models"
    digits_with_step(models, "sleep_per_row", seconds_per_row=0.25)
    command = _command(images, table, models, "--shard-rows", "4")
    as_other_host = ["unshare", "--uts", "sh", "-c", 'hostname ci-other-host && exec "$@"', "sh", *command]
    first = subprocess.Popen(
        as_other_host,
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(table.glob("_streamscore/*/run-000001/*/shard-00000.parquet")), 60, 0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the claimant and its scoring processes, as a lost host
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    (heartbeat,) = table.glob("_streamscore/*/run-000001/heartbeat")
    assert heartbeat.read_text().startswith("ci-other-host ")

    blocked = _run(command)
    assert blocked.returncode == ExitCode.IN_PROGRESS, blocked.stderr
    assert f"run 1 of job {JOB!r} is running on ci-other-host (heartbeat" in blocked.stderr
    assert DeltaTable(str(table)).transaction_version(JOB) == 1  # the claim stands, nothing committed

    silent_since = time.time() - LEASE_TIMEOUT_S - 1
    os.utime(heartbeat, (silent_since, silent_since))
    report = tmp_path / "report.json"
    taken = _run([*command, "--report-json", str(report)])
    assert taken.returncode == ExitCode.OK, taken.stderr
    resumed, after = json.loads(report.read_text())["runs"]
    assert (resumed["run_version"], resumed["resumed"], resumed["outcome"]) == (1, True, "committed")
    assert after["outcome"] == "nothing new"
    assert resumed["shards_reused"] >= 1  # what the other host finished is kept
    rows = _rows(table)
    assert sorted(r["id"] for r in rows) == frozen and {r["run_version"] for r in rows} == {1}
