"""``streamscore score`` as a user runs it: subprocesses, a private local Ray, real files and ONNX Runtime."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.graph import build_graph
from pipeline.models.repository import ModelRepository
from tests.conftest import MODELS_DIR, REPO, wait_for
from tests.processes import (
    DEMO_IMAGES,
    MODEL,
    alive,
    clean_env,
    cmdline,
    console_script,
    descendants,
    ray_sessions,
    read_output,
    short_tmp_dir,
)

pytestmark = pytest.mark.slow


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    ray_sessions: list[Path]  # Ray instances this run started (an empty list: Ray never started)


@pytest.fixture
def streamscore(tmp_path: Path) -> Iterator:
    """Run ``python -m jobs.cli ARGS`` from the repository as a developer would, or, with ``cwd`` elsewhere, the
    installed ``streamscore`` console script as a user would; a Ray it starts lives in its own temp dir."""
    ray_tmpdir = short_tmp_dir("ss-cli-")

    def run(*args: str, timeout_s: float = 180, cwd: Path = REPO) -> CliRun:
        before = set(ray_sessions(ray_tmpdir))
        command = [sys.executable, "-m", "jobs.cli"] if cwd == REPO else [console_script("streamscore")]
        done = subprocess.run(
            [*command, *args],
            cwd=cwd,
            env=clean_env(RAY_TMPDIR=str(ray_tmpdir)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return CliRun(done.returncode, done.stdout, done.stderr, sorted(set(ray_sessions(ray_tmpdir)) - before))

    yield run
    shutil.rmtree(ray_tmpdir, ignore_errors=True)


@pytest.mark.parametrize("executor", ["auto", "ray"])
def test_score_demo_images(streamscore, tmp_path: Path, executor: str) -> None:
    """The README's first command, run outside the repository without --models-dir (the bundled models are
    found): every demo photo scored, the broken one kept with its error, a summary; a clean log. On this
    machine (no cluster, no GPU) ``auto`` runs the local executor and never starts Ray; ``ray`` starts one."""
    out, summary_path = tmp_path / "out", tmp_path / "summary.json"
    args = ("--model", MODEL, "--overwrite", "--summary-json", str(summary_path), "--executor", executor)
    run = streamscore("score", str(DEMO_IMAGES), str(out), *args, "--show", "5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(run.ray_sessions) == (1 if executor == "ray" else 0)  # the no-Ray checks below can see a Ray start
    # A clean run logs no ERROR line (Ray's core worker writes "[... E pid tid] file.cc:line") and, not on a
    # terminal, no colour codes. One is Ray's, once per run, documented in the README: its actors' arguments
    # sit in the object store while they may restart (ray-project/ray#53727), which Ray Data always does.
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line or re.match(r"\[.* E \d+ \d+\]", line)]
    assert [line for line in errors if "ray-project/ray/issues/53727" not in line] == []
    assert "\x1b[" not in run.stderr + run.stdout

    rows = {row["id"]: row for row in read_output(out)}
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
    wall = next(line for line in lines if line.startswith("wall time: "))
    assert "start-up included" in wall and summary["wall_s"] > summary["first_predictions_s"] > 0
    assert summary["plan"].startswith("local: 2 scoring processes" if executor == "auto" else "fused"), summary
    assert any(line.startswith("images/s once running: ") for line in lines)
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
        "score",
        str(images),
        str(out),
        "--model",
        MODEL,
        "--models-dir",
        str(MODELS_DIR),
        "--max-error-fraction",
        "0.1",
        "--summary-json",
        str(summary_path),
    )
    assert run.returncode == 3, run.stderr
    assert "3 of 4 rows failed" in run.stderr and "over the allowed 10.0%" in run.stderr
    assert "rows: 4 (input rows: 4)" in run.stdout.splitlines()  # the closing summary is still printed
    summary = json.loads(summary_path.read_text())
    assert summary["errors_by_reason"] == {"truncated": 1, "empty": 1, "not_an_image": 1}

    rows = {row["id"]: row for row in read_output(out)}
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


@pytest.mark.parametrize("command", [["score"], ["serve"], ["admin"], ["models", "list"]])
def test_help_shows_defaults_and_an_example(command: list[str]) -> None:
    done = subprocess.run(
        [console_script("streamscore"), *command, "--help"], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: streamscore {' '.join(command)}")
    assert "example: streamscore " in done.stdout
    if command == ["score"]:
        for option in ("--model", "--models-dir", "--max-error-fraction", "--summary-json", "--show", "--address"):
            assert option in done.stdout
        # Defaults come from the pydantic models, shown once, where the user reads them.
        assert "(default: pillow)" in done.stdout and "(default: 5)" in done.stdout
        assert "(default: 50000000)" in done.stdout


def test_progress_line_counts_errors_in_words() -> None:
    from jobs.batch_score import progress_line

    assert progress_line(10, 1, 20, 2.0).endswith("10/20 rows  5.0 img/s  1 error")
    assert progress_line(10, 2, None, 2.0).endswith("2 errors")
    assert progress_line(10, 0, None, 2.0).endswith("0 errors")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path: Path, executor: str) -> None:
    """SIGINT while the run is under way (its scoring processes, or Ray, started): no traceback, one line
    saying so, exit 130, and nothing it started lives on."""
    ray_tmpdir = short_tmp_dir("ss-int-")
    run = _start_score(
        _coffees(tmp_path / "images", 200), tmp_path / "out", ray_tmpdir, capture=True, executor=executor
    )
    try:
        if executor == "ray":
            wait_for(lambda: bool(ray_sessions(ray_tmpdir)) or run.poll() is not None, 120, 0.1)
        else:
            wait_for(lambda: (tmp_path / "out" / "_staging").exists() or run.poll() is not None, 120, 0.05)
        assert run.poll() is None, run.communicate()
        started = descendants(run.pid)  # the local Ray instance it is starting, or its scoring processes
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)  # within the 10 s grace, whatever the signal interrupted
        wait_for(lambda: not any(alive(pid) for pid in started), 30)  # and nothing it started lives on
    finally:
        if run.poll() is None:
            run.kill()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "streamscore: interrupted; no output was published"


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_scoring_actors_killed_mid_run_lose_no_row_and_change_no_prediction(
    tmp_path: Path, photos, executor: str
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of both scoring processes, one after the other (as the OOM killer would): Ray restarts its
    actors and retries their blocks; the local executor starts new processes and scores the rows they held one
    by one. The run completes with every row exactly once, each prediction equal to an undisturbed run."""
    ray_tmpdir = short_tmp_dir("ss-kill-")
    out, images = tmp_path / "out", tmp_path / "images"
    images.mkdir()
    names = sorted(photos)
    for i in range(600):
        Image.fromarray(photos[names[i % len(names)]]).save(images / f"{i}-{names[i % len(names)]}.jpg", quality=90)
    run = _start_score(images, out, ray_tmpdir, capture=True, executor=executor)

    def scoring_actors() -> list[int]:
        marker = "MapWorker" if executor == "ray" else "multiprocessing.spawn"
        return [pid for pid in descendants(run.pid) if marker in cmdline(pid)]

    try:
        # Once the first predictions are written, the actors are mid-run.
        wait_for(lambda: (out / "_staging" / "part-00000.parquet").exists() or run.poll() is not None, 120, 0.05)
        victims = scoring_actors()
        assert run.poll() is None and len(victims) == 2, "the run ended before its actors could be killed"
        os.kill(victims[0], signal.SIGKILL)
        if executor == "ray":  # Ray restarts its actor in seconds; the local executor's run may end first
            wait_for(lambda: bool(set(scoring_actors()) - set(victims)) or run.poll() is not None, 60, 0.05)
            assert run.poll() is None, "the run ended before the second kill"
        os.kill(victims[1], signal.SIGKILL)  # the local executor: both children at once
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert run.returncode == 0, stderr[-3000:]
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in images.iterdir())  # each row exactly once
    graph = build_graph(MODEL, ModelRepository(str(MODELS_DIR)))
    undisturbed = graph.run([(images / f"{i}-{name}.jpg").read_bytes() for i, name in enumerate(names)], names)
    expected = {r["id"]: r for r in undisturbed.to_pylist()}
    for row in rows:
        reference = expected[row["id"].split("-", 1)[1].removesuffix(".jpg")]
        assert row["error"] is None and row["label"] == reference["label"], row
        assert row["score"] == pytest.approx(reference["score"], abs=1e-5)


