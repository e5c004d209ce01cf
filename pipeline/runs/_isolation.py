"""``pipeline.crash_isolation`` on Ray: the journal is a Ray actor, and Ray restarts a dead actor and retries its
task, which then finds the journal's open note:

1. Before a batch, an actor notes in the journal that it is on that batch.
2. If the process dies, Ray restarts the actor and retries the task (``max_task_retries``). The retry finds
   the open note, and runs that batch one row at a time, noting each row before it starts.
3. A second death names the row. The next retry turns that row into a ``worker_crashed`` error row (with the
   signal when the dead process left a fault report) and scores its siblings.

``MAX_TASK_RETRIES`` bounds the deaths, so the run always ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from operators.base import Batch
from pipeline.crash_isolation import Attempt, CrashJournal, batch_key, report_faults_to_a_file, run_isolated

# Deaths a task (one block) survives: its first, then one per poison row in it. Past this, the run ends with
# WorkerCrashedError naming the block's rows found so far in the log.
MAX_TASK_RETRIES = 6


def start_journal() -> Any:
    """A CrashJournal actor for one run (no CPU: it must never wait for the actors it serves), on the head
    node: a worker node lost mid-run must not take the journal with it. (Not "the driver's node": a driver
    on a machine with several raylets, as in the multi-node tests, may be attached to a worker's.)"""
    import ray

    on_head = {"node:__internal_head__": 0.001} if "node:__internal_head__" in ray.cluster_resources() else {}
    return ray.remote(CrashJournal).options(num_cpus=0, resources=on_head).remote()


class IsolatingStage:
    """Runs ``stage`` on a batch, journaled so that a row that kills this process is isolated on a retry."""

    def __init__(self, stage: Callable[[Batch], Batch], journal: Any, name: str) -> None:
        import ray

        self._stage, self._journal, self._name = stage, journal, name
        self._pid, self._node_id = os.getpid(), ray.get_runtime_context().get_node_id()
        report_faults_to_a_file()

    def __call__(self, batch: Batch) -> Batch:
        import ray

        key = batch_key(self._name, batch["id"])
        record = ray.get(self._journal.begin.remote(key, Attempt(self._pid, self._node_id)))
        poison = record.poison(self._node_id)
        if poison is None:
            out = self._stage(batch)
        else:

            def note_row(i: int) -> None:
                attempt = Attempt(self._pid, self._node_id, i, str(batch["id"][i]))
                ray.get(self._journal.on_row.remote(key, attempt))

            out = run_isolated(self._stage, batch, poison, note_row)
        self._journal.finish.remote(key)
        return out
