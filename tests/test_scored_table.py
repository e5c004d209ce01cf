"""The nightly table's rows: ``error_reason`` is what the retry rule reads, and a table written before that
column existed keeps working (its error rows stand; the next commit adds the column)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from operators.reasons import Reason
from pipeline.output import ERROR_REASON, error_columns
from pipeline.scored_table import ScoredTable, table_schema


def _rows(errors: list[str | None], schema: pa.Schema) -> pa.Table:
    n = len(errors)
    columns: dict[str, pa.Array] = {}
    error, reason = error_columns(errors)
    for field in schema:
        if field.name == "error":
            columns[field.name] = error
        elif field.name == ERROR_REASON:
            columns[field.name] = reason
        elif field.name in ("id", "uri", "fingerprint"):
            columns[field.name] = pa.array([f"{field.name}-{i}" for i in range(n)], pa.string())
        elif field.name == "model":
            columns[field.name] = pa.array(["digits"] * n, pa.string())
        elif field.name == "model_version":
            columns[field.name] = pa.array(["1"] * n, pa.string())
        elif field.name == "run_date":
            columns[field.name] = pa.array([dt.date(2026, 12, 5)] * n, pa.date32())
        else:
            columns[field.name] = pa.nulls(n, field.type)
    return pa.Table.from_pydict(columns, schema=schema)


ERRORS = [None, Reason.READ_FAILED.row_error("timed out"), Reason.TRUNCATED.row_error("ends early")]


def test_error_reason_is_the_reason_alone_and_drives_the_retry_rule(tmp_path: Path) -> None:
    table = ScoredTable(str(tmp_path / "t.delta"))
    table.commit_rows("job", 1, _rows(ERRORS, table_schema()), {"run": "1"})
    written = DeltaTable(str(tmp_path / "t.delta")).to_pyarrow_dataset().to_table().sort_by("id")
    assert written.column(ERROR_REASON).to_pylist() == [None, "read_failed", "truncated"]
    done = table.done_keys("digits", "1", frozenset({"read_failed"}))
    assert sorted(done.column("id").to_pylist()) == ["id-0", "id-2"]  # the read failure is scored again


def test_a_table_from_before_error_reason_keeps_working_and_gains_the_column(tmp_path: Path) -> None:
    uri = str(tmp_path / "old.delta")
    old_schema = pa.schema([f for f in table_schema() if f.name != ERROR_REASON])
    write_deltalake(uri, _rows(ERRORS, old_schema), partition_by=["run_date"])
    table = ScoredTable(uri)
    done = table.done_keys("digits", "1", frozenset({"read_failed"}))
    assert done.num_rows == 3  # no reason column: every outcome stands
    table.commit_rows("job", 1, _rows([Reason.EMPTY.row_error("zero bytes")], table_schema()), {"run": "1"})
    reasons = DeltaTable(uri).to_pyarrow_dataset().to_table().column(ERROR_REASON).to_pylist()
    assert sorted(reasons, key=str) == sorted([None, None, None, "empty"], key=str)
