"""The local executor: the graph in child processes, no Ray; every row out, exact crash isolation."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.graph import build_graph
from pipeline.runs.local import LocalScoringFailed, run_locally, score_locally
from pipeline.runs.sources import detect_source
from tests.bad_images import bad_inputs
from tests.conftest import REPO
from tests.crash_operator import (
    KILL_GREY,
    OOM_GREY,
    SEGFAULT_GREY,
    crashing_repository,
    memory_cgroup,
    times_limit_was_hit,
)
from tests.processes import cmdline, descendants


def _grey(path: Path, value: int) -> Path:
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, digit_files, count: int) -> Path:  # type: ignore[no-untyped-def]
    root.mkdir()
    for path, _ in digit_files[:count]:
        shutil.copy(path, root / path.name)
    return root


def test_every_row_comes_out_equal_to_the_in_process_graph(repository, digit_files, photos, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _folder(tmp_path / "images", digit_files, 30)
    for name, (data, _) in bad_inputs(photos["coffee"]).items():
        (images / name).write_bytes(data)
    source = detect_source(str(images))
    graph = build_graph("digits", repository, read_files=True)
    summary = run_locally(graph, source, str(tmp_path / "out"), processes=2)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert summary.rows == len(rows) == source.table.num_rows and summary.plan.startswith("local: 2 scoring")
    assert (tmp_path / "out" / "_SUCCESS").exists()
    ids = sorted(rows)
    reference = build_graph("digits", repository).run([(images / i).read_bytes() for i in ids], ids)
    for expected in reference.to_pylist():
        got = rows[expected["id"]]
        assert (got["label"], got["error"]) == (expected["label"], expected["error"])
        assert got["score"] == pytest.approx(expected["score"], abs=1e-6) if got["score"] is not None else True


def test_a_parquet_source_is_read_a_few_rows_at_a_time(repository, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = [p.name for p, _ in digit_files[:20]]
    pq.write_table(
        pa.table({"id": ids, "image": [p.read_bytes() for p, _ in digit_files[:20]]}),
        tmp_path / "in.parquet",
        row_group_size=7,
    )
    graph = build_graph("digits", repository)
    summary = run_locally(graph, detect_source(str(tmp_path / "in.parquet")), str(tmp_path / "out"), processes=2)
    table = pq.read_table(tmp_path / "out")
    assert summary.rows == 20 and sorted(table.column("id").to_pylist()) == sorted(ids)
    truth = {p.name: str(label) for p, label in digit_files[:20]}
    assert sum(r["label"] == truth[r["id"]] for r in table.to_pylist()) >= 18


def test_a_row_that_kills_its_process_is_an_error_row_and_its_batch_mates_are_scored(
    repository, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    images = _folder(tmp_path / "images", digit_files, 21)
    _grey(images / "poison-sigkill.png", KILL_GREY)  # sorted among the digits: it shares a batch with some
    _grey(images / "poison-segfault.png", SEGFAULT_GREY)
    source = detect_source(str(images))
    crashing = build_graph("digits", crashing_repository(tmp_path / "models"), read_files=True)
    tables = list(score_locally(crashing, source.table.select(["id", "uri"]), processes=2))
    rows = {r["id"]: r for t in tables for r in t.to_pylist()}
    assert len(rows) == sum(t.num_rows for t in tables) == 23  # every row exactly once
    assert "SIGKILL" in rows["poison-sigkill.png"]["error"] and rows["poison-sigkill.png"]["label"] is None
    assert rows["poison-sigkill.png"]["error"].startswith("worker_crashed: the worker process (pid ")
    assert "Segmentation fault (SIGSEGV)" in rows["poison-segfault.png"]["error"]
    plain = build_graph("digits", repository).run(
        [(images / i).read_bytes() for i in rows if not i.startswith("poison")]
    )
    labels = [r["label"] for i, r in rows.items() if not i.startswith("poison")]
    assert labels == plain.column("label").to_pylist() and all(labels)


def test_a_row_that_runs_its_process_out_of_memory_is_an_error_row(digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A real kernel OOM kill (a 64 MiB cgroup limit, v1 or v2; 1 GiB allocated on the marker image)."""
    cgroup = memory_cgroup(f"streamscore-local-oom-{tmp_path.name}", 64 * 2**20)
    if cgroup is None:
        pytest.skip("this machine gives this process no memory cgroup to make (see memory_cgroup)")
    try:
        images = _folder(tmp_path / "images", digit_files, 10)
        _grey(images / "poison-oom.png", OOM_GREY)
        crashing = build_graph("digits", crashing_repository(tmp_path / "models", oom_cgroup=cgroup), read_files=True)
        summary = run_locally(crashing, detect_source(str(images)), str(tmp_path / "out"), processes=1)
        rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
        assert summary.rows == 11 and summary.errors_by_reason == {"worker_crashed": 1}
        assert "SIGKILL" in rows["poison-oom.png"]["error"] and times_limit_was_hit(cgroup) > 0
    finally:
        cgroup.rmdir()


def test_processes_that_cannot_start_fail_the_run_with_the_reason(repository, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(repository.root + "/digits", tmp_path / "models" / "digits")
    from pipeline.models.repository import ModelRepository

    graph = build_graph("digits", ModelRepository(str(tmp_path / "models")), read_files=True)
    (tmp_path / "models" / "digits" / "1" / "model.onnx").write_bytes(b"replaced after the graph was built")
    images = _folder(tmp_path / "images", digit_files, 4)
    with pytest.raises(LocalScoringFailed, match="could not load"):
        run_locally(graph, detect_source(str(images)), str(tmp_path / "out"), processes=1)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_children_skip_pandas_yet_can_still_import_it() -> None:
    """A scoring child spares itself pandas' import (pyarrow's first array would import it); a custom operator
    that imports pandas, and pyarrow's to_pandas, still work there afterwards."""
    import subprocess
    import sys

    script = (
        "import sys, pyarrow as pa\n"
        "from pipeline.runs.local import _arrow_without_pandas\n"
        "_arrow_without_pandas()\n"
        "assert pa.table({'a': [1, 2]}).num_rows == 2 and 'pandas' not in sys.modules\n"
        "import pandas\n"
        "assert pa.table({'a': [1]}).to_pandas().shape == (1, 1)\n"
        "assert pa.Table.from_pandas(pandas.DataFrame({'x': [1]})).num_rows == 1\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.strip() == "ok", done.stderr


def _kill_scoring_children(stop: threading.Event, kills: int, killed: list[int]) -> None:
    """SIGKILL each scoring child of this process as soon as it appears (long before it is ready: its
    imports take half a second), ``kills`` of them at most."""
    while not stop.is_set() and len(killed) < kills:
        for pid in descendants(os.getpid()):
            if pid not in killed and "multiprocessing.spawn" in cmdline(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.005)


def test_children_that_keep_dying_while_starting_fail_the_run(repository, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _folder(tmp_path / "images", digit_files, 8)
    graph = build_graph("digits", repository, read_files=True)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_scoring_children, args=(stop, 50, killed))
    killer.start()
    try:
        with pytest.raises(LocalScoringFailed, match="keep dying while starting: .*SIGKILL"):
            run_locally(graph, detect_source(str(images)), str(tmp_path / "out"), processes=2)
    finally:
        stop.set()
        killer.join()
    # One death per slot is replaced; the next ends the run (a replacement may be killed before that is seen).
    assert 3 <= len(killed) <= 4
    assert not (tmp_path / "out" / "_SUCCESS").exists()
