"""Small inputs scored in child processes of this one, without Ray: the nightly job's quick path.

A night that finds a few hundred new images would otherwise wait for Ray to start (about 8 s on 2 cores)
to do 3 s of work. Here the same operator graph runs in one child process per core (``spawn``: a clean
interpreter, never a fork of a process holding threads), fed batches of rows. A child that dies (a row that
kills its process: a segfault in a decoder, the OOM killer) ends this path with ``LocalScoringFailed``; the
caller then scores what is left with Ray, whose isolation finds the row. Only on a machine of its own: with a
cluster to join, the cluster does the work.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pyarrow as pa

from common.errors import StreamScoreError
from operators._rows import object_array
from pipeline.graph import Graph, Stage
from pipeline.output import predictions_table

BATCH_ROWS = 8
# Where a row was scored, in the table's node columns, when no Ray node did it.
LOCAL_NODE = f"local:{socket.gethostname()}"


class LocalScoringFailed(StreamScoreError):
    """A child process died; the rows it had not returned are for Ray to score."""


_worker: dict[str, Any] = {}


def _start_worker(graph: Graph) -> None:
    _worker["stage"] = Stage(graph.preprocess, graph.inference)
    _worker["model"] = graph.model


def _score(ids: list[str], uris: list[str]) -> pa.Table:
    out = predictions_table(_worker["stage"]({"id": object_array(ids), "uri": object_array(uris)}), _worker["model"])
    node = pa.array([LOCAL_NODE] * out.num_rows, pa.string())
    return out.append_column("node_id", node).append_column("decode_node_id", node)


def local_processes() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def score_locally(graph: Graph, rows: pa.Table, processes: int | None = None) -> Iterator[pa.Table]:
    """Prediction tables for ``rows`` (``id``, ``uri``), as they finish; one ORT thread per process."""
    graph = graph.on_device("cpu", 0, intra_op_threads=1, max_rows_per_call=4)
    ids, uris = rows.column("id").to_pylist(), rows.column("uri").to_pylist()
    workers = min(processes or local_processes(), -(-len(ids) // BATCH_ROWS))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(graph,)) as pool:
        pending: set[Future[pa.Table]] = {
            pool.submit(_score, ids[i : i + BATCH_ROWS], uris[i : i + BATCH_ROWS])
            for i in range(0, len(ids), BATCH_ROWS)
        }
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            broken = [f for f in done if isinstance(f.exception(), BrokenProcessPool)]
            for future in done:
                if future not in broken:
                    yield future.result()  # what did finish is kept, even in the round a process died
            if broken:
                for other in pending:
                    other.cancel()
                raise LocalScoringFailed(f"a scoring process died ({broken[0].exception()})")
