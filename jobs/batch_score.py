"""Batch scoring entry point, for a laptop or a cluster.

    streamscore score INPUT OUTPUT --model NAME[:VERSION]
    ray job submit --working-dir . -- python jobs/batch_score.py INPUT OUTPUT --model NAME[:VERSION]

Without a cluster address (``--address`` or ``RAY_ADDRESS``, which ``ray job submit`` sets), on a machine
without a GPU, the graph runs in child processes of this command (``--executor local``: nothing to start);
``--executor ray`` starts a local Ray instance for the run instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

if __package__ in (None, ""):  # run as a script (ray job submit): make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pydantic import ValidationError  # noqa: E402

from common.errors import ConfigError, ErrorBudgetExceeded  # noqa: E402
from jobs import console  # noqa: E402
from jobs.exit_codes import ExitCode  # noqa: E402
from jobs.options import add_scoring_options, described, scoring_options  # noqa: E402
from pipeline.runs.planner import POOL_GROWTH, ResourceOverrides  # noqa: E402
from pipeline.runs.sources import Source, SourceKind, detect_source  # noqa: E402

if TYPE_CHECKING:
    from pipeline.runs.summary import RunSummary

# detect_source's own defaults, shown in --help (flags left out are not passed, so these apply).
SOURCE_DEFAULTS = {
    name: p.default for name, p in inspect.signature(detect_source).parameters.items() if p.default is not p.empty
}
EXAMPLE = "example: streamscore score jobs/demo_images out/demo --model efficientnet-lite0 --overwrite --show 5"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("input", help="a folder (read recursively), a glob, a .txt file of URIs, or a Parquet dataset")
    parser.add_argument("output", help="output folder for the Parquet predictions (local path or URI)")
    add_model_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder's contents")
    add_error_budget(parser)
    add_scoring_options(parser)
    add_resource_arguments(parser)
    add_executor_arguments(parser)
    parser.add_argument("--summary-json", help="also write the closing summary as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print the first N predictions when done")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the cluster and what INPUT is: shared by ``score`` and ``nightly``."""
    parser.add_argument(
        "--model", required=True, help="NAME or NAME:VERSION (NAME: its default version, see models list)"
    )
    console.add_models_dir(parser)
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray for this run)")
    parser.add_argument(
        "--input-format",
        choices=get_args(SourceKind),
        help=f"what INPUT is (default: {SOURCE_DEFAULTS['kind']}: from its name and contents)",
    )
    parser.add_argument("--id-column", help=f"Parquet input: the id column (default: {SOURCE_DEFAULTS['id_column']})")
    parser.add_argument(
        "--bytes-column", help=f"Parquet input: the image bytes column (default: {SOURCE_DEFAULTS['bytes_column']})"
    )


def add_error_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        help="fail the run (exit 3) when more than this share of rows are errors; every row is written anyway "
        "(default: no limit)",
    )


def add_resource_arguments(parser: argparse.ArgumentParser) -> None:
    tuning = parser.add_argument_group("resources (derived from the cluster unless set)")
    r = ResourceOverrides
    tuning.add_argument("--layout", choices=["auto", "fused", "split"], help=described(r, "layout", "actor layout"))
    tuning.add_argument("--batch-size", type=int, help="images per block")
    tuning.add_argument("--preprocess-actors", type=int)
    tuning.add_argument("--inference-actors", type=int)
    tuning.add_argument("--cpus-per-preprocess-actor", type=float)
    tuning.add_argument("--cpus-per-inference-actor", type=float)
    tuning.add_argument("--gpus-per-inference-actor", type=float)
    tuning.add_argument("--ort-threads", type=int, help="ONNX Runtime intra-op threads per inference actor")
    tuning.add_argument("--rows-per-ort-call", type=int, help="split each batch into ORT calls of this many rows")
    tuning.add_argument("--reserved-cpus", type=float, help="CPUs kept free for Ray Data read/write tasks")
    growth = f"(default: {POOL_GROWTH}x the start size)"
    tuning.add_argument("--max-preprocess-actors", type=int, help=f"how far the pool may grow as nodes join {growth}")
    tuning.add_argument("--max-inference-actors", type=int, help=f"how far the pool may grow as nodes join {growth}")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        choices=["auto", "local", "ray"],
        default="auto",
        help="where the graph runs. local: child processes of this command, no Ray (nothing to start; one machine, "
        "CPU). ray: Ray Data, on the cluster of --address or a local Ray. auto (default): ray with a cluster "
        "address, a GPU on this machine or any resource setting below; local otherwise",
    )
    parser.add_argument("--processes", type=int, help="local executor: scoring processes (default: one per core)")


