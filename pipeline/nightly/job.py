"""The nightly job: score what is new or changed since the last good run, exactly once, resumable.

A run goes through fixed steps, each leaving what the next start needs to carry on:

1. **Freeze.** List the source (files, or the rows of a Parquet dataset), fingerprint every input (``pipeline/nightly/fingerprints.py``) and keep those whose
   ``(id, fingerprint)`` has no standing outcome in the table for this model version (an anti-join). The frozen
   set is written to ``<table>/_streamscore/<job>/run-<v>/inputs-<digest>.parquet``, then **claimed** in the
   table (``pipeline/nightly/scored_table.py``): from here on, run ``v`` is exactly these inputs.
2. **Score in shards.** The frozen set, in id order, is cut into shards of ``shard_rows``; each shard's rows are
   written to ``shard-NNNNN.parquet`` beside it once all of them are scored. A resumed run skips the shards
   already there, so a crash costs at most the shards in flight.
3. **Commit.** Every shard, checked against the frozen set (each input exactly once), goes into the table in
   one Delta commit carrying the job's transaction version. Then the run's staging folder is removed.

A start that finds its job's last transaction odd (claimed, not committed) resumes that run from its frozen set,
whatever is new since, then starts the next run for what arrived meanwhile. Nothing is kept outside the
table's folder: the ``_streamscore`` folder is ignored by Delta readers and by ``VACUUM`` (hidden).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import posixpath
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.errors import LostRowsError, StreamScoreError, WorkerCrashedError
from common.filesystems import resolve
from common.processes import process_exists
from operators.reasons import Reason
from pipeline.graph import Graph
from pipeline.nightly._shards import Shards, shard_path
from pipeline.nightly.fingerprints import FingerprintMode, fingerprinted, frozen_set_digest
from pipeline.nightly.scored_table import RunTakenError, ScoredTable, claimant, table_schema
from pipeline.output import ERROR_REASON, fill_error_reasons
from pipeline.runs.local import score_locally, source_batches
from pipeline.runs.planner import ResourcePlan
from pipeline.runs.ray_data import scored_tables
from pipeline.runs.sources import FileListing, ParquetSource

logger = logging.getLogger(__name__)

STATE_DIR = "_streamscore"
# Reasons worth another try on the next run: the storage or the runtime failed, not the input. A corrupt file
# whose bytes did not change fails the same way again; a changed file has a new fingerprint and is scored anew.
RETRIED_REASONS = frozenset({Reason.READ_FAILED.value, Reason.INFERENCE_FAILED.value})
DEFAULT_SHARD_ROWS = 500
# A claimant on another host counts as gone once its heartbeat is this old.
LEASE_TIMEOUT_S = 120.0
HEARTBEAT_S = 15.0
# Where a run can be made to SIGKILL itself, as a crash would (``NightlyJob.fault_point``; the resume tests).
FAULT_POINTS = ("after_claim", "after_shards=N", "before_commit", "after_commit")


class RunInProgressError(StreamScoreError):
    """Another process is running this job's pending run."""


@dataclass(frozen=True)
class NightlyJob:
    graph: Graph
    source: FileListing | ParquetSource
    table_uri: str
    # Connects to Ray and plans the actors, called only when there is something to score: a night with nothing
    # new never starts Ray.
    planner: Callable[[], ResourcePlan]
    job_id: str
    fingerprint: FingerprintMode = "metadata"
    shard_rows: int = DEFAULT_SHARD_ROWS
    retried_reasons: frozenset[str] = RETRIED_REASONS
    # "local": score in child processes of this one, without Ray (``pipeline/runs/local.py``); only for a
    # machine of its own. "ray": Ray Data, on the cluster the caller connected to.
    executor: Literal["local", "ray"] = "ray"
    processes: int | None = None  # local: scoring processes (None: one per core)
    # Test hook: SIGKILL this process at this point of a run (one of FAULT_POINTS, N a number), as a crash would.
    # Configuration like the rest: ``jobs/nightly.py`` reads it from the environment, the library never does.
    fault_point: str | None = None


