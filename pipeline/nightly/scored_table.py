"""The nightly job's Delta Lake table (delta-rs): predictions and what they were made from, one commit per run.

Exactly-once rests on Delta's application transactions, not on a ledger of ours. A job has an application id;
its run ``v`` commits twice, each commit carrying a transaction version for that id:

- ``2v - 1``, the **claim**: no rows, only the transaction and, in the commit's metadata, the digest of the
  run's frozen input set and who claimed it. Two runs that start at once both try it from the same table
  version; Delta lets one commit, and the other gets a conflict (``RunTakenError``). A new table is first made
  by an empty commit of its own, so that even the first claims have a version to conflict on.
- ``2v``, the **rows**: every row of the run, in one commit. A reader sees the table before it or after it.
  A run that was committed can never be committed again: the transaction version says so before the commit
  is tried, and Delta's conflict check refuses a second commit for the same id made at the same time.

So the job's transaction version alone tells where it stands: even (``2v``) means run ``v`` is done; odd
(``2v - 1``) means run ``v`` was claimed and not committed, and the next start resumes it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from common.errors import StreamScoreError
from operators.base import ERROR
from pipeline.output import ERROR_REASON, fill_error_reasons, prediction_schema

METADATA_PREFIX = "streamscore."
# Columns the nightly table adds to the prediction columns.
RUN_COLUMNS = [
    ("uri", pa.string()),
    ("fingerprint", pa.string()),
    ("node_id", pa.string()),  # the Ray node that ran the model on the row
    ("decode_node_id", pa.string()),  # the one that decoded it (the same in the fused layout)
    ("run_id", pa.string()),
    ("run_version", pa.int64()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
    ("run_date", pa.date32()),
]
PARTITION_BY = ["run_date"]


def table_schema(task: str = "classification") -> pa.Schema:
    """The nightly table's columns for a model's task: its prediction columns, then the run's. A table holds
    one task's rows (the first claim creates it; a commit of the other task's rows fails on the cast)."""
    return pa.schema(list(prediction_schema(task)) + [pa.field(name, kind) for name, kind in RUN_COLUMNS])


TABLE_SCHEMA = table_schema()


class RunTakenError(StreamScoreError):
    """Another run of the same job claimed or committed this run first."""


def claim_version(run: int) -> int:
    return 2 * run - 1


def commit_version(run: int) -> int:
    return 2 * run


class ScoredTable:
    """One Delta table at ``uri`` (a local folder, or any URI delta-rs takes, with ``storage_options``)."""

    def __init__(
        self, uri: str, storage_options: dict[str, str] | None = None, schema: pa.Schema = TABLE_SCHEMA
    ) -> None:
        self.uri = uri
        self._storage_options = storage_options
        self.schema = schema

    def _load(self) -> Any | None:
        """The table as it is now (each call reads the latest version), or None before its first commit."""
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(self.uri, storage_options=self._storage_options):
            return None
        return DeltaTable(self.uri, storage_options=self._storage_options)

    def transaction_version(self, app_id: str) -> int:
        """The job's last transaction version (0: it never committed)."""
        table = self._load()
        return (table.transaction_version(app_id) or 0) if table is not None else 0

    def version(self) -> int | None:
        table = self._load()
        return table.version() if table is not None else None

    def done_keys(self, model: str, model_version: str, retried: frozenset[str]) -> pa.Table:
        """``(id, fingerprint)`` of the inputs this model version has an outcome for that stands: a prediction,
        or an error whose reason is not in ``retried``. Reads three columns of the matching rows only."""
        table = self._load()
        empty = pa.table({"id": pa.array([], pa.string()), "fingerprint": pa.array([], pa.string())})
        if table is None:
            return empty
        wanted = (pc.field("model") == model) & (pc.field("model_version") == model_version)
        dataset = table.to_pyarrow_dataset()
        columns = ["id", "fingerprint", ERROR] + ([ERROR_REASON] if ERROR_REASON in dataset.schema.names else [])
        # Rows of an earlier release have no reason of their own: read off ``error`` (fill_error_reasons).
        rows = fill_error_reasons(dataset.to_table(columns=columns, filter=wanted))
        if retried and rows.num_rows:
            retry = pc.is_in(rows.column(ERROR_REASON), value_set=pa.array(sorted(retried), pa.string()))
            rows = rows.filter(pc.invert(pc.fill_null(retry, False)))
        return rows.select(["id", "fingerprint"]).combine_chunks() if rows.num_rows else empty

    def claim(self, app_id: str, run: int, metadata: dict[str, str]) -> int:
        """Claim run ``run`` of ``app_id`` (an empty commit); return the Delta version it made."""
        return self._commit(self.schema.empty_table(), app_id, claim_version(run), {**metadata, "step": "claim"})

    def commit_rows(self, app_id: str, run: int, rows: pa.Table, metadata: dict[str, str]) -> int:
        """Commit run ``run``'s rows in one Delta commit; return its version."""
        return self._commit(rows, app_id, commit_version(run), {**metadata, "step": "rows"})

    def _commit(self, rows: pa.Table, app_id: str, txn_version: int, metadata: dict[str, str]) -> int:
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import CommitFailedError

        # The check and the commit use one snapshot: a run that commits for this job after the snapshot makes
        # this commit conflict (Delta checks the winner's transactions), rather than pass on a newer one. There
        # must be a table to take one of: two runs creating it at once would both commit (the second create is
        # retried as a plain append, with nothing read to conflict with), so a new table is made empty first.
        snapshot = self._load() or self._create()
        current = snapshot.transaction_version(app_id) or 0
        if current >= txn_version:
            raise RunTakenError(f"job {app_id!r} is already at transaction {current} (this commit: {txn_version})")
        properties = CommitProperties(
            app_transactions=[Transaction(app_id, txn_version, last_updated=int(time.time() * 1000))],
            custom_metadata={METADATA_PREFIX + k: v for k, v in {**metadata, "app_id": app_id}.items()},
        )
        try:
            write_deltalake(
                snapshot,
                rows.cast(self.schema),
                mode="append",
                schema_mode=self._schema_mode(snapshot),
                partition_by=PARTITION_BY,
                commit_properties=properties,
            )
        except CommitFailedError as exc:
            raise RunTakenError(f"job {app_id!r}: another run committed first ({exc})") from None
        table = self._load()
        assert table is not None
        return int(table.version())

    def _create(self) -> Any:
        """The table, made with an empty first commit (no transaction) where it does not exist yet; two runs may
        both make one, which costs an empty commit."""
        from deltalake import write_deltalake
        from deltalake.exceptions import DeltaError

        with contextlib.suppress(DeltaError):  # another run made it first
            write_deltalake(
                self.uri,
                self.schema.empty_table(),
                mode="append",
                partition_by=PARTITION_BY,
                storage_options=self._storage_options,
            )
        table = self._load()
        assert table is not None
        return table

    def _schema_mode(self, snapshot: Any) -> Literal["merge"] | None:
        """ "merge" only to add what an earlier release's table lacks (``error_reason``); any other difference
        (another task's columns, say) must fail the commit, not widen the table."""
        existing = {field.name for field in snapshot.schema().fields}  # from the log: no file listing
        expected = set(self.schema.names)
        return "merge" if existing < expected and expected - existing == {ERROR_REASON} else None

    def claim_metadata(self, app_id: str, run: int, search: int = 200) -> dict[str, str] | None:
        """The metadata of the claim of run ``run`` of ``app_id`` (keys without the prefix), from the table's
        recent history; None when not found there."""
        table = self._load()
        if table is None:
            return None
        for commit in table.history(search):
            fields = {k[len(METADATA_PREFIX) :]: str(v) for k, v in commit.items() if k.startswith(METADATA_PREFIX)}
            if fields.get("app_id") == app_id and fields.get("run") == str(run) and fields.get("step") == "claim":
                return fields
        return None


def claimant() -> dict[str, str]:
    """Who is claiming: enough to tell, on resume, whether the claimant may still be running."""
    import os

    return {"host": socket.gethostname(), "pid": str(os.getpid()), "claimed_at": str(time.time())}