def test_bad_settings_exit_2_in_one_line_before_ray_starts(streamscore, tmp_path: Path) -> None:
    for flags, message in (
        (["--batch-size", "0"], "streamscore: error: bad resource settings:"),
        (["--formats", "JPG"], "streamscore: error: bad scoring options:"),
        (["--model", "../etc"], "streamscore: error: invalid model name '../etc'"),
    ):
        model = [] if "--model" in flags else ["--model", MODEL]
        run = streamscore("score", str(DEMO_IMAGES), str(tmp_path / "out"), *model, *flags)
        assert run.returncode == 2 and run.stderr.startswith(message), run.stderr
        assert "Traceback" not in run.stderr and run.ray_sessions == []


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_driver_leaves_nothing_a_reader_would_take_and_the_rerun_needs_no_overwrite(
    streamscore, tmp_path: Path, executor: str
) -> None:
    """SIGKILL of the `streamscore score` process mid-run (and of the local Ray it started; the local
    executor's processes end on their own): the folder shows readers no rows; the same command then completes
    it, and refuses to replace it once complete."""
    import pyarrow.dataset as pads

    ray_tmpdir = short_tmp_dir("ss-kdrv-")
    images, out = _coffees(tmp_path / "images", 400), tmp_path / "out"
    run = _start_score(images, out, ray_tmpdir, capture=False, executor=executor)
    try:
        wait_for(lambda: (out / "_staging" / "part-00000.parquet").exists() or run.poll() is not None, 120, 0.05)
        assert run.poll() is None, "the run ended before it could be killed"
        started = descendants(run.pid)
        run.kill()
        run.wait(timeout=30)
        if executor == "local":  # orphans finish the batch in hand, find the driver gone and exit
            wait_for(lambda: not any(alive(pid) for pid in started), 30)
        for pid in filter(alive, started):  # its local Ray goes with it, as the OOM killer's victim's would not
            os.kill(pid, signal.SIGKILL)
    finally:
        if run.poll() is None:
            run.kill()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert pads.dataset(out, format="parquet").count_rows() == 0 and not (out / "_SUCCESS").exists()

    again = streamscore("score", str(images), str(out), "--model", MODEL, "--models-dir", str(MODELS_DIR))
    assert again.returncode == 0, again.stderr
    assert pads.dataset(out, format="parquet").count_rows() == 400
    assert json.loads((out / "_SUCCESS").read_text())["rows"] == 400
    refused = streamscore("score", str(images), str(out), "--model", MODEL, "--models-dir", str(MODELS_DIR))
    assert refused.returncode == 2 and "holds a complete run" in refused.stderr


def _coffees(folder: Path, n: int) -> Path:
    """``n`` copies of the demo coffee photo: a run long enough to be interrupted."""
    folder.mkdir()
    for i in range(n):
        shutil.copy(DEMO_IMAGES / "coffee.jpg", folder / f"{i}.jpg")
    return folder


def _start_score(images: Path, out: Path, ray_tmpdir: Path, *, capture: bool, executor: str) -> subprocess.Popen:
    """``streamscore score`` in the background, its Ray in ``ray_tmpdir``; its output piped or dropped."""
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "score",
        str(images),
        str(out),
        "--model",
        MODEL,
        "--executor",
        executor,
    ]
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    env = clean_env(RAY_TMPDIR=str(ray_tmpdir))
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True)