@dataclass
class RunReport:
    """What one run did, for people (``render``) and machines (``as_json``)."""

    job_id: str
    run_version: int
    outcome: str  # "committed", "nothing new", "committed by another run"
    resumed: bool
    model: str
    model_version: str
    inputs_seen: int
    skipped: int  # already scored, with a standing outcome
    frozen: int  # the run's input set
    scored_now: int  # rows scored by this attempt (the rest came from reused shards)
    shards: int
    shards_reused: int
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    delta_version: int | None = None
    wall_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.scored_now / self.wall_s if self.wall_s > 0 else 0.0

    def render(self) -> str:
        errors = sum(self.errors_by_reason.values())
        lines = [
            f"job {self.job_id}, run {self.run_version}{' (resumed)' if self.resumed else ''}: {self.outcome}",
            f"model: {self.model}:{self.model_version}",
            f"inputs seen: {self.inputs_seen}, skipped (already scored): {self.skipped}, in this run: {self.frozen}",
            f"scored now: {self.scored_now} ({self.images_per_s:.1f} images/s), "
            f"shards: {self.shards} ({self.shards_reused} reused)",
            f"errors: {errors}",
        ]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.errors_by_reason.items())]
        lines.append(f"delta version committed: {self.delta_version if self.delta_version is not None else '-'}")
        lines.append(f"wall time: {self.wall_s:.1f} s")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s}


def default_job_id(source_uri: str, model_name: str) -> str:
    """One job per (source, model); its versions share the job, so a new version scores everything again."""
    digest = hashlib.sha256(source_uri.rstrip("/").encode()).hexdigest()[:12]
    return f"streamscore-nightly:{model_name}:{digest}"


def run_nightly(job: NightlyJob, on_progress: Callable[[int], None] | None = None) -> list[RunReport]:
    """Resume the job's pending run if there is one, then run for what is new; needs a connected Ray."""
    runner = _Runner(job, on_progress)
    reports = []
    pending = runner.pending_run()
    if pending is not None:
        reports.append(runner.resume(pending))
    reports.append(runner.new_run())
    return reports


