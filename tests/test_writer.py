"""The Parquet writer: nothing is visible until the run commits; an incomplete attempt is replaced freely."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from common.errors import InputError
from pipeline.output import PREDICTION_SCHEMA
from pipeline.runs._writer import PredictionWriter, check_output


def _table(n: int, start: int = 0) -> pa.Table:
    rows = {name: [None] * n for name in PREDICTION_SCHEMA.names}
    rows["id"] = [str(start + i) for i in range(n)]
    rows["error"] = ["empty: zero bytes"] * n
    rows["error_reason"] = ["empty"] * n
    return pa.Table.from_pydict(rows, schema=PREDICTION_SCHEMA)


def _visible_rows(folder: Path) -> int:
    """What a reader that skips ``_``-prefixed paths (pyarrow, pandas, Spark, DuckDB, Polars) finds."""
    return pads.dataset(folder, format="parquet").count_rows()


def test_nothing_is_visible_until_commit_and_part_files_are_bounded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = PredictionWriter(str(out), rows_per_file=10)
    for i in range(3):
        writer.write(_table(8, 8 * i))
    writer.close()
    assert _visible_rows(out) == 0 and not (out / "_SUCCESS").exists()
    writer.commit({"rows": writer.rows})
    assert _visible_rows(out) == 24 and sorted(p.name for p in out.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert json.loads((out / "_SUCCESS").read_text()) == {"rows": 24} and not (out / "_staging").exists()
    assert writer.errors_by_reason == {"empty": 24}


def test_an_abandoned_attempt_is_replaced_without_overwrite_and_a_complete_run_is_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    abandoned = PredictionWriter(str(out))
    abandoned.write(_table(5))  # killed here: the part file has no footer yet
    (out / "_staging" / "part-00001.parquet").write_bytes(b"PAR1 half a file")
    assert _visible_rows(out) == 0
    check_output(str(out), overwrite=False)  # an incomplete attempt of ours: no --overwrite needed
    rerun = PredictionWriter(str(out))
    rerun.write(_table(3))
    rerun.commit({"rows": 3})
    assert _visible_rows(out) == 3
    with pytest.raises(InputError, match="holds a complete run"):
        check_output(str(out), overwrite=False)
    replaced = PredictionWriter(str(out), overwrite=True)
    assert _visible_rows(out) == 3  # the complete run stays readable until the new one commits
    replaced.write(_table(2))
    replaced.commit({"rows": 2})
    assert _visible_rows(out) == 2


def test_a_folder_that_is_not_ours_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("someone's data")
    with pytest.raises(InputError, match="is not empty; pass --overwrite"):
        check_output(str(tmp_path / "out"), overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output(str(tmp_path / "file"), overwrite=True)
