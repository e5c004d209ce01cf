"""Rows in == rows out, checked at the end of every run (README, "Bad input loses nothing"): a run that loses a
row fails with ``LostRowsError`` and publishes nothing, whatever the input (a folder, a Parquet dataset) and
whichever executor scored it.

The row is lost for real: the model's own ``drop_on_marker`` step (``tests/crash_operator.py``) removes the row of
a solid-grey marker image from its batch, as an operator with a bug would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.exit_codes import ExitCode
from tests.conftest import REPO
from tests.crash_operator import DROP_GREY, digits_with_step
from tests.processes import clean_env

LOST = "streamscore: error: lost rows: 7 in, 6 out; please report this as a bug"


@pytest.fixture
def inputs(digit_files, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """(a folder of 6 digits and the marker, the same 7 images as a Parquet dataset, the model repository)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path, _ in digit_files[:6]:
        shutil.copy(path, folder / path.name)
    Image.fromarray(np.full((32, 32), DROP_GREY, dtype=np.uint8)).save(folder / "marker.png")
    files = sorted(folder.iterdir())
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    table = pa.table({"id": [p.name for p in files], "image": pa.array([p.read_bytes() for p in files], pa.binary())})
    pq.write_table(table.slice(0, 4), parquet / "part-0.parquet")
    pq.write_table(table.slice(4), parquet / "part-1.parquet")
    models = tmp_path / "models"
    digits_with_step(models, "drop_on_marker")
    return folder, parquet, models


def _score(source: Path, out: Path, models: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("score", str(source), str(out), "--models-dir", str(models), *extra)


def _cli(command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``streamscore COMMAND ... --model digits`` on the local executor, one scoring process."""
    argv = [sys.executable, "-m", "jobs.cli", command, *args, "--model", "digits", "--executor", "local"]
    return subprocess.run(
        [*argv, "--processes", "1"], cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_a_lost_row_fails_the_run_and_publishes_nothing(inputs, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    folder, parquet, models = inputs
    out = tmp_path / "out"
    done = _score(folder if kind == "folder" else parquet, out, models)
    assert done.returncode == ExitCode.ERROR, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == LOST
    assert not (out / "_SUCCESS").exists() and not list(out.glob("*.parquet"))  # readers see nothing

    # Without the marker the same model loses nothing: the check counts rows, it does not fail every run.
    (folder / "marker.png").unlink()
    kept = pq.read_table(parquet).filter(pa.compute.not_equal(pa.compute.field("id"), "marker.png"))
    shutil.rmtree(parquet)
    parquet.mkdir()
    pq.write_table(kept, parquet / "part-0.parquet")
    clean = _score(folder if kind == "folder" else parquet, out, models)
    assert clean.returncode == ExitCode.OK, clean.stderr
    assert "rows: 6 (input rows: 6)" in clean.stdout.splitlines()
    assert pq.read_table(out).num_rows == 6 and (out / "_SUCCESS").exists()


@pytest.mark.timeout(180)
def test_ray_data_runs_check_parquet_rows_too(ray_cluster, inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The Ray executor's tables go through the same check (``publish_run``), Parquet read by Ray Data."""
    from common.errors import LostRowsError
    from pipeline.graph import build_graph
    from pipeline.models.repository import ModelRepository
    from pipeline.runs.planner import ResourceOverrides, plan_resources
    from pipeline.runs.ray_data import run_batch
    from pipeline.runs.sources import detect_source

    _, parquet, models = inputs
    graph = build_graph("digits", ModelRepository(str(models)))
    plan = plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=4))
    out = tmp_path / "ray-out"
    with pytest.raises(LostRowsError, match="lost rows: 7 in, 6 out"):
        run_batch(graph, detect_source(str(parquet)), str(out), plan)
    assert not (out / "_SUCCESS").exists() and not list(out.glob("*.parquet"))


def test_a_nightly_run_that_loses_a_row_commits_nothing_and_starts_no_ray(inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The nightly job checks its shards against the frozen set: a lost row leaves its shard unfinished, and the
    run ends with the error (exit 2) before its commit. (It used to hand the missing rows to a Ray it started,
    then fail with a FileNotFoundError traceback, exit 1.)"""
    from deltalake import DeltaTable

    from tests.processes import ray_sessions, short_tmp_dir

    folder, _, models = inputs
    table, ray_tmpdir = tmp_path / "scores.delta", short_tmp_dir("ss-lost-")
    try:
        args = (str(folder), str(table), "--models-dir", str(models), "--job-id", "lost", "--shard-rows", "4")
        done = _cli("nightly", *args, RAY_TMPDIR=str(ray_tmpdir))
        assert done.returncode == ExitCode.ERROR, done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            "streamscore: error: run 1: lost rows: 1 of its 2 shards never got all their rows back from scoring "
            "(the first: shard 1); please report this as a bug"
        )
        assert ray_sessions(ray_tmpdir) == []
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    delta = DeltaTable(str(table))
    assert delta.transaction_version("lost") == 1  # claimed, never committed
    assert delta.to_pyarrow_dataset().count_rows() == 0
