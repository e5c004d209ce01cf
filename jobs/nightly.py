"""Nightly scoring entry point: score what is new or changed into a Delta Lake table, exactly once.

    streamscore nightly SOURCE TABLE --model NAME[:VERSION]
    ray job submit --working-dir . -- python jobs/nightly.py SOURCE TABLE --model NAME[:VERSION]

Run it as often as you like (cron, a Kubernetes CronJob, a KubeRay RayCronJob): each run scores the inputs whose
(id, fingerprint, model version) the table does not hold yet, commits them in one Delta commit, and a run that
was killed is finished by running the same command again. Exit status: 0 done (or nothing new), 2 an error,
3 the share of error rows passed --max-error-fraction (the rows are committed anyway), 4 another run of this
job is in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

if __package__ in (None, ""):  # run as a script (ray job submit): make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.errors import ConfigError  # noqa: E402
from jobs import console  # noqa: E402
from jobs.batch_score import (  # noqa: E402
    add_error_budget,
    add_executor_arguments,
    add_model_arguments,
    add_resource_arguments,
    choose_executor,
    resource_overrides,
    source_of,
)
from jobs.exit_codes import ExitCode  # noqa: E402
from jobs.options import add_scoring_options, scoring_options  # noqa: E402
from pipeline.nightly.fingerprints import FingerprintMode  # noqa: E402

EXAMPLE = "example: streamscore nightly jobs/demo_images out/nightly.delta --model efficientnet-lite0"
# Test hook (README): the nightly run SIGKILLs itself at this point (``pipeline.nightly.job.FAULT_POINTS``).
FAULT_ENV = "STREAMSCORE_NIGHTLY_FAULT"


# Measured on 2 cores: Ray's start-up (about 8 s) is worth it from about a thousand images on.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.nightly.job import DEFAULT_SHARD_ROWS, RETRIED_REASONS

    parser.epilog = EXAMPLE
    parser.add_argument(
        "input", help="a folder (read recursively), a glob, a .txt file of URIs, or a Parquet dataset of image bytes"
    )
    parser.add_argument("table", help="the Delta Lake table (a folder or URI; made on the first run)")
    add_model_arguments(parser)
    parser.add_argument(
        "--job-id", help="the job's application id in the table (default: from the model name and INPUT)"
    )
    parser.add_argument(
        "--fingerprint",
        choices=get_args(FingerprintMode),
        default="metadata",
        help="what makes an input changed: its size and modification time (default), or a hash of its bytes",
    )
    parser.add_argument(
        "--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="rows per resumable shard (default: %(default)s)"
    )
    parser.add_argument(
        "--retry-reasons",
        default=",".join(sorted(RETRIED_REASONS)),
        help="error reasons scored again on the next run, comma-separated (default: %(default)s)",
    )
    add_executor_arguments(parser)
    add_error_budget(parser)
    add_scoring_options(parser)
    add_resource_arguments(parser)
    parser.add_argument("--report-json", help="also write the run report as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace, started_at: float | None = None) -> int:
    from operators.reasons import Reason
    from pipeline.graph import build_graph
    from pipeline.models.ref import ModelRef
    from pipeline.models.repository import ModelRepository
    from pipeline.nightly.job import NightlyJob, RunInProgressError, default_job_id, run_nightly
    from pipeline.runs.planner import ResourcePlan, plan_resources
    from pipeline.runs.sources import FileListing

    started_at = started_at if started_at is not None else time.perf_counter()
    options = scoring_options(args)
    overrides = resource_overrides(args)
    source = source_of(args)
    if args.shard_rows < 1:
        raise ConfigError("--shard-rows must be at least 1")
    retried = frozenset(r.strip() for r in args.retry_reasons.split(",") if r.strip())
    unknown = sorted(retried - {r.value for r in Reason})
    if unknown:
        raise ConfigError(f"--retry-reasons: unknown reasons {unknown}; reasons: {[r.value for r in Reason]}")
    models_dir = console.models_dir(args)
    check_table_location(args.table, {"INPUT": args.input, "the model repository": models_dir})
    repository = ModelRepository(models_dir)
    ref = ModelRef.parse(args.model)
    graph = build_graph(ref, repository, options, read_files=isinstance(source, FileListing))

    def planner() -> ResourcePlan:
        import ray  # only when a run scores with Ray: the local executor and "nothing new" never import it

        console.connect_ray(args.address)
        return plan_resources(ray.cluster_resources(), overrides)

    job = NightlyJob(
        graph=graph,
        source=source,
        table_uri=args.table,
        planner=planner,
        job_id=args.job_id or default_job_id(args.input, ref.name),
        fingerprint=args.fingerprint,
        shard_rows=args.shard_rows,
        retried_reasons=retried,
        executor=choose_executor(args, overrides),
        processes=args.processes,
        fault_point=os.environ.get(FAULT_ENV) or None,
    )
    try:
        reports = run_nightly(job)
    except RunInProgressError as exc:
        print(f"streamscore: {exc}", file=sys.stderr)
        return ExitCode.IN_PROGRESS
    for report in reports:
        print(report.render())
    total_s = time.perf_counter() - started_at
    print(f"total wall time: {total_s:.1f} s (from the command's start; Ray's start-up included when it started)")
    if args.report_json:
        body = {"runs": [r.as_json() for r in reports], "wall_s": total_s}
        try:
            Path(args.report_json).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the report to {args.report_json}: {exc.strerror}") from None
    rows = sum(r.frozen for r in reports if r.outcome == "committed")
    errors = sum(sum(r.errors_by_reason.values()) for r in reports if r.outcome == "committed")
    if args.max_error_fraction is not None and rows and errors / rows > args.max_error_fraction:
        print(
            f"streamscore: {errors} of {rows} rows failed ({errors / rows:.1%}), over the allowed "
            f"{args.max_error_fraction:.1%}; the rows are committed with their errors",
            file=sys.stderr,
        )
        return ExitCode.ERROR_BUDGET_EXCEEDED
    return ExitCode.OK


def _location(uri: str) -> str:
    """A comparable form of a path or URI: real absolute paths for local ones, normalised ``scheme://`` ones."""
    if "://" not in uri or uri.startswith("file://"):
        return os.path.realpath(uri.removeprefix("file://")).rstrip("/") + "/"
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}/"


def check_table_location(table: str, others: dict[str, str]) -> None:
    """The table may not lie inside the input or the model repository, nor they inside it: a run would then
    list its own files as inputs, or write among the models that every job and replica loads."""
    where = _location(table)
    for name, other in others.items():
        place = _location(other.split("*", 1)[0] if "*" in other else other)
        if where.startswith(place) or place.startswith(where):
            raise ConfigError(f"the table {table} overlaps {name} ({other}); give it a place of its own")


def main(argv: Sequence[str] | None = None) -> int:
    return console.run_script("nightly", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