def choose_executor(args: argparse.Namespace, overrides: ResourceOverrides) -> Literal["local", "ray"]:
    """``--executor``, with ``auto`` resolved: Ray where a cluster, a GPU or Ray's resource settings are in play."""
    if args.executor != "auto":
        if args.executor == "local" and (args.address or os.environ.get("RAY_ADDRESS")):
            raise ConfigError("--executor local runs on this machine; it cannot use a cluster address")
        return "local" if args.executor == "local" else "ray"
    cluster = args.address or os.environ.get("RAY_ADDRESS")
    gpu = Path("/dev/nvidia0").exists()  # Ray would place inference there; the local executor is CPU only
    ray_only = overrides.model_dump(exclude_defaults=True).keys() - LOCAL_OVERRIDES
    return "ray" if cluster or gpu or ray_only else "local"


# Resource settings the local executor honours too; any other one asks for Ray (auto).
LOCAL_OVERRIDES = {"rows_per_ort_call"}


def resource_overrides(args: argparse.Namespace) -> ResourceOverrides:
    given = {name: getattr(args, name, None) for name in ResourceOverrides.model_fields}
    try:
        return ResourceOverrides(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        raise ConfigError(f"bad resource settings: {exc}") from None


def source_of(args: argparse.Namespace) -> Source:
    given = {"kind": args.input_format, "id_column": args.id_column, "bytes_column": args.bytes_column}
    return detect_source(args.input, **{name: value for name, value in given.items() if value is not None})


class _Progress:
    """A one-line progress display on a terminal; silent otherwise (logs and CI stay clean)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.start = total, enabled and sys.stderr.isatty(), time.perf_counter()

    def __call__(self, rows: int, errors: int) -> None:
        if self.enabled:
            sys.stderr.write("\r" + progress_line(rows, errors, self.total, time.perf_counter() - self.start))
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def progress_line(rows: int, errors: int, total: int | None, seconds: float) -> str:
    from pipeline.runs.summary import plural

    bar = ""
    if total:
        filled = int(30 * rows / total)
        bar = "[" + "#" * filled + "." * (30 - filled) + "] "
    of = f"/{total}" if total else ""
    return f"{bar}{rows}{of} rows  {rows / max(seconds, 1e-9):.1f} img/s  {plural(errors, 'error')}"


def _show(output: str, limit: int) -> None:
    import pyarrow.dataset as pads

    from common.filesystems import resolve

    filesystem, path = resolve(output)
    table = pads.dataset(path, filesystem=filesystem, format="parquet").to_table().sort_by("id").slice(0, limit)
    for row in table.to_pylist():
        if row["error"]:
            print(f"{row['id']}: error: {row['error']}")
        elif "embedding" in row:
            vector = row["embedding"]
            head = ", ".join(f"{v:.3f}" for v in vector[:4])
            print(f"{row['id']}: embedding of {len(vector)} values [{head}, ...]")
        else:
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in row["top_k"][:3])
            print(f"{row['id']}: {row['label']} ({row['score']:.3f})  top: {top}")


def run(args: argparse.Namespace, started_at: float | None = None) -> int:
    from pipeline.graph import build_graph
    from pipeline.models.ref import ModelRef
    from pipeline.models.repository import ModelRepository
    from pipeline.runs._writer import check_output
    from pipeline.runs.planner import plan_resources
    from pipeline.runs.sources import FileListing

    started_at = started_at if started_at is not None else time.perf_counter()
    # Everything that can be checked without data is checked before Ray starts.
    options = scoring_options(args)
    overrides = resource_overrides(args)
    source = source_of(args)
    repository = ModelRepository(console.models_dir(args))
    graph = build_graph(ModelRef.parse(args.model), repository, options, read_files=isinstance(source, FileListing))
    check_output(args.output, args.overwrite)
    if args.processes is not None and args.processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {args.processes}")

    progress = _Progress(source.table.num_rows if isinstance(source, FileListing) else None, not args.quiet)
    publish = {
        "overwrite": args.overwrite,
        "max_error_fraction": args.max_error_fraction,
        "on_progress": progress,
        "started_at": started_at,
    }
    try:
        if choose_executor(args, overrides) == "local":
            from pipeline.runs.local import run_locally

            summary = run_locally(graph, source, args.output, args.processes, overrides.rows_per_ort_call, **publish)
        else:
            import ray  # only here: the local executor never imports Ray (about 1 s of a small run)

            from pipeline.runs.ray_data import run_batch

            console.connect_ray(args.address)
            summary = run_batch(
                graph, source, args.output, plan_resources(ray.cluster_resources(), overrides), **publish
            )
    except ErrorBudgetExceeded as exc:
        progress.close()
        _report(exc.summary, args)  # type: ignore[arg-type]  # the output is complete; say what is in it, then fail
        print(f"streamscore: {exc}", file=sys.stderr)
        return ExitCode.ERROR_BUDGET_EXCEEDED
    progress.close()
    _report(summary, args)
    return ExitCode.OK


def _report(summary: RunSummary, args: argparse.Namespace) -> None:
    print(summary.render())
    if args.show:
        _show(args.output, args.show)
    if args.summary_json:
        try:
            Path(args.summary_json).write_text(json.dumps(summary.as_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the summary to {args.summary_json}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    return console.run_script("batch_score", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
