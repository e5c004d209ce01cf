"""The prediction table: one row per input, with a prediction or an error, never neither.

Columns: ``id``, ``model``, ``model_version``, then the answer, then ``error`` (null when the row was scored: the
reason and its detail, for people) and ``error_reason`` (the reason alone, one of ``operators.reasons.Reason``:
what summaries count, nightly's retry rule filters on, and a user groups by, without parsing ``error``).
A classifier answers ``label``, ``score`` and ``top_k`` (list of {label, score}), optionally ``raw_output`` (the
model's output vector); an embedding model answers ``embedding`` (list<float32>).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators._rows import errors_of, ok_mask
from operators.base import ERROR, Batch
from operators.reasons import reason_of

if TYPE_CHECKING:
    from pipeline.models.repository import ModelVersion

TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
EMBEDDING_TYPE = pa.list_(pa.float32())
_KEYS = [("id", pa.string()), ("model", pa.string()), ("model_version", pa.string())]
ERROR_REASON = "error_reason"
_ERRORS = [(ERROR, pa.string()), (ERROR_REASON, pa.string())]
PREDICTION_SCHEMA = pa.schema(
    [*_KEYS, ("label", pa.string()), ("score", pa.float32()), ("top_k", TOP_K_TYPE), *_ERRORS]
)
EMBEDDING_SCHEMA = pa.schema([*_KEYS, ("embedding", EMBEDDING_TYPE), *_ERRORS])


def prediction_schema(task: str) -> pa.Schema:
    """The table's columns for a model's ``task`` ("classification" or "embedding")."""
    return EMBEDDING_SCHEMA if task == "embedding" else PREDICTION_SCHEMA


def error_columns(errors: Iterable[str | None]) -> list[pa.Array]:
    """``error`` and ``error_reason``: the one place a row's reason is read off its error value (operators
    write it as ``"<reason>: <detail>"``, ``Reason.row_error``)."""
    values = list(errors)
    reasons = [None if e is None else reason_of(e).value for e in values]
    return [pa.array(values, pa.string()), pa.array(reasons, pa.string())]


def fill_error_reasons(table: pa.Table) -> pa.Table:
    """``table`` with ``error_reason`` set wherever ``error`` is: rows written before the column existed (a
    nightly shard or Delta table of an earlier release) get theirs read off ``error``, as ``error_columns``
    does, so old failures are counted and retried like new ones."""
    errors = table.column(ERROR)
    present = ERROR_REASON in table.column_names
    reasons = table.column(ERROR_REASON) if present else pa.nulls(table.num_rows, pa.string())
    missing = pc.and_(pc.is_null(reasons), pc.is_valid(errors))
    if present and not pc.any(missing).as_py():
        return table
    filled = pc.if_else(missing, error_columns(errors.to_pylist())[1], reasons)
    if present:
        return table.set_column(table.column_names.index(ERROR_REASON), ERROR_REASON, filled)
    return table.append_column(ERROR_REASON, filled)


def predictions_table(batch: Batch, model: ModelVersion) -> pa.Table:
    """Convert a postprocessed batch into the prediction table (vectorized: no per-row dicts)."""
    n = len(batch["id"])
    errors = errors_of(batch)
    ok = ok_mask(batch)
    keys = [
        pa.array([str(i) for i in batch["id"]], pa.string()),
        pa.array(np.full(n, model.name, dtype=object), pa.string()),
        pa.array(np.full(n, model.version, dtype=object), pa.string()),
    ]
    if "embedding" in batch:
        vectors = batch["embedding"]
        width = vectors.shape[1] if vectors.ndim == 2 else 0
        offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32) if width else np.zeros(n + 1, np.int32))
        values = pa.array(vectors.reshape(-1), pa.float32())
        embedding = pa.ListArray.from_arrays(offsets, values, type=EMBEDDING_TYPE, mask=pa.array(~ok))
        return pa.Table.from_arrays([*keys, embedding, *error_columns(errors)], schema=EMBEDDING_SCHEMA)
    top_index = batch["top_k_index"]
    k = top_index.shape[1] if top_index.ndim == 2 else 0
    labels = pa.array(model.labels, pa.string())
    flat_index = pa.array(np.where(top_index >= 0, top_index, 0).reshape(-1), pa.int32())
    struct = pa.StructArray.from_arrays(
        [labels.take(flat_index), pa.array(batch["top_k_score"].reshape(-1), pa.float32())], names=["label", "score"]
    )
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))
    top_k = pa.ListArray.from_arrays(offsets, struct, type=TOP_K_TYPE, mask=pa.array(~ok))
    columns = [
        *keys,
        pa.array(batch["label"], pa.string(), mask=~ok),
        pa.array(batch["score"], pa.float32(), mask=~ok),
        top_k,
        *error_columns(errors),
    ]
    table = pa.Table.from_arrays(columns, schema=PREDICTION_SCHEMA)
    if "raw_output" in batch:
        raw = batch["raw_output"]
        table = table.append_column("raw_output", pa.FixedSizeListArray.from_arrays(raw.reshape(-1), raw.shape[1]))
    return table
