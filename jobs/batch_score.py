"""Batch scoring entry point, for a laptop or a cluster.

    streamscore score INPUT OUTPUT --model NAME[:VERSION]
    ray job submit --working-dir . -- python jobs/batch_score.py INPUT OUTPUT --model NAME[:VERSION]

Without a cluster address (``--address`` or ``RAY_ADDRESS``, which ``ray job submit`` sets) a local Ray
instance is started for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script (ray job submit): make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.errors import ErrorBudgetExceeded, StreamScoreError  # noqa: E402
from pipeline.planner import ResourceOverrides  # noqa: E402
from pipeline.spec import DecodeOptions, GraphSpec  # noqa: E402

if TYPE_CHECKING:
    from pipeline.batch import RunSummary

logger = logging.getLogger("streamscore")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a folder (read recursively), a glob, a .txt file of URIs, or a Parquet dataset")
    parser.add_argument("output", help="output folder for the Parquet predictions (local path or URI)")
    parser.add_argument("--model", required=True, help="NAME or NAME:VERSION (latest version if omitted)")
    parser.add_argument("--models-dir", default="models", help="model repository root, path or URI (default: models)")
    parser.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local Ray")
    parser.add_argument("--input-format", default="auto", choices=["auto", "folder", "glob", "uri_list", "parquet"])
    parser.add_argument("--id-column", default="id", help="Parquet input: the id column (default: id)")
    parser.add_argument(
        "--bytes-column", default="image", help="Parquet input: the image bytes column (default: image)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder's contents")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--raw-outputs", action="store_true", help="also write the model's raw output vector")
    parser.add_argument("--decode-backend", default="pillow", choices=["pillow", "opencv"])
    parser.add_argument("--resize-backend", default="pillow", choices=["pillow", "opencv"])
    parser.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse images with more pixels")
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        default=None,
        help="fail the run (exit 3) when more than this share of rows are errors; every row is written anyway",
    )
    tuning = parser.add_argument_group("resources (derived from the cluster unless set)")
    tuning.add_argument("--layout", default="auto", choices=["auto", "fused", "split"])
    tuning.add_argument("--batch-size", type=int)
    tuning.add_argument("--preprocess-actors", type=int)
    tuning.add_argument("--inference-actors", type=int)
    tuning.add_argument("--cpus-per-preprocess-actor", type=float)
    tuning.add_argument("--cpus-per-inference-actor", type=float)
    tuning.add_argument("--gpus-per-inference-actor", type=float)
    tuning.add_argument("--ort-threads", type=int)
    tuning.add_argument("--rows-per-ort-call", type=int, help="split each batch into ORT calls of this many rows")
    tuning.add_argument("--reserved-cpus", type=float, help="CPUs kept free for Ray Data read/write tasks")
    parser.add_argument("--summary-json", help="also write the closing summary as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print the first N predictions when done")


def _overrides(args: argparse.Namespace) -> ResourceOverrides:
    return ResourceOverrides(
        layout=args.layout,
        batch_size=args.batch_size,
        preprocess_actors=args.preprocess_actors,
        inference_actors=args.inference_actors,
        cpus_per_preprocess_actor=args.cpus_per_preprocess_actor,
        cpus_per_inference_actor=args.cpus_per_inference_actor,
        gpus_per_inference_actor=args.gpus_per_inference_actor,
        ort_threads=args.ort_threads,
        rows_per_ort_call=args.rows_per_ort_call,
        reserved_cpus=args.reserved_cpus,
    )


class _Progress:
    """A one-line progress display on a terminal; silent otherwise (logs and CI stay clean)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.start = total, enabled and sys.stderr.isatty(), time.perf_counter()

    def __call__(self, rows: int, errors: int) -> None:
        if not self.enabled:
            return
        rate = rows / max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        bar = ""
        if self.total:
            filled = int(30 * rows / self.total)
            bar = "[" + "#" * filled + "." * (30 - filled) + "] "
        sys.stderr.write(f"\r{bar}{rows}{of} rows  {rate:.1f} img/s  {errors} errors")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _show(output: str, limit: int) -> None:
    import pyarrow.dataset as pads

    from pipeline.filesystems import resolve

    filesystem, path = resolve(output)
    table = pads.dataset(path, filesystem=filesystem, format="parquet").to_table().sort_by("id").slice(0, limit)
    for row in table.to_pylist():
        if row["error"]:
            print(f"{row['id']}: error: {row['error']}")
        else:
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in row["top_k"][:3])
            print(f"{row['id']}: {row['label']} ({row['score']:.3f})  top: {top}")


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); without one, start a local instance for this run.

    A local instance lives only as long as this command, so it starts without the dashboard, whose
    processes would take CPU from the actors (measured: about 3% of a 2-core machine).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # "local": never join a cluster that `ray start` left running on this machine without being asked.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    _quiet_ray_data_console()


def _quiet_ray_data_console() -> None:
    """Ray Data's per-dataset chatter on the console ("Starting execution", "Progress bars disabled") would
    bury our progress line and summary; its file log in the session's logs/ray-data folder keeps it all."""
    import ray.data  # noqa: F401 - configures Ray Data's loggers, which we then adjust

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    import ray

    from pipeline.batch import run_batch
    from pipeline.graph import build_graph
    from pipeline.models import ModelRepository
    from pipeline.planner import plan_resources
    from pipeline.sources import FileListing, detect_source
    from pipeline.writer import check_output

    # Everything that can be checked without data is checked before Ray starts.
    spec = GraphSpec(
        model=args.model,
        decode=DecodeOptions(backend=args.decode_backend, max_pixels=args.max_pixels),
        resize_backend=args.resize_backend,
        top_k=args.top_k,
        keep_raw_output=args.raw_outputs,
    )
    overrides = _overrides(args)
    source = detect_source(args.input, args.input_format, args.id_column, args.bytes_column)
    graph = build_graph(spec, ModelRepository(args.models_dir), read_files=isinstance(source, FileListing))
    check_output(args.output, args.overwrite)

    connect_ray(args.address)
    plan = plan_resources(ray.cluster_resources(), overrides)
    progress = _Progress(source.table.num_rows if isinstance(source, FileListing) else None, not args.quiet)
    try:
        summary = run_batch(
            graph,
            source,
            args.output,
            plan,
            overwrite=args.overwrite,
            max_error_fraction=args.max_error_fraction,
            on_progress=progress,
        )
    except ErrorBudgetExceeded as exc:
        progress.close()
        _report(exc.summary, args)  # the output is complete; say what is in it, then fail
        print(f"streamscore: {exc}", file=sys.stderr)
        return 3
    progress.close()
    _report(summary, args)
    return 0


def _report(summary: RunSummary, args: argparse.Namespace) -> None:
    print(summary.render())
    if args.show:
        _show(args.output, args.show)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as handle:
            json.dump({**summary.__dict__, "images_per_s": summary.images_per_s}, handle, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch_score", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except StreamScoreError as exc:
        print(f"streamscore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
