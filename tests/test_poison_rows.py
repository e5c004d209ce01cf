"""Rows that kill their worker process (SIGKILL, a segfault in native code), on a real local Ray: each becomes a
``worker_crashed`` error row, its siblings are scored as in an undisturbed run, and the run ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.errors import WorkerCrashedError
from pipeline.graph import build_graph
from pipeline.runs._isolation import MAX_TASK_RETRIES
from pipeline.runs.planner import ResourceOverrides, plan_resources
from pipeline.runs.ray_data import run_batch
from pipeline.runs.sources import detect_source
from tests.crash_operator import (
    KILL_GREY,
    OOM_GREY,
    SEGFAULT_GREY,
    crashing_repository,
    memory_cgroup,
    times_limit_was_hit,
)

pytestmark = pytest.mark.slow


def _grey(path: Path, value: int) -> Path:
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_a_row_that_kills_its_worker_becomes_an_error_row_and_the_rest_are_scored(
    ray_cluster, repository, digit_files, tmp_path: Path, layout: str
) -> None:  # type: ignore[no-untyped-def]
    images = tmp_path / "images"
    images.mkdir()
    for path, _ in digit_files[:40]:
        shutil.copy(path, images / path.name)
    _grey(images / "poison-sigkill.png", KILL_GREY)
    _grey(images / "poison-segfault.png", SEGFAULT_GREY)
    source = detect_source(str(images))
    plan = plan_resources(ray_cluster, ResourceOverrides(layout=layout, batch_size=8))

    crashing = build_graph("digits", crashing_repository(tmp_path / "models"), read_files=True)
    summary = run_batch(crashing, source, str(tmp_path / "out"), plan)
    plain = build_graph("digits", repository, read_files=True)
    run_batch(plain, source, str(tmp_path / "undisturbed"), plan)

    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    undisturbed = {r["id"]: r for r in pq.read_table(tmp_path / "undisturbed").to_pylist()}
    assert summary.rows == len(rows) == 42 == source.table.num_rows  # every row exactly once
    assert summary.errors_by_reason == {"worker_crashed": 2}
    assert rows["poison-sigkill.png"]["error"].startswith("worker_crashed: the worker process (pid ")
    assert "SIGKILL" in rows["poison-sigkill.png"]["error"]
    assert "Segmentation fault" in rows["poison-segfault.png"]["error"]
    for row_id, row in rows.items():
        if not row_id.startswith("poison-"):
            assert row["error"] is None, row
            assert row["label"] == undisturbed[row_id]["label"]
            assert row["score"] == pytest.approx(undisturbed[row_id]["score"], abs=1e-6)


def test_a_row_that_runs_its_worker_out_of_memory_becomes_an_error_row(
    ray_cluster, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A real out-of-memory kill: on its marker image the worker joins a memory cgroup limited to 64 MiB and
    allocates 1 GiB; the kernel's OOM killer ends it, as it would a worker decoding too much under a
    container's limit. The row is a worker_crashed error row; the others are scored."""
    cgroup = memory_cgroup(f"streamscore-oom-{tmp_path.name}", 64 * 2**20)
    if cgroup is None:
        pytest.skip("this machine gives this process no memory cgroup to make (see memory_cgroup)")
    try:
        images = tmp_path / "images"
        images.mkdir()
        for path, _ in digit_files[:12]:
            shutil.copy(path, images / path.name)
        _grey(images / "poison-oom.png", OOM_GREY)
        plan = plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=8))
        crashing = build_graph("digits", crashing_repository(tmp_path / "models", oom_cgroup=cgroup), read_files=True)
        summary = run_batch(crashing, detect_source(str(images)), str(tmp_path / "out"), plan)
        rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
        assert summary.rows == len(rows) == 13 and summary.errors_by_reason == {"worker_crashed": 1}
        assert "SIGKILL" in rows["poison-oom.png"]["error"], rows["poison-oom.png"]
        assert times_limit_was_hit(cgroup) > 0  # the limit was what stopped it
    finally:
        cgroup.rmdir()


def test_a_block_with_more_poison_rows_than_retries_ends_the_run(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each poison row costs a worker death; past MAX_TASK_RETRIES deaths for one block the run stops, with a
    message, and publishes nothing, rather than going on dying."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(MAX_TASK_RETRIES):  # with the block's first death, one more than its retries
        _grey(images / f"poison-{i}.png", KILL_GREY)
    shutil.copy(digit_files[0][0], images / digit_files[0][0].name)
    plan = plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=16))
    crashing = build_graph("digits", crashing_repository(tmp_path / "models"), read_files=True)
    with pytest.raises(WorkerCrashedError, match="nothing was published") as raised:
        run_batch(crashing, detect_source(str(images)), str(tmp_path / "out"), plan)
    assert "poison-" in str(raised.value)  # it names the inputs it found killing workers
    assert not (tmp_path / "out" / "_SUCCESS").exists()
