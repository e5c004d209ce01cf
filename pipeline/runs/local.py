"""The local executor: the same operator graph in child processes of this one, without Ray.

Why: on one machine Ray's fixed cost (its start, Ray Data's own actors, worker imports, shutdown: about 8 s on
2 cores) is most of what a user with a few thousand images waits for, and the work itself is at the machine
limit either way (each core decodes and scores its own rows, as a fused Ray actor does). So ``score`` and
``nightly`` without a cluster run here; with a cluster to join (``--address``), the cluster does the work.

One ``spawn``-ed child per core (a clean interpreter, never a fork of a process holding threads), one ONNX
Runtime thread each, one batch of rows in flight each: memory is bounded by the graph's per-row bounds times
the number of children. Rows that kill a child (a segfault in a decoder, the out-of-memory killer) follow
``pipeline.crash_isolation``, with this process as the journal: it notes which batch each child holds, and a
child notes each row of a batch that killed a child before it runs it. A dead child is replaced; its batch runs
again one row at a time, and a row that kills a child on its own comes out as a ``worker_crashed`` error row
naming the signal. Siblings are scored as usual; a block with k poison rows costs at most k + 1 deaths.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.abc
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import pyarrow as pa

from common.errors import StreamScoreError
from operators._rows import object_array
from pipeline.crash_isolation import (
    Attempt,
    CrashJournal,
    batch_key,
    describe_death,
    forget_fault_reports,
    report_faults_to_a_file,
    run_isolated,
)
from pipeline.graph import Graph, Stage
from pipeline.output import predictions_table
from pipeline.runs.publish import publish_run
from pipeline.runs.sources import FileListing, Source
from pipeline.runs.summary import RunSummary

logger = logging.getLogger(__name__)

BATCH_ROWS = 8
# A 1-thread ONNX Runtime session on this 2-core CPU ran EfficientNet-Lite0 at 141 images/s one image per call
# and 132 at 4 per call, two sessions side by side (the batch pipeline's default is 4).
ROWS_PER_ORT_CALL = 1
# Where a row was scored, in the nightly table's node columns, when no Ray node did it.
LOCAL_NODE = f"local:{socket.gethostname()}"
_STOP_TIMEOUT_S = 5.0


class LocalScoringFailed(StreamScoreError):
    """The scoring processes could not start (or a batch failed in a way no row explains)."""


def local_processes() -> int:
    """The cores this process may run on (its CPU affinity, as a container or ``taskset`` sets it)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass(frozen=True)
class _Task:
    ids: list[str]
    values: list[Any]  # uris, or encoded images
    poison: dict[int, str] | None = None  # None: run whole; else one row at a time (crash_isolation.run_isolated)

    @property
    def key(self) -> str:
        return batch_key("local", self.ids)


