"""The nightly table's rows: ``error_reason`` is what the retry rule reads, and a table written before that
column existed keeps working (its error rows stand; the next commit adds the column)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from operators.reasons import Reason
from pipeline.nightly.scored_table import ScoredTable, table_schema
from pipeline.output import ERROR_REASON, error_columns


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


def test_a_table_from_before_error_reason_keeps_retrying_and_gains_the_column(tmp_path: Path) -> None:
    """Rows of an earlier release have no reason of their own: theirs is read off ``error``, before the first
    commit that adds the column and after it (Delta fills old rows with null there)."""
    uri = str(tmp_path / "old.delta")
    old_schema = pa.schema([f for f in table_schema() if f.name != ERROR_REASON])
    write_deltalake(uri, _rows(ERRORS, old_schema), partition_by=["run_date"])
    table = ScoredTable(uri)
    retried = frozenset({"read_failed"})
    assert sorted(table.done_keys("digits", "1", retried).column("id").to_pylist()) == ["id-0", "id-2"]
    new = _rows([Reason.EMPTY.row_error("zero bytes")], table_schema())
    table.commit_rows("job", 1, new.set_column(0, "id", pa.array(["new-0"])), {"run": "1"})
    assert ERROR_REASON in DeltaTable(uri).to_pyarrow_dataset().schema.names
    assert sorted(table.done_keys("digits", "1", retried).column("id").to_pylist()) == ["id-0", "id-2", "new-0"]


def test_a_commit_of_another_tasks_rows_still_fails(tmp_path: Path) -> None:
    """The schema is merged only to add ``error_reason``: embedding rows never widen a classification table."""
    table = ScoredTable(str(tmp_path / "t.delta"))
    table.commit_rows("job", 1, _rows(ERRORS, table_schema()), {"run": "1"})
    embeddings = ScoredTable(str(tmp_path / "t.delta"), schema=table_schema("embedding"))
    with pytest.raises(Exception, match="(?i)schema"):
        embeddings.commit_rows("other", 1, _rows([None], table_schema("embedding")), {"run": "1"})
    assert "embedding" not in DeltaTable(str(tmp_path / "t.delta")).to_pyarrow_dataset().schema.names
