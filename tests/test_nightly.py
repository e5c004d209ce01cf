"""The nightly job on the session's real local Ray and real Delta tables: incremental and exactly once.

Kills (driver, actor, node) and concurrent runs are in ``tests/test_multi_node.py``, on a multi-node cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from pipeline.graph import build_graph
from pipeline.models.repository import ModelRepository
from pipeline.nightly.job import NightlyJob, RunReport, run_nightly
from pipeline.runs.planner import ResourceOverrides, plan_resources
from pipeline.runs.sources import FileListing, detect_source
from tests.conftest import MODELS_DIR, wait_for

pytestmark = pytest.mark.slow


def _images(folder: Path, digit_files: list[tuple[Path, int]], count: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path, _ in digit_files[start : start + count]:
        shutil.copy(path, folder / path.name)
    return folder


def _night(ray_cluster, source: str, table: Path, repository=None, model: str = "digits", **job) -> list[RunReport]:  # type: ignore[no-untyped-def]
    repository = repository or ModelRepository(str(MODELS_DIR))
    source_ = detect_source(source)
    graph = build_graph(model, repository, read_files=isinstance(source_, FileListing))
    planned = []

    def planner():  # type: ignore[no-untyped-def]
        planned.append(1)
        return plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=8))

    reports = run_nightly(NightlyJob(graph, source_, str(table), planner, job.pop("job_id", "test-job"), **job))
    for report in reports:
        report.planned = bool(planned)  # type: ignore[attr-defined]
    return reports


def _rows(table: Path) -> pa.Table:
    return DeltaTable(str(table)).to_pyarrow_table()


def test_the_first_night_scores_everything_and_the_next_nothing(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images, table = _images(tmp_path / "images", digit_files, 30), tmp_path / "scores.delta"
    (first,) = _night(ray_cluster, str(images), table)
    assert (first.outcome, first.frozen, first.scored_now, first.skipped) == ("committed", 30, 30, 0)
    rows = _rows(table)
    assert sorted(rows.column("id").to_pylist()) == sorted(p.name for p in images.iterdir())
    truth = {path.name: str(label) for path, label in digit_files[:30]}
    correct = sum(r["label"] == truth[r["id"]] for r in rows.to_pylist())
    assert correct >= 27, correct  # the digits model, on held-out digits
    assert set(rows.column("run_version").to_pylist()) == {1} and rows.column("node_id").null_count == 0
    version = DeltaTable(str(table)).version()

    (second,) = _night(ray_cluster, str(images), table)
    assert (second.outcome, second.frozen, second.skipped) == ("nothing new", 0, 30)
    assert not second.planned  # type: ignore[attr-defined]  # a night with nothing new never starts scoring
    assert DeltaTable(str(table)).version() == version


def test_the_data_stack_reads_the_table(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import duckdb
    import polars as pl
    import ray.data

    images, table = _images(tmp_path / "images", digit_files, 12), tmp_path / "scores.delta"
    _night(ray_cluster, str(images), table)
    by_polars = pl.read_delta(str(table)).filter(pl.col("error").is_null()).select("id", "label", "score")
    assert by_polars.height == 12
    duck = duckdb.connect()
    duck.register("scores", DeltaTable(str(table)).to_pyarrow_dataset())  # DuckDB scans delta-rs' Arrow dataset
    counted = duck.sql("SELECT model_version, count(*) FROM scores GROUP BY model_version").fetchall()
    assert counted == [("1", 12)]
    assert ray.data.read_delta(str(table)).count() == 12


def test_new_changed_and_new_model_version_inputs_are_scored_once(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images, table = _images(tmp_path / "images", digit_files, 30), tmp_path / "scores.delta"
    _night(ray_cluster, str(images), table)
    _images(images, digit_files, 6, start=30)  # six new files
    changed = sorted(images.iterdir())[:3]
    for path, (other, _) in zip(changed, digit_files[40:43], strict=True):
        shutil.copy(other, path)  # new content under an old name
    counts, stop = set(), threading.Event()

    def read_until_stopped() -> bool:  # a reader during the run sees the table before the commit or after it
        counts.add(DeltaTable(str(table)).to_pyarrow_dataset().count_rows())
        return stop.is_set()

    # A reader's pace (every 0.2 s): one every 20 ms took a core from the run it watches.
    reader = threading.Thread(target=wait_for, args=(read_until_stopped, 240, 0.2))
    reader.start()
    try:
        (night,) = _night(ray_cluster, str(images), table)
    finally:
        stop.set()
        reader.join()
    assert (night.frozen, night.skipped, night.scored_now) == (9, 30 - 3, 9)
    assert counts <= {30, 39} and 30 in counts
    rows = _rows(table)
    assert rows.num_rows == 39
    keys = {(r["id"], r["fingerprint"]) for r in rows.to_pylist()}
    assert len(keys) == 39  # no (id, fingerprint) twice

    repository = ModelRepository(str(tmp_path / "models"))  # the same model again, as version 2
    shutil.copytree(MODELS_DIR / "digits" / "1", tmp_path / "models" / "digits" / "1")
    shutil.copytree(MODELS_DIR / "digits" / "1", tmp_path / "models" / "digits" / "2")
    manifest = tmp_path / "models" / "digits" / "2" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": "2"}))
    (upgraded,) = _night(ray_cluster, str(images), table, repository=repository)
    assert (upgraded.model_version, upgraded.frozen, upgraded.skipped) == ("2", 36, 0)
    assert _rows(table).filter(pc.equal(pc.field("model_version"), "2")).num_rows == 36


def test_storage_failures_are_retried_and_damaged_files_are_not(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _images(tmp_path / "images", digit_files, 3)
    damaged = images / "damaged.png"
    damaged.write_bytes(digit_files[5][0].read_bytes()[:60])  # truncated: the same bytes fail the same way
    listing = tmp_path / "inputs.txt"
    names = [str(p) for p in sorted(images.iterdir())] + [str(tmp_path / "not-there-yet.png")]
    listing.write_text("\n".join(names) + "\n")
    table = tmp_path / "scores.delta"
    (first,) = _night(ray_cluster, str(listing), table)
    assert first.errors_by_reason == {"read_failed": 1, "truncated": 1}

    (second,) = _night(ray_cluster, str(listing), table)
    assert (second.frozen, second.skipped) == (1, 4)  # only the read failure is tried again
    assert second.errors_by_reason == {"read_failed": 1}
    shutil.copy(digit_files[7][0], tmp_path / "not-there-yet.png")  # the file arrives
    (third,) = _night(ray_cluster, str(listing), table)
    assert third.frozen == 1 and third.errors_by_reason == {}
    outcomes = [r["error"] is None for r in _rows(table).to_pylist() if r["id"].endswith("not-there-yet.png")]
    assert sorted(outcomes) == [False, False, True]


def test_a_content_fingerprint_ignores_a_rewrite_with_the_same_bytes(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images, table = _images(tmp_path / "images", digit_files, 8), tmp_path / "scores.delta"
    _night(ray_cluster, str(images), table, fingerprint="content")
    touched = sorted(images.iterdir())[0]
    touched.write_bytes(touched.read_bytes())  # a new modification time, the same bytes
    os.utime(touched, (time.time() + 60, time.time() + 60))
    (same,) = _night(ray_cluster, str(images), table, fingerprint="content")
    assert same.outcome == "nothing new"
    (by_metadata,) = _night(ray_cluster, str(images), table, job_id="by-metadata")
    assert by_metadata.frozen == 8  # another job id: its own fingerprints (metadata), so its own rows


@pytest.mark.parametrize("inside", ["input", "models"])
def test_the_table_may_not_overlap_the_input_or_the_models(digit_files, tmp_path: Path, inside: str) -> None:  # type: ignore[no-untyped-def]
    """Refused in one line before Ray starts (exit 2): a table among the inputs would list its own files, one
    among the models would write where every job and replica loads from."""
    import subprocess
    import sys

    from tests.conftest import REPO

    images = _images(tmp_path / "images", digit_files, 2)
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "digits", models / "digits")
    table = (images if inside == "input" else models / "digits") / "scores.delta"
    command = [
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
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "overlaps" in done.stderr, done.stderr
    assert not table.exists()


def test_parquet_rows_are_fingerprinted_by_their_bytes(ray_cluster, digit_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    def write(rows: list[tuple[str, Path]]) -> None:
        shutil.rmtree(tmp_path / "input", ignore_errors=True)
        (tmp_path / "input").mkdir()
        ids, data = [r[0] for r in rows], [r[1].read_bytes() for r in rows]
        pq.write_table(
            pa.table({"id": ids, "image": pa.array(data, pa.binary())}), tmp_path / "input" / "part-0.parquet"
        )

    rows = [(f"row-{i}", path) for i, (path, _) in enumerate(digit_files[:20])]
    write(rows)
    table = tmp_path / "scores.delta"
    (first,) = _night(ray_cluster, str(tmp_path / "input"), table)
    assert (first.frozen, first.errors_by_reason) == (20, {})
    write(rows)  # the same bytes, a new file: nothing to do
    (same,) = _night(ray_cluster, str(tmp_path / "input"), table)
    assert same.outcome == "nothing new"
    rows[3] = ("row-3", digit_files[30][0])  # new bytes under an old id
    write(rows + [("row-new", digit_files[31][0])])
    (changed,) = _night(ray_cluster, str(tmp_path / "input"), table)
    assert (changed.frozen, changed.skipped) == (2, 19)
    scored = (
        _rows(table).filter(pc.equal(pc.field("run_version"), 2)).column("id").to_pylist()
    )  # run 2: "nothing new" made none
    assert sorted(scored) == ["row-3", "row-new"]


def test_a_small_night_is_scored_without_ray_with_the_same_predictions(
    ray_cluster, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.runs.local import LOCAL_NODE

    images = _images(tmp_path / "images", digit_files, 24)
    (local,) = _night(ray_cluster, str(images), tmp_path / "local.delta", executor="local")
    assert local.outcome == "committed" and not local.planned  # type: ignore[attr-defined]
    (with_ray,) = _night(ray_cluster, str(images), tmp_path / "ray.delta")
    assert with_ray.planned  # type: ignore[attr-defined]
    by_id = {r["id"]: r for r in _rows(tmp_path / "ray.delta").to_pylist()}
    rows = _rows(tmp_path / "local.delta").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(by_id) and {r["node_id"] for r in rows} == {LOCAL_NODE}
    for row in rows:
        assert row["label"] == by_id[row["id"]]["label"]
        assert row["score"] == pytest.approx(by_id[row["id"]]["score"], abs=1e-6)


def test_a_row_that_kills_a_local_process_is_an_error_row_and_ray_never_starts(
    ray_cluster, digit_files, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The local executor isolates a row that kills its process itself (it knows which batch each child held)."""
    import numpy as np
    from PIL import Image

    from tests.crash_operator import KILL_GREY, crashing_repository

    images = _images(tmp_path / "images", digit_files, 16)
    Image.fromarray(np.full((32, 32), KILL_GREY, dtype=np.uint8)).save(images / "poison.png")
    repository = crashing_repository(tmp_path / "models")
    (night,) = _night(ray_cluster, str(images), tmp_path / "t.delta", repository=repository, executor="local")
    assert not night.planned and night.errors_by_reason == {"worker_crashed": 1}  # type: ignore[attr-defined]
    rows = _rows(tmp_path / "t.delta").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in images.iterdir())
    assert sum(r["error"] is None for r in rows) == 16