def _child(conn: Connection, graph: Graph, column: str, record_node: bool) -> None:
    """A scoring process: build the stage once, then score batches until told to stop (or the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends its children
    report_faults_to_a_file()
    _arrow_without_pandas()
    with contextlib.suppress(BrokenPipeError, EOFError):  # the parent went away: nothing left to answer
        _serve(conn, graph, column, record_node)


def _arrow_without_pandas() -> None:
    """Spare this process pandas' import. pyarrow imports pandas, where installed, on its first array, to
    check whether the data is a pandas object: 0.15-0.26 s per process here, on the way to the first
    predictions, for a process that never sees pandas. Its first array is made while pandas is hidden, so
    pyarrow settles on "no pandas objects" for those checks; pandas stays importable afterwards (a custom
    operator may import it, and pyarrow's own ``to_pandas`` imports it when called)."""
    if "pandas" in sys.modules:
        return
    hidden = _Hidden("pandas")
    sys.meta_path.insert(0, hidden)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(hidden)


class _Hidden(importlib.abc.MetaPathFinder):
    """An import finder under which one package cannot be imported (``ModuleNotFoundError``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"{fullname} is hidden here", name=fullname)
        return None


def _serve(conn: Connection, graph: Graph, column: str, record_node: bool) -> None:
    try:
        stage = Stage(graph.preprocess, graph.inference)
    except Exception as exc:  # noqa: BLE001 - whatever kept the stage from building is reported, not raised here
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while (task := _next_task(conn)) is not None:
        try:
            batch = {"id": object_array(task.ids), column: object_array(task.values)}
            if task.poison is None:
                scored = stage(batch)
            else:
                scored = run_isolated(stage, batch, task.poison, lambda i: conn.send(("row", i)))
            table = predictions_table(scored, graph.model)
            if record_node:
                node = pa.array([LOCAL_NODE] * table.num_rows, pa.string())
                table = table.append_column("node_id", node).append_column("decode_node_id", node)
        except Exception as exc:  # noqa: BLE001 - a batch that fails as a whole stops the run, with the reason
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("scored", table))


def _next_task(conn: Connection) -> _Task | None:
    """The next batch, or None: told to stop, or the parent is gone (its end of the pipe closed: a killed
    driver leaves no scoring process behind once the batch in hand is done)."""
    try:
        task: _Task | None = conn.recv()
        return task
    except (EOFError, OSError):
        return None


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it. A Ctrl-C while a child's start-up data is being
    written would leave it reading half of it (it dies printing "EOFError: Ran out of input"). Blocking the
    signal in this thread was not enough: the kernel hands a process's SIGINT to any thread that does not block
    it (ONNX Runtime's, pyarrow's), and Python then raises KeyboardInterrupt in the main thread all the same
    (seen once in a loaded CI run). So Python's own handler is swapped for one that only takes note."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread gets KeyboardInterrupt
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt


class _Child:
    def __init__(self, context: Any, graph: Graph, column: str, record_node: bool) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_child, args=(child_end, graph, column, record_node), daemon=True)
        with _sigint_deferred():
            self.process.start()
        child_end.close()
        self.task: _Task | None = None
        self.ready = False

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(_STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def score_locally(
    graph: Graph,
    rows: pa.Table | Iterable[pa.Table],
    processes: int | None = None,
    *,
    record_node: bool = False,
    rows_per_call: int = ROWS_PER_ORT_CALL,
) -> Iterator[pa.Table]:
    """Prediction tables for ``rows`` (``id`` plus ``uri`` or ``bytes``: one table, or batches of them read as
    the children ask for work), as they finish; every row comes out."""
    batches = iter(rows.to_batches(BATCH_ROWS) if isinstance(rows, pa.Table) else rows)
    first = next(batches, None)
    if first is None:
        return
    column = "uri" if "uri" in first.schema.names else "bytes"

    def feed() -> Iterator[_Task]:
        for batch in itertools.chain([first], batches):
            ids, values = batch.column("id").to_pylist(), batch.column(column).to_pylist()
            for i in range(0, len(ids), BATCH_ROWS):
                yield _Task(ids[i : i + BATCH_ROWS], values[i : i + BATCH_ROWS])

    fresh = feed()
    tasks: collections.deque[_Task] = collections.deque()  # batches of a dead child: they go first
    journal = CrashJournal()
    graph = graph.on_device("cpu", 0, intra_op_threads=1, max_rows_per_call=rows_per_call)
    context = multiprocessing.get_context("spawn")
    children = [_Child(context, graph, column, record_node) for _ in range(processes or local_processes())]
    started = time.perf_counter()
    start_deaths = 0  # children that died before they were ready: past one per slot, the machine cannot start them
    try:
        while True:
            for child in children:
                if child.task is None and (task := tasks.popleft() if tasks else next(fresh, None)) is not None:
                    record = journal.begin(task.key, Attempt(child.process.pid, LOCAL_NODE))
                    child.task = _Task(task.ids, task.values, record.poison(LOCAL_NODE))
                    with contextlib.suppress(OSError):  # it died since its last answer: its sentinel says so
                        child.conn.send(child.task)
            if all(c.task is None for c in children):
                return
            busy = {c.conn: c for c in children if c.task is not None} | {
                c.process.sentinel: c for c in children if c.task is not None
            }
            for handle in wait(list(busy)):
                child = busy[handle]
                if child.task is None:  # its pipe and its sentinel were both ready: handled already
                    continue
                message = _receive(child)
                if message is None:  # it died: what it held is isolated, and another child takes its place
                    start_deaths += not child.ready
                    if start_deaths > len(children):
                        raise LocalScoringFailed(f"scoring processes keep dying while starting: {_death(child)}")
                    children[children.index(child)] = _replace(
                        child, tasks, journal, context, graph, column, record_node
                    )
                    continue
                kind, payload = message
                if kind == "waiting":
                    continue
                if kind == "row":
                    assert child.task is not None
                    row = Attempt(child.process.pid, LOCAL_NODE, payload, str(child.task.ids[payload]))
                    journal.on_row(child.task.key, row)
                    continue
                if kind == "ready":
                    child.ready = True
                    logger.info("scoring process %d ready in %.1f s", payload, time.perf_counter() - started)
                elif kind == "failed":
                    raise LocalScoringFailed(f"local scoring failed: {payload}")
                else:
                    journal.finish(child.task.key)
                    child.task = None
                    yield payload
    finally:
        for child in children:
            child.stop()
        forget_fault_reports()


def _receive(child: _Child) -> tuple[str, Any] | None:
    """The child's next message; None when it died (its pipe closed, or its process ended with nothing sent)."""
    try:
        if child.conn.poll():
            message: tuple[str, Any] = child.conn.recv()
            return message
    except (EOFError, OSError):
        return None
    return None if not child.process.is_alive() else ("waiting", None)


def _death(child: _Child) -> str:
    child.process.join()
    attempt = Attempt(child.process.pid, LOCAL_NODE, exit_code=child.process.exitcode)
    return describe_death(attempt, LOCAL_NODE).removesuffix(" on this row")


def _replace(
    dead: _Child,
    tasks: collections.deque[_Task],
    journal: CrashJournal,
    context: Any,
    graph: Graph,
    column: str,
    record_node: bool,
) -> _Child:
    """Note the death in the journal, requeue what ``dead`` held (it runs again one row at a time) and start
    another child. A child that died before it was ready (killed from outside while importing) had begun none
    of its rows: its batch goes back as it was."""
    task, dead.task = dead.task, None  # its pipe and its sentinel may both report the death: handled once
    assert task is not None
    reason = _death(dead)
    dead.conn.close()
    if not dead.ready:
        logger.warning("%s while starting; its %d rows go to another", reason, len(task.ids))
        journal.withdraw(task.key)
    else:
        logger.warning("%s; its %d rows run again one at a time", reason, len(task.ids))
        journal.died(task.key, dead.process.exitcode)
    tasks.appendleft(task)
    return _Child(context, graph, column, record_node)


def source_batches(source: Source) -> Iterator[pa.Table]:
    """The rows of ``source`` for the children: ``(id, uri)`` of a listing, or ``(id, bytes)`` read from Parquet
    a few rows at a time (memory bounded by what is in flight, not by the dataset)."""
    if isinstance(source, FileListing):
        yield from (pa.Table.from_batches([b]) for b in source.table.select(["id", "uri"]).to_batches(BATCH_ROWS))
        return
    yield from source.read(BATCH_ROWS)


def run_locally(
    graph: Graph,
    source: Source,
    output_uri: str,
    processes: int | None = None,
    rows_per_call: int | None = None,
    **publish: Any,
) -> RunSummary:
    """Score ``source`` into ``output_uri`` here, without Ray: the same graph, writer and summary as a Ray run
    (``publish`` takes ``publish_run``'s options)."""
    count, per_call = processes or local_processes(), rows_per_call or ROWS_PER_ORT_CALL
    plan = (
        f"local: {count} scoring processes (decode + inference each, 1 ONNX Runtime thread, {per_call} row(s) "
        "per call), no Ray"
    )
    tables = score_locally(graph, source_batches(source), count, rows_per_call=per_call)
    return publish_run(tables, source, output_uri, plan, **publish)
