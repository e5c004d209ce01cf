"""Publishing a run: prediction tables in, one Parquet dataset out, visible only once it is whole.

Every executor (Ray Data on a cluster, the local processes on one machine) hands its tables to
``publish_run``, so the writer, the summary, the lost-rows check and the error budget are one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from common.errors import ErrorBudgetExceeded, LostRowsError, WorkerCrashedError
from pipeline.runs._writer import PredictionWriter
from pipeline.runs.sources import FileListing, Source
from pipeline.runs.summary import RunSummary


def publish_run(
    tables: Iterable[pa.Table],
    source: Source,
    output_uri: str,
    plan: str,
    *,
    overwrite: bool = False,
    max_error_fraction: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    started_at: float | None = None,
) -> RunSummary:
    """Write ``tables`` (the scored rows of ``source``, as they come) to ``output_uri`` and publish them.

    Every input row comes out, as a prediction or with an ``error``. When ``max_error_fraction`` is set and
    the share of error rows passes it, the output is still written in full and ``ErrorBudgetExceeded`` is
    raised afterwards. ``started_at`` (a ``time.perf_counter()`` value) is when the user started waiting,
    e.g. before Ray started; the summary's wall time counts from there (default: this call).
    """
    input_rows = input_row_count(source)
    writer = PredictionWriter(output_uri, overwrite=overwrite)
    start = started_at if started_at is not None else time.perf_counter()
    first_s: float | None = None
    first_rows = 0
    try:
        for table in tables:
            writer.write(table)
            if first_s is None and table.num_rows:
                first_s, first_rows = time.perf_counter() - start, table.num_rows
            if on_progress is not None:
                on_progress(writer.rows, writer.error_rows)
    except WorkerCrashedError as exc:
        raise WorkerCrashedError(
            f"{exc}; nothing was published in {output_uri} (the next run replaces this attempt)"
        ) from exc.__cause__
    finally:
        writer.close()
    summary = RunSummary(
        input_rows=input_rows,
        rows=writer.rows,
        error_rows=writer.error_rows,
        errors_by_reason=dict(writer.errors_by_reason),
        wall_s=time.perf_counter() - start,
        first_predictions_s=first_s,
        rows_after_first=writer.rows - first_rows,
        plan=plan,
        output=output_uri,
    )
    if summary.rows != input_rows:
        raise LostRowsError(f"lost rows: {input_rows} in, {summary.rows} out; please report this as a bug")
    writer.commit(summary.as_json())  # the dataset becomes visible, with _SUCCESS, only now
    check_error_budget(summary.rows, summary.error_rows, max_error_fraction, summary)
    return summary


def input_row_count(source: Source) -> int:
    """The rows a run of ``source`` must put out: the listing's, or the Parquet dataset's, counted from its
    footers (nothing decoded), only the ``only_ids`` rows when set. Read the way the executors read it."""
    if isinstance(source, FileListing):
        return source.table.num_rows
    return source.count_rows()


def check_error_budget(rows: int, error_rows: int, max_error_fraction: float | None, summary: Any) -> None:
    """Raise ``ErrorBudgetExceeded`` (carrying ``summary``) when the share of error rows passes the limit."""
    if max_error_fraction is not None and rows and error_rows / rows > max_error_fraction:
        raise ErrorBudgetExceeded(
            f"{error_rows} of {rows} rows failed ({error_rows / rows:.1%}), over the allowed "
            f"{max_error_fraction:.1%}; the output holds every row with its error",
            summary,
        )