class _Runner:
    def __init__(self, job: NightlyJob, on_progress: Callable[[int], None] | None) -> None:
        self.job = job
        self.table = ScoredTable(job.table_uri, schema=table_schema(job.graph.model.manifest.task))
        self.fs, table_path = resolve(job.table_uri)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job.job_id)
        self.state_dir = posixpath.join(table_path, STATE_DIR, safe)
        self.on_progress = on_progress
        self.model = job.graph.model
        self._planned: ResourcePlan | None = None
        self._shards_written = 0  # by this process, over all its runs (the test hook counts these)

    def _fault(self, point: str) -> None:
        if self.job.fault_point == point:
            logger.warning("test hook fault_point=%s: killing this process", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _plan(self) -> ResourcePlan:
        if self._planned is None:
            self._planned = self.job.planner()
        return self._planned

    # ------------------------------------------------------------------ where the job stands
    def pending_run(self) -> int | None:
        txn = self.table.transaction_version(self.job.job_id)
        return (txn + 1) // 2 if txn % 2 == 1 else None

    def _run_dir(self, run: int) -> str:
        return posixpath.join(self.state_dir, f"run-{run:06d}")

    # ------------------------------------------------------------------ a new run
    def new_run(self) -> RunReport:
        start = time.perf_counter()
        run = self.table.transaction_version(self.job.job_id) // 2 + 1
        self._forget_runs_before(run)
        listed = fingerprinted(self.job.source, self.job.fingerprint)
        done = self.table.done_keys(self.model.name, self.model.version, self.job.retried_reasons)
        frozen = listed.join(done, keys=["id", "fingerprint"], join_type="left anti").sort_by("id")
        report = self._report(run, resumed=False, seen=listed.num_rows, frozen=frozen.num_rows)
        if frozen.num_rows == 0:
            report.outcome, report.wall_s = "nothing new", time.perf_counter() - start
            return report
        digest = frozen_set_digest(frozen)
        self._write_atomically(posixpath.join(self._run_dir(run), f"inputs-{digest}.parquet"), frozen)
        try:
            self.table.claim(self.job.job_id, run, {"run": str(run), "frozen": digest, **claimant()})
        except RunTakenError as exc:
            raise RunInProgressError(f"another run of this job started run {run} first: {exc}") from None
        self._fault("after_claim")
        return self._score_and_commit(run, frozen, digest, report, start)

    # ------------------------------------------------------------------ resuming a claimed run
    def resume(self, run: int) -> RunReport:
        start = time.perf_counter()
        claim = self.table.claim_metadata(self.job.job_id, run)
        if claim is None:
            raise StreamScoreError(f"run {run} of job {self.job.job_id!r} is claimed but its claim is not in history")
        self._check_claimant_gone(run, claim)
        frozen = pq.read_table(
            posixpath.join(self._run_dir(run), f"inputs-{claim['frozen']}.parquet"), filesystem=self.fs
        )
        logger.info("resuming run %d of %s: %d inputs", run, self.job.job_id, frozen.num_rows)
        report = self._report(run, resumed=True, seen=frozen.num_rows, frozen=frozen.num_rows)
        return self._score_and_commit(run, frozen, claim["frozen"], report, start)

    def _check_claimant_gone(self, run: int, claim: dict[str, str]) -> None:
        """Refuse to resume a run whose claimant may still be at it (on this host: its process is alive; on
        another: its heartbeat is fresh)."""
        pid = int(claim.get("pid", "0"))
        if claim.get("host") == socket.gethostname():
            if pid != os.getpid() and process_exists(pid):
                raise RunInProgressError(f"run {run} of job {self.job.job_id!r} is running here (process {pid})")
            return
        info = self.fs.get_file_info(posixpath.join(self._run_dir(run), "heartbeat"))
        if info.type == pafs.FileType.File and info.mtime is not None:
            age = time.time() - info.mtime.timestamp()
            if age < LEASE_TIMEOUT_S:
                raise RunInProgressError(
                    f"run {run} of job {self.job.job_id!r} is running on {claim.get('host')} (heartbeat {age:.0f} s "
                    f"ago; taken over after {LEASE_TIMEOUT_S:.0f} s of silence)"
                )

    # ------------------------------------------------------------------ scoring and the commit
    def _score_and_commit(self, run: int, frozen: pa.Table, digest: str, report: RunReport, start: float) -> RunReport:
        shard_dir = posixpath.join(self._run_dir(run), digest)
        shards = Shards(frozen, self.job.shard_rows)
        report.shards = shards.count
        done = {i for i in range(shards.count) if self._exists(shard_path(shard_dir, i))}
        report.shards_reused = len(done)
        pending = shards.rows_of([i for i in range(shards.count) if i not in done])
        heartbeat = _Heartbeat(self.fs, posixpath.join(self._run_dir(run), "heartbeat"))
        try:
            if pending.num_rows and self.job.executor == "local":
                local = score_locally(
                    self.job.graph, source_batches(self._source_of(pending)), self.job.processes, record_node=True
                )
                for table in local:
                    self._take(table, shards, shard_dir, report)
            elif pending.num_rows:
                source = self._source_of(pending)
                try:
                    for table in scored_tables(self.job.graph, source, self._plan(), record_node=True):
                        self._take(table, shards, shard_dir, report)
                except WorkerCrashedError as exc:
                    kept = report.shards_reused + self._shards_written
                    raise WorkerCrashedError(
                        f"{exc}; run {run} keeps its {kept} of {shards.count} finished shards: run the same command "
                        "again to resume it"
                    ) from exc.__cause__
        finally:
            heartbeat.stop()
        self._fault("before_commit")
        rows = self._committed_rows(run, frozen, shard_dir, shards.count)
        report.errors_by_reason = _errors_by_reason(rows)
        try:
            report.delta_version = self.table.commit_rows(
                self.job.job_id, run, rows, {"run": str(run), "frozen": digest, "rows": str(rows.num_rows)}
            )
            report.outcome = "committed"
        except RunTakenError:
            report.outcome = "committed by another run"
        self._fault("after_commit")
        self._delete_dir(self._run_dir(run))
        report.wall_s = time.perf_counter() - start
        return report

    def _source_of(self, pending: pa.Table) -> FileListing | ParquetSource:
        """The job's source, narrowed to the ``pending`` rows."""
        if isinstance(self.job.source, FileListing):
            return FileListing(pending.select(["id", "uri"]))
        return dataclasses.replace(self.job.source, only_ids=pending.column("id").combine_chunks())

    def _take(self, table: pa.Table, shards: Shards, shard_dir: str, report: RunReport) -> None:
        """Gather scored rows; write the shards they complete."""
        report.scored_now += table.num_rows
        for index, rows in shards.add(table):
            self._write_atomically(shard_path(shard_dir, index), rows)
            self._shards_written += 1
            self._fault(f"after_shards={self._shards_written}")
        if self.on_progress is not None:
            self.on_progress(report.scored_now)

    def _committed_rows(self, run: int, frozen: pa.Table, shard_dir: str, count: int) -> pa.Table:
        """Every shard's rows, with the run's columns, checked against the frozen set: each input once."""
        unfinished = [i for i in range(count) if not self._exists(shard_path(shard_dir, i))]
        if unfinished:  # a row that never came back from scoring leaves its shard unwritten
            raise LostRowsError(
                f"run {run}: lost rows: {len(unfinished)} of its {count} shards never got all their rows back from "
                f"scoring (the first: shard {unfinished[0]}); please report this as a bug"
            )
        parts = [pq.read_table(shard_path(shard_dir, i), filesystem=self.fs) for i in range(count)]
        rows = pa.concat_tables(parts, promote_options="permissive") if parts else self.table.schema.empty_table()
        rows = fill_error_reasons(rows)  # shards an earlier release wrote (a resumed run) have no reasons
        ids = rows.column("id")
        if rows.num_rows != frozen.num_rows or pc.count_distinct(ids).as_py() != frozen.num_rows:
            raise LostRowsError(f"run {run}: {rows.num_rows} rows in its shards for {frozen.num_rows} inputs")
        if not pc.all(pc.is_in(ids, value_set=frozen.column("id"))).as_py():
            raise LostRowsError(f"run {run}: its shards hold ids outside its frozen set")
        now = datetime.datetime.now(datetime.UTC)
        columns = {
            "run_id": pa.array([f"{self.job.job_id}/{run}"] * rows.num_rows, pa.string()),
            "run_version": pa.array([run] * rows.num_rows, pa.int64()),
            "scored_at": pa.array([now] * rows.num_rows, pa.timestamp("us", tz="UTC")),
            "run_date": pa.array([now.date()] * rows.num_rows, pa.date32()),
        }
        for name, values in columns.items():
            rows = rows.append_column(name, values)
        return rows.select(self.table.schema.names).cast(self.table.schema)

    # ------------------------------------------------------------------ files
    def _report(self, run: int, *, resumed: bool, seen: int, frozen: int) -> RunReport:
        return RunReport(
            job_id=self.job.job_id,
            run_version=run,
            outcome="",
            resumed=resumed,
            model=self.model.name,
            model_version=self.model.version,
            inputs_seen=seen,
            skipped=seen - frozen,
            frozen=frozen,
            scored_now=0,
            shards=0,
            shards_reused=0,
        )

    def _exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def _write_atomically(self, path: str, table: pa.Table) -> None:
        """Write to a temporary name, then move into place: a file under its final name is complete."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        temporary = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        pq.write_table(table, temporary, filesystem=self.fs)
        self.fs.move(temporary, path)

    def _delete_dir(self, path: str) -> None:
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def _forget_runs_before(self, run: int) -> None:
        """Staging folders of committed runs (a crash after the commit leaves one) and of lost claims."""
        selector = pafs.FileSelector(self.state_dir, allow_not_found=True)
        for entry in self.fs.get_file_info(selector):
            name = entry.base_name
            if entry.type == pafs.FileType.Directory and name.startswith("run-") and int(name[4:]) < run:
                self.fs.delete_dir(entry.path)


def _errors_by_reason(rows: pa.Table) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in pc.value_counts(rows.column(ERROR_REASON).drop_null()).tolist()}


class _Heartbeat:
    """Touches a file every ``HEARTBEAT_S`` while a run scores, so a resumer on another host can tell."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self._fs, self._path, self._stop = fs, path, threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="streamscore-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        try:
            self._fs.create_dir(posixpath.dirname(self._path), recursive=True)
            with self._fs.open_output_stream(self._path) as stream:
                stream.write(f"{socket.gethostname()} {os.getpid()} {time.time()}\n".encode())
        except OSError as exc:  # a missed beat is not worth failing the run for
            logger.warning("heartbeat %s: %s", self._path, exc)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
