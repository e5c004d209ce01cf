"""CPU time an app's whole process tree spent over a window: what a request costs the machine, on any core count.

Requests/s on 2 shared cores says how an app does on this machine; CPU-ms per request holds on a larger one too,
where the same work is spread over more cores. Every process of an app descends from the process that started
it (``measure.py`` relies on the same): ``streamscore serve`` starts its local Ray itself, so the GCS, the raylet,
Ray's agents, every worker (Serve's controller, the proxy actor, the replicas) and the HAProxy binary the proxy
actor runs are its descendants; uvicorn's worker processes are children of uvicorn. A process that ends inside a
window loses what it spent after the first sample (none does under a steady load).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks.measure import _process_tree

# (pid, start time): a pid reused within a window is another process.
Sample = dict[tuple[int, float], tuple[str, float]]

_SCRIPTS = {
    "dashboard.py": "dashboard",
    "agent.py": "dashboard agent",
    "main.py": "runtime env agent",
    "log_monitor.py": "log monitor",
    "monitor.py": "autoscaler monitor",
}


def sample(root: int) -> Sample:
    """User + system CPU seconds of every process in ``root``'s tree so far, with the group it counts under."""
    found: Sample = {}
    for pid in _process_tree(root):
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                key = (pid, process.create_time())
                found[key] = (_group(process, pid == root), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # ended while we looked
    return found


def used(before: Sample, after: Sample) -> dict[str, float]:
    """CPU seconds spent between two samples of one tree, by group (a process born in between counts whole)."""
    spent: dict[str, float] = {}
    for key, (group, cpu_s) in after.items():
        delta = cpu_s - before.get(key, (group, 0.0))[1]
        spent[group] = spent.get(group, 0.0) + max(0.0, delta)
    return spent


def measured(root: int, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``load`` (a window of requests to the app whose tree is ``root``; it returns the window's figures, with
    ``requests`` and ``requests_per_s``) and add what the window cost in CPU: per request, by process group, and
    the cores the load generator and other work kept busy."""
    before, machine = sample(root), machine_busy_s()
    result = load()
    spent = used(before, sample(root))
    elapsed_s = result["requests"] / max(result["requests_per_s"], 1e-9)
    return result | per_request(spent, result) | others_cores(machine, machine_busy_s(), sum(spent.values()), elapsed_s)


def per_request(spent_s: dict[str, float], result: dict[str, Any]) -> dict[str, Any]:
    """CPU-ms per request over a load window (``result``: its requests and requests/s), in all and by process
    group, and the cores the tree kept busy."""
    requests = max(1, result["requests"])
    elapsed_s = result["requests"] / result["requests_per_s"] if result["requests"] else float("nan")
    return {
        "cpu_ms_per_request": sum(spent_s.values()) * 1e3 / requests,
        "cpu_ms_per_request_by_process": {group: s * 1e3 / requests for group, s in spent_s.items()},
        "cpu_cores_busy": sum(spent_s.values()) / elapsed_s,
    }


def idle_cores(root: int, seconds: float) -> float:
    """The tree's CPU use over ``seconds`` without load, in cores: for Ray, its background (GCS, raylet,
    agents, Serve's control loops and metrics)."""
    before = sample(root)
    time.sleep(seconds)
    return sum(used(before, sample(root)).values()) / seconds


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy so far (every core, steal included), and this process
    (the load generator) so far: the rest of a window's busy time is other work on the machine."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0), own.user + own.system


def others_cores(before: tuple[float, float], after: tuple[float, float], app_s: float, elapsed_s: float) -> dict:
    """Cores kept busy over a window by the load generator and by work that is neither it nor the app."""
    client_s = after[1] - before[1]
    return {
        "client_cores": client_s / elapsed_s,
        "other_cores": max(0.0, after[0] - before[0] - client_s - app_s) / elapsed_s,
    }


def wait_for_quiet(max_busy_cores: float = 0.5, max_wait_s: float = 120.0) -> dict[str, float]:
    """Before an app starts: wait (at most ``max_wait_s``) until the machine, with no app of ours running, keeps
    fewer than ``max_busy_cores`` busy over a second; other work (a test suite) skews every figure."""
    start = time.monotonic()
    while True:
        before = machine_busy_s()[0]
        time.sleep(1.0)
        busy = machine_busy_s()[0] - before
        if busy < max_busy_cores or time.monotonic() - start > max_wait_s:
            return {"quiet_wait_s": time.monotonic() - start, "busy_cores_before": busy}
        time.sleep(4.0)


def _group(process: psutil.Process, is_root: bool) -> str:
    """A short name for what a process is: Ray's workers say so in their title (``ray::ServeReplica:app:Gateway``),
    Ray's daemons and HAProxy by their binary, Ray's Python daemons by their script."""
    if is_root:
        return "driver"
    cmdline = process.cmdline()
    first = cmdline[0] if cmdline else process.name()
    if first.startswith("ray::"):  # ray::Class while idle, ray::Class.method while it runs a call
        title = first.removeprefix("ray::").split()[0]
        if title.startswith("ServeReplica:"):
            return "replica " + title.rsplit(":", 1)[-1].split(".")[0]
        return title.split(".")[0]
    name = Path(first).name
    if name.startswith("python"):
        if any("multiprocessing" in part for part in cmdline):
            return "worker process"  # uvicorn --workers N spawns them
        scripts = [Path(part).name for part in cmdline[1:] if part.endswith(".py")]
        return next((_SCRIPTS.get(script, script) for script in scripts), "python")
    return "haproxy" if name.startswith("haproxy") else name
