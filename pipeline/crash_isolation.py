"""Rows that kill their process: one mechanism for the local executor, the Ray executor and the Serve app.

A row can kill the process that scores it: the out-of-memory killer, a crash in a native decoder or in ONNX
Runtime. No ``except`` catches that, and the process that knew which row it was on is gone. So every process
that scores follows one rule: **before it starts a row it might die on, it notes the row in a journal that
outlives it**. A note still open when its process is gone names the row that killed it. What is done with that:

- **Batch runs** (local and Ray executors): a batch whose process died runs again one row at a time, each row
  noted first (``run_isolated``); a row that a process died on by itself comes out as a ``worker_crashed`` error
  row naming the death, and its siblings are scored. A block with k poison rows costs k + 1 deaths.
- **Serving**: a request is never retried by us (its client already had an error), but its image is refused
  from then on (422), so a client that retries cannot kill one replica after another.

The journal lives with whatever outlives the scoring process, so it is the one thing that differs: the local
executor's parent process (``CrashJournal``, in memory), a Ray actor on the head node for Ray workers (the same
``CrashJournal`` as an actor), and files on the node for Serve replicas (``NodeJournal``: every replica on the
node must see the notes, at no round trip per request).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.processes import process_exists
from operators._rows import batch_length, concatenate, errors_of, one_row
from operators.base import ERROR, Batch
from operators.reasons import Reason


@dataclass(frozen=True)
class Attempt:
    """A process working on a batch: which process, on which node, and on which row (None: the whole batch).
    ``exit_code`` is filled in by whoever saw the process end (the local executor's parent), else None."""

    pid: int
    node_id: str
    row: int | None = None
    row_id: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class BatchRecord:
    """What the journal knows of one batch: the attempt under way, and the attempts that died."""

    running: Attempt | None = None
    deaths: tuple[Attempt, ...] = field(default=())

    def poison(self, node_id: str) -> dict[int, str] | None:
        """Rows a process died on by itself, with how it died (seen from ``node_id``); None when no attempt
        died, so the batch runs whole."""
        if not self.deaths:
            return None
        return {d.row: describe_death(d, node_id) for d in self.deaths if d.row is not None}


class CrashJournal:
    """The batch journal: in the local executor's parent, or as a Ray actor (whose calls run one at a time)."""

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

    def died(self, key: str, exit_code: int | None) -> None:
        """The running attempt's process ended (seen by its parent): a death, with its exit status."""
        record = self._records[key]
        if record.running is not None:
            self._records[key] = BatchRecord(None, record.deaths + (replace(record.running, exit_code=exit_code),))

    def withdraw(self, key: str) -> None:
        """The running attempt never began (its process died while starting): not a death of this batch."""
        self._records[key] = replace(self._records[key], running=None)

    def finish(self, key: str) -> None:
        record = self._records.pop(key)
        if record.deaths:  # kept, should Ray run this block again (another batch of it killed its worker)
            self._records[key] = replace(record, running=None)

    def deadly_rows(self) -> list[str]:
        """The ids of the rows a worker died on, so far."""
        return sorted(str(d.row_id) for r in self._records.values() for d in r.deaths if d.row is not None)


def batch_key(stage: str, ids: Iterable[Any]) -> str:
    """Names a batch by its rows, the same in every attempt (Ray retries a task with the same blocks)."""
    digest = hashlib.blake2b(stage.encode(), digest_size=16)
    for row_id in ids:
        digest.update(b"\0" + str(row_id).encode())
    return digest.hexdigest()


def run_isolated(
    stage: Callable[[Batch], Batch], batch: Batch, poison: dict[int, str], note_row: Callable[[int], None]
) -> Batch:
    """Run a batch a process died on, one row at a time: ``poison`` rows become ``worker_crashed`` error rows,
    and every other row is noted (``note_row``) before it runs, so a death now names it."""
    errors = errors_of(batch).copy()
    for row, detail in poison.items():
        errors[row] = Reason.WORKER_CRASHED.row_error(detail)
    batch = {**batch, ERROR: errors}
    rows = []
    for i in range(batch_length(batch)):
        if errors[i] is None:  # a row that already failed costs nothing and cannot kill us
            note_row(i)
        rows.append(stage(one_row(batch, i)))
    return concatenate(rows)


def _fault_report_path(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / "streamscore-faults" / f"{pid}.log"


def report_faults_to_a_file() -> None:
    """Have Python write this process's fault report (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) where the
    journal's reader can find it."""
    path = _fault_report_path(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    faulthandler.enable(file=path.open("w"), all_threads=False)  # kept open for the life of the process


def forget_fault_reports() -> None:
    """Remove this node's fault reports of processes that have exited (each scoring process leaves one, empty
    unless it crashed); the run that needed them has read them by then."""
    with contextlib.suppress(OSError):
        for report in _fault_report_path(0).parent.iterdir():
            if report.stem.isdigit() and not process_exists(int(report.stem)):
                with contextlib.suppress(OSError):
                    report.unlink()


def describe_death(attempt: Attempt, node_id: str) -> str:
    """How the process of ``attempt`` died, as far as a process on ``node_id`` can tell: its exit status (seen
    by the local executor's parent), else its fault report (on the same node), else the one death that leaves
    neither (SIGKILL)."""
    process, code = f"the worker process (pid {attempt.pid})", attempt.exit_code
    if code is not None and code > 0:
        return f"{process} exited with status {code} on this row"
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = ", e.g. by the out-of-memory killer" if name == "SIGKILL" else ""
        return f"{process} died of {signal.strsignal(-code)} ({name}{hint}) on this row"
    report = ""
    if attempt.node_id == node_id:
        with contextlib.suppress(OSError):
            report = _fault_report_path(attempt.pid).read_text(errors="replace")
    first_line = report.strip().splitlines()[0] if report.strip() else ""
    if first_line.startswith("Fatal Python error: "):
        return f"{process} died of {first_line.removeprefix('Fatal Python error: ')} on this row"
    return f"{process} died on this row without a fault report (killed: SIGKILL, e.g. by the out-of-memory killer)"


class NodeJournal:
    """The journal as files on this node, for Serve replicas: each thread notes what it works on in a file named
    after its process; ``collect`` turns the notes of processes that no longer exist into verdicts that every
    process on the node reads."""

    def __init__(self, root: Path) -> None:
        self._working, self._verdicts = root / "working", root / "poison"
        self._working.mkdir(parents=True, exist_ok=True)
        self._verdicts.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._thread = threading.local()

    def collect(self) -> None:
        """Turn the notes of processes that died into verdicts."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._working):
                owner = entry.name.split("-", 1)[0]
                if not owner.isdigit() or int(owner) == self._pid or process_exists(int(owner)):
                    continue
                with contextlib.suppress(OSError):
                    noted = Path(entry.path).read_text().strip()
                    if noted:
                        (self._verdicts / noted).write_text(f"killed the replica process {owner} that decoded it")
                    os.unlink(entry.path)

    def verdict(self, key: str) -> str | None:
        """Why ``key`` is deadly, when a process died on it."""
        with contextlib.suppress(OSError):
            return (self._verdicts / key).read_text()
        return None

    def note(self, key: str) -> None:
        """Note that this thread is on ``key`` (keys have one length: each overwrites the last). Bookkeeping
        never fails a request: a note that cannot be written is skipped."""
        with contextlib.suppress(OSError):
            os.pwrite(self._working_file(), key.encode(), 0)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._working_file(), 0)

    def _working_file(self) -> int:
        """This thread's working file, opened once (a create and unlink per request cost 0.3 ms here); made
        again when its folder was removed under us (a temporary-folder cleaner)."""
        fd = getattr(self._thread, "fd", None)
        if fd is not None and os.path.exists(self._thread.path):
            return int(fd)
        if fd is not None:
            os.close(fd)
        self._working.mkdir(parents=True, exist_ok=True)
        self._verdicts.mkdir(parents=True, exist_ok=True)
        self._thread.path = self._working / f"{self._pid}-{threading.get_ident()}"
        self._thread.fd = os.open(self._thread.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        return int(self._thread.fd)
