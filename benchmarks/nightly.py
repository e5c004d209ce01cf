"""What the nightly job costs against `score`, and what a quiet night costs.

    python -m benchmarks.nightly --json bench/nightly.json

Each step runs the real command in a fresh subprocess (a local Ray of its own, as a user's cron would):

1. ``streamscore score`` of N benchmark images (ImageNet-sized JPEGs, ``benchmarks/data.py``);
2. the first night of ``streamscore nightly`` over the same images into a new table: target within 10 % of
   ``score``'s images/s;
3. a second night after 10 % new images arrived: target under 0.2x the first night's wall time;
4. a night with nothing new over a table that already holds 100,000 inputs (hard links to one image, so
   listing is real; their rows written straight into the table): target under 5 s, and Ray is not started.
   The listing and the anti-join are timed on their own as well (per 100,000 already-scored inputs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.data import make_benchmark_images
from benchmarks.measure import REPO, measure

BENCH = REPO / "bench"


def _run(name: str, command: list[str], timeout_s: float) -> dict[str, Any]:
    log = BENCH / "logs" / f"nightly-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    figures = measure([sys.executable, "-m", "jobs.cli", *command], log, timeout_s)
    if "error" in figures and "wall_s" not in figures:
        raise SystemExit(f"{name}: {figures['error']}")
    print(f"{name:28s} {figures['wall_s']:7.1f} s  tree {figures['peak_rss_mb']:6.0f} MB  {figures.get('error', '')}")
    return figures


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _quiet_night_table(root: Path, inputs: int, model: str) -> tuple[Path, Path]:
    """A folder of ``inputs`` hard links and a table that already holds a row for each (as its first night
    would have left it)."""
    from deltalake import DeltaTable

    from pipeline.models.repository import ModelRepository
    from pipeline.nightly.fingerprints import fingerprinted
    from pipeline.nightly.scored_table import TABLE_SCHEMA, ScoredTable
    from pipeline.runs.sources import list_folder

    folder, table = root / "images", root / "scores.delta"
    shutil.rmtree(root, ignore_errors=True)
    folder.mkdir(parents=True)
    originals = sorted((BENCH / "images").glob("*/*.jpg"))[:100]  # a file takes at most 65,000 links
    for i in range(inputs):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        os.link(originals[i % len(originals)], sub / f"{i:06d}.jpg")
    listed = fingerprinted(list_folder(str(folder)))
    version = ModelRepository(str(REPO / "models")).load(model, check_graph=False).version
    now = datetime.datetime.now(datetime.UTC)
    n = listed.num_rows
    rows = {
        "id": listed.column("id"),
        "model": pa.array([model] * n),
        "model_version": pa.array([version] * n),
        "label": pa.array(["espresso"] * n),
        "score": pa.array([0.5] * n, pa.float32()),
        "top_k": pa.array([[]] * n, TABLE_SCHEMA.field("top_k").type),
        "error": pa.array([None] * n, pa.string()),
        "uri": listed.column("uri"),
        "fingerprint": listed.column("fingerprint"),
        "node_id": pa.array(["bench"] * n),
        "decode_node_id": pa.array(["bench"] * n),
        "run_id": pa.array(["bench/1"] * n),
        "run_version": pa.array([1] * n, pa.int64()),
        "scored_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        "run_date": pa.array([now.date()] * n, pa.date32()),
    }

    from pipeline.nightly.job import default_job_id

    job = default_job_id(str(folder), model)
    scored = ScoredTable(str(table))
    scored.claim(job, 1, {"run": "1", "frozen": "bench"})
    scored.commit_rows(job, 1, pa.table(rows).cast(TABLE_SCHEMA), {"run": "1"})
    assert DeltaTable(str(table)).to_pyarrow_dataset().count_rows() == inputs
    return folder, table


def _listing_and_anti_join_s(folder: Path, table: Path, model: str) -> dict[str, float]:
    from pipeline.models.repository import ModelRepository
    from pipeline.nightly.fingerprints import fingerprinted
    from pipeline.nightly.job import RETRIED_REASONS
    from pipeline.nightly.scored_table import ScoredTable
    from pipeline.runs.sources import list_folder

    version = ModelRepository(str(REPO / "models")).load(model, check_graph=False).version
    start = time.perf_counter()
    listing = list_folder(str(folder))
    listed_s = time.perf_counter() - start
    listed = fingerprinted(listing)
    done = ScoredTable(str(table)).done_keys(model, version, RETRIED_REASONS)
    read_s = time.perf_counter() - start - listed_s
    new = listed.join(done, keys=["id", "fingerprint"], join_type="left anti")
    total_s = time.perf_counter() - start
    assert new.num_rows == 0
    return {"list_s": listed_s, "read_table_s": read_s, "anti_join_s": total_s - listed_s - read_s, "total_s": total_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--quiet-inputs", type=int, default=100_000)
    parser.add_argument("--timeout-s", type=float, default=1200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = BENCH / "nightly"
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    make_benchmark_images(BENCH / "images" / str(args.images), args.images)  # kept between benchmark runs
    shutil.copytree(BENCH / "images" / str(args.images), images)
    extra = work / "arrivals"
    make_benchmark_images(extra, args.images // 10, seed=1)
    table, model = work / "scores.delta", ["--model", args.model]
    report: dict[str, Any] = {"images": args.images, "model": args.model}

    summary = work / "score.json"
    report["score"] = _run(
        "score",
        ["score", str(images), str(work / "out"), *model, "--quiet", "--summary-json", str(summary)],
        args.timeout_s,
    )
    report["score"]["images_per_s_running"] = _report(summary)["images_per_s_running"]
    first = work / "first.json"
    report["first_night"] = _run(
        "first night",
        ["nightly", str(images), str(table), *model, "--quiet", "--report-json", str(first)],
        args.timeout_s,
    )
    report["first_night"]["report"] = _report(first)
    for path in extra.iterdir():
        shutil.copy(path, images / f"new-{path.name}")
    second = work / "second.json"
    report["second_night"] = _run(
        "second night (+10 %)",
        ["nightly", str(images), str(table), *model, "--quiet", "--report-json", str(second)],
        args.timeout_s,
    )
    report["second_night"]["report"] = _report(second)

    quiet_folder, quiet_table = _quiet_night_table(work / "quiet", args.quiet_inputs, args.model)
    quiet = work / "quiet.json"
    report["quiet_night"] = _run(
        f"nothing new ({args.quiet_inputs:,})",
        ["nightly", str(quiet_folder), str(quiet_table), *model, "--report-json", str(quiet)],
        args.timeout_s,
    )
    report["quiet_night"]["report"] = _report(quiet)
    report["quiet_night"]["in_process"] = _listing_and_anti_join_s(quiet_folder, quiet_table, args.model)

    first_runs = report["first_night"]["report"]["runs"]
    night_ips = first_runs[-1]["images_per_s"]
    report["ratios"] = {
        "first_night_vs_score_wall": report["first_night"]["wall_s"] / report["score"]["wall_s"],
        "first_night_images_per_s": night_ips,
        "second_vs_first_wall": report["second_night"]["wall_s"] / report["first_night"]["wall_s"],
    }
    print(json.dumps(report["ratios"], indent=2), json.dumps(report["quiet_night"]["in_process"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
