"""``pipeline.crash_isolation``: the journal's rule on its own (the executors' and the Serve app's kill tests are
in test_local_scoring, test_poison_rows and test_serving_poison): a note still open when its process is gone
names the row that killed it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from operators._rows import object_array
from operators.base import ERROR, Batch
from pipeline.crash_isolation import (
    Attempt,
    CrashJournal,
    NodeJournal,
    describe_death,
    forget_fault_reports,
    run_isolated,
)
from tests.conftest import REPO

NODE = "node-a"


def test_a_batch_that_died_whole_runs_row_by_row_and_a_death_on_a_row_names_it() -> None:
    journal = CrashJournal()
    assert journal.begin("b", Attempt(1, NODE)).poison(NODE) is None  # nothing died: the batch runs whole
    journal.died("b", -signal.SIGKILL)
    assert journal.begin("b", Attempt(2, NODE)).poison(NODE) == {}  # died whole: one row at a time, none blamed
    journal.on_row("b", Attempt(2, NODE, row=3, row_id="img-3"))
    record = journal.begin("b", Attempt(3, NODE))  # process 2 never finished: its open note is a death
    poison = record.poison(NODE)
    assert poison is not None and list(poison) == [3]
    assert "pid 2" in poison[3] and "without a fault report" in poison[3]
    journal.finish("b")
    assert journal.deadly_rows() == ["img-3"]  # kept for the run's error, after the batch finished


def test_a_process_that_died_while_starting_is_not_a_death_of_its_batch() -> None:
    journal = CrashJournal()
    journal.begin("b", Attempt(1, NODE))
    journal.withdraw("b")
    assert journal.begin("b", Attempt(2, NODE)).poison(NODE) is None


def test_the_death_is_told_by_exit_status_then_fault_report_then_as_sigkill() -> None:
    assert "Segmentation fault (SIGSEGV)" in describe_death(Attempt(7, NODE, exit_code=-signal.SIGSEGV), NODE)
    killed = describe_death(Attempt(7, NODE, exit_code=-signal.SIGKILL), NODE)
    assert "SIGKILL, e.g. by the out-of-memory killer" in killed
    assert "exited with status 3" in describe_death(Attempt(7, NODE, exit_code=3), NODE)
    # A real fault report: a child that enables the report and segfaults (Ray workers have no parent that sees
    # the exit status).
    crash = (
        "import ctypes, os; from pipeline.crash_isolation import report_faults_to_a_file; "
        "print(os.getpid(), flush=True); report_faults_to_a_file(); ctypes.string_at(0)"
    )
    child = subprocess.run([sys.executable, "-c", crash], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGSEGV
    pid = int(child.stdout.split()[0])
    assert "died of Segmentation fault on this row" in describe_death(Attempt(pid, NODE), NODE)
    assert "without a fault report" in describe_death(Attempt(pid, "another-node"), NODE)  # not readable there
    forget_fault_reports()
    assert "without a fault report" in describe_death(Attempt(pid, NODE), NODE)  # read, then cleaned up


def test_run_isolated_notes_each_row_before_it_and_turns_poison_into_error_rows() -> None:
    batch: Batch = {"id": object_array(["a", "b", "c"]), ERROR: object_array([None, None, "bad_input: x"])}
    noted, seen = [], []

    def stage(one: Batch) -> Batch:
        row = ["a", "b", "c"].index(one["id"][0])
        seen.append(one["id"][0])
        assert one[ERROR][0] is not None or noted[-1:] == [row]  # a row that can still run was noted first
        return one

    out = run_isolated(stage, batch, {0: "the worker process (pid 9) died on this row"}, noted.append)
    assert noted == [1]  # row 0 is poison and row 2 already failed: neither can kill anything
    assert seen == ["a", "b", "c"]  # every row comes out
    errors = list(out[ERROR])
    assert errors[0].startswith("worker_crashed: the worker process (pid 9)") and errors[1] is None
    assert errors[2] == "bad_input: x"
    assert isinstance(out["id"], np.ndarray) and list(out["id"]) == ["a", "b", "c"]


def test_a_note_left_by_a_killed_process_becomes_a_verdict_for_every_process_on_the_node(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pipeline.crash_isolation import NodeJournal
        journal = NodeJournal(Path({str(root)!r}))
        journal.note("deadbeef" * 4)
        print("noted", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "noted"
        here = NodeJournal(root)
        here.collect()
        assert here.verdict("deadbeef" * 4) is None  # its process is alive: working, not deadly
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while NodeJournal(root).verdict("deadbeef" * 4) is None and time.monotonic() < deadline:
        NodeJournal(root).collect()
        time.sleep(0.1)
    assert NodeJournal(root).verdict("deadbeef" * 4) == f"killed the replica process {child.pid} that decoded it"
    here = NodeJournal(root)
    here.note("cafe" * 8)
    here.clear()
    here.collect()  # this process's own, cleared note is not a verdict
    assert here.verdict("cafe" * 8) is None
