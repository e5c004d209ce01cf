"""Measuring a benchmark scenario from outside: wall time and the peak memory of its whole process tree.

Ray's gcs, raylet and workers are children of the scenario's process, so the tree's RSS is what the
scenario really costs the machine; PSS is reported too, since RSS counts shared pages (the object store,
libraries of forked workers) once per process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

_PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parents[1]


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (the walk ``streamscore`` itself uses to stop what it started)."""
    try:
        return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [root]


def _rss_mb(pids: list[int]) -> list[float]:
    """RSS of each process of ``pids`` that is still there."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                found.append(int(f.read().split()[1]) * _PAGE / 2**20)
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return found


def _tree_pss_mb(pids: list[int]) -> float:
    """Summed PSS: RSS double-counts shared pages (Ray's object store is mapped into every worker, forked
    workers share libraries), PSS splits them, so PSS sums to the tree's real footprint. Reading
    smaps_rollup walks page tables (~35 ms for a 20-process Ray tree), so it is sampled sparingly."""
    pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return pss / 2**20


def measure(cmd: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``cmd`` in its own session, sampling its tree's RSS every 0.1 s; return wall time and peaks: of the
    tree, and of its largest process (a worker's own footprint)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    peak_rss = peak_pss = peak_process = 0.0
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        last_pss, pss_due = 0.0, False
        while proc.poll() is None:
            pids = _process_tree(proc.pid)
            each = _rss_mb(pids)  # ~2 ms per sample: cheap enough to take every 0.1 s
            rss, peak_process = sum(each), max([peak_process, *each])
            # PSS after each new RSS peak (+1%), at most every 0.2 s: the peaks coincide, and the
            # steady state, when RSS stops rising, costs nothing.
            pss_due = pss_due or rss > peak_rss * 1.01
            peak_rss = max(peak_rss, rss)
            if pss_due and time.perf_counter() - last_pss > 0.2:
                peak_pss, last_pss, pss_due = max(peak_pss, _tree_pss_mb(pids)), time.perf_counter(), False
            if time.perf_counter() - start > timeout_s:
                for pid in _process_tree(proc.pid):  # Ray workers get their own process groups
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
                return {"error": f"timed out after {timeout_s:.0f} s; log in {log}"}
            time.sleep(0.1)
        wall_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "wall_s": wall_s,
        "peak_rss_mb": peak_rss,
        "peak_pss_mb": peak_pss,
        "peak_process_rss_mb": peak_process,
    }
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        result["error"] = f"exit code {proc.returncode}: {' | '.join(tail)[-600:]} (log: {log})"
    return result
