"""Helpers for per-row work on a batch: the error column, running a kernel row by row, building new batches.

Every batch carries an ``error`` column (object array, ``None`` while the row is fine). A kernel that cannot
handle a row raises ``RowError``; ``map_rows`` writes the reason on that row and moves on, so no row is lost,
and later operators skip rows that already failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from operators.base import ERROR, Batch, RowError
from operators.reasons import Reason


def batch_length(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def errors_of(batch: Batch) -> np.ndarray:
    """The batch's error column, or a fresh all-``None`` one.

    An all-null Arrow string column can come back from Ray Data as a float (NaN) array; it means no errors.
    """
    errors = batch.get(ERROR)
    if errors is not None and errors.dtype == object:
        return errors
    return np.full(batch_length(batch), None, dtype=object)


def ok_mask(batch: Batch) -> np.ndarray:
    """True for rows that have not failed yet."""
    return np.array([e is None for e in errors_of(batch)], dtype=bool)


def map_rows(
    values: np.ndarray, errors: np.ndarray, kernel: Callable[[Any], Any], failure_reason: Reason
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``kernel`` to each row that has not failed; a failing row gets an error, never disappears.

    Returns (object array of results, new error array). ``RowError`` keeps its reason; any other exception
    from a third-party decoder becomes ``failure_reason`` with the exception's message.
    """
    results = np.full(len(values), None, dtype=object)
    new_errors = errors.copy()
    for i, value in enumerate(values):
        if errors[i] is not None:
            continue
        try:
            results[i] = kernel(value)
        except RowError as exc:
            new_errors[i] = str(exc)
        except Exception as exc:  # noqa: BLE001 - third-party decoders raise anything; the row must survive
            new_errors[i] = failure_reason.row_error(f"{type(exc).__name__}: {exc}")
    return results, new_errors


def with_columns(batch: Batch, drop: tuple[str, ...] = (), /, **columns: np.ndarray) -> Batch:
    """A new batch: ``batch`` without ``drop``, plus ``columns`` (the input batch is left untouched)."""
    out = {k: v for k, v in batch.items() if k not in drop}
    out.update(columns)
    return out


def with_errors(batch: Batch, errors: np.ndarray, drop: tuple[str, ...] = (), /, **columns: np.ndarray) -> Batch:
    """``with_columns`` plus the batch's new ``error`` column."""
    return with_columns(batch, drop, **columns, **{ERROR: errors})


def one_row(batch: Batch, i: int) -> Batch:
    """Row ``i`` of ``batch`` as a batch of one (views, no copies)."""
    return {name: column[i : i + 1] for name, column in batch.items()}


def concatenate(batches: list[Batch]) -> Batch:
    """The rows of ``batches`` (same columns, at least one batch) as one batch."""
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-D object array (``np.array`` would try to stack equal-shaped images into one block)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out
