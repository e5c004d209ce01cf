"""Poison rows: a row that kills its worker process becomes an error row, not a retry loop or a failed run.

A row can kill the process that scores it: the out-of-memory killer, a crash in a native decoder or in ONNX
Runtime. No ``except`` catches that, so the batch actors keep a journal in a small Ray actor that outlives them:

1. Before a batch, an actor notes in the journal that it is on that batch.
2. If the process dies, Ray restarts the actor and retries the task (``max_task_retries``). The retry finds
   the open note, and runs that batch one row at a time, noting each row before it starts.
3. A second death names the row. The next retry turns that row into a ``worker_crashed`` error row (with the
   signal when the dead process left a fault report) and scores its siblings.

A block with k poison rows costs k + 1 deaths; ``MAX_TASK_RETRIES`` bounds them, so the run always ends.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.processes import process_exists
from operators._rows import batch_length, concatenate, errors_of, one_row
from operators.base import ERROR, Batch
from operators.reasons import Reason

# Deaths a task (one block) survives: its first, then one per poison row in it. Past this, the run ends with
# WorkerCrashedError naming the block's rows found so far in the log.
MAX_TASK_RETRIES = 6


@dataclass(frozen=True)
class Attempt:
    """A process working on a batch: which process, on which node, and on which row (None: the whole batch)."""

    pid: int
    node_id: str
    row: int | None = None
    row_id: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """What the journal knows of one batch: the attempt under way, and the attempts that died."""

    running: Attempt | None = None
    deaths: tuple[Attempt, ...] = field(default=())


class CrashJournal:
    """The journal, run as a Ray actor with no CPU. Its methods are atomic (an actor runs one call at a time)."""

    def __init__(self) -> None:
        self._records: dict[str, BatchRecord] = {}

    def begin(self, key: str, attempt: Attempt) -> BatchRecord:
        """Note ``attempt`` on batch ``key``; an attempt still running there died. Returns the updated record."""
        record = self._records.get(key, BatchRecord())
        deaths = record.deaths + ((record.running,) if record.running is not None else ())
        self._records[key] = record = BatchRecord(running=attempt, deaths=deaths)
        return record

    def on_row(self, key: str, attempt: Attempt) -> None:
        self._records[key] = replace(self._records[key], running=attempt)

    def finish(self, key: str) -> None:
        record = self._records.pop(key)
        if record.deaths:  # kept, should Ray run this block again (another batch of it killed its worker)
            self._records[key] = replace(record, running=None)

    def deadly_rows(self) -> list[str]:
        """The ids of the rows a worker died on, so far."""
        return sorted(str(d.row_id) for r in self._records.values() for d in r.deaths if d.row is not None)


def start_journal() -> Any:
    """A CrashJournal actor for one run (no CPU: it must never wait for the actors it serves), on the head
    node: a worker node lost mid-run must not take the journal with it. (Not "the driver's node": a driver
    on a machine with several raylets, as in the multi-node tests, may be attached to a worker's.)"""
    import ray

    on_head = {"node:__internal_head__": 0.001} if "node:__internal_head__" in ray.cluster_resources() else {}
    return ray.remote(CrashJournal).options(num_cpus=0, resources=on_head).remote()


def _fault_report_path(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / "streamscore-faults" / f"{pid}.log"


def _report_faults_to_a_file() -> None:
    """Have Python write a fault report (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) where a retry can read it."""
    path = _fault_report_path(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    faulthandler.enable(file=path.open("w"), all_threads=False)  # kept open for the life of the process


def forget_fault_reports() -> None:
    """Remove this node's fault reports of processes that have exited (each actor process leaves one, empty
    unless it crashed); the run that needed them has read them by then."""
    with contextlib.suppress(OSError):
        for report in _fault_report_path(0).parent.iterdir():
            if report.stem.isdigit() and not process_exists(int(report.stem)):
                with contextlib.suppress(OSError):
                    report.unlink()


def describe_death(attempt: Attempt, node_id: str) -> str:
    """How the process of ``attempt`` died, as far as this process (on ``node_id``) can tell."""
    report = ""
    if attempt.node_id == node_id:
        with contextlib.suppress(OSError):
            report = _fault_report_path(attempt.pid).read_text(errors="replace")
    first_line = report.strip().splitlines()[0] if report.strip() else ""
    if first_line.startswith("Fatal Python error: "):
        cause = first_line.removeprefix("Fatal Python error: ")
        return f"the worker process (pid {attempt.pid}) died of {cause} on this row"
    return (
        f"the worker process (pid {attempt.pid}) died on this row without a fault report (killed: SIGKILL, "
        "e.g. by the out-of-memory killer)"
    )


def batch_key(stage: str, ids: Iterable[Any]) -> str:
    """Names a batch by its rows, the same in every attempt (Ray retries a task with the same blocks)."""
    digest = hashlib.blake2b(stage.encode(), digest_size=16)
    for row_id in ids:
        digest.update(b"\0" + str(row_id).encode())
    return digest.hexdigest()


class IsolatingStage:
    """Runs ``stage`` on a batch, journaled so that a row that kills this process is isolated on a retry."""

    def __init__(self, stage: Callable[[Batch], Batch], journal: Any, name: str) -> None:
        import ray

        self._stage, self._journal, self._name = stage, journal, name
        self._pid, self._node_id = os.getpid(), ray.get_runtime_context().get_node_id()
        _report_faults_to_a_file()

    def __call__(self, batch: Batch) -> Batch:
        import ray

        key = batch_key(self._name, batch["id"])
        record = ray.get(self._journal.begin.remote(key, Attempt(self._pid, self._node_id)))
        if not record.deaths:
            out = self._stage(batch)
        else:
            poison = {d.row: describe_death(d, self._node_id) for d in record.deaths if d.row is not None}
            out = self._one_row_at_a_time(key, batch, poison)
        self._journal.finish.remote(key)
        return out

    def _one_row_at_a_time(self, key: str, batch: Batch, poison: dict[int, str]) -> Batch:
        import ray

        errors = errors_of(batch).copy()
        for row, detail in poison.items():
            errors[row] = Reason.WORKER_CRASHED.row_error(detail)
        batch = {**batch, ERROR: errors}
        rows = []
        for i in range(batch_length(batch)):
            if errors[i] is None:  # a row that already failed costs nothing and cannot kill us
                attempt = Attempt(self._pid, self._node_id, i, str(batch["id"][i]))
                ray.get(self._journal.on_row.remote(key, attempt))
            rows.append(self._stage(one_row(batch, i)))
        return concatenate(rows)
