"""What every command shares: logging, the models folder, connecting to Ray, and how a command ends.

``run_command`` turns a StreamScoreError (bad arguments, model, input or settings, found before any data is
read where possible; a worker that died) into one line and exit 2, and Ctrl-C into one line and exit 130.
Commands return their own status otherwise; ``jobs/exit_codes.py`` lists them all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import StreamScoreError
from jobs.exit_codes import ExitCode
from pipeline.models.repository import MODELS_DIR_ENV, find_models_dir

logger = logging.getLogger("streamscore")


def process_started_at() -> float:
    """When this command started, on the ``time.perf_counter()`` clock: a user's wait includes the interpreter's
    start and our imports, not only what follows ``main()``.

    Not the process's start in ``/proc/self/stat``: that is the *fork*, and a shell that execs the command as its
    last step (``bash -c 'sleep 5 && streamscore score ...'``, a container's ``sh -c``, a CronJob) forked long
    before: 6.6 s were reported for a 1.6 s run, and a README line run with ``bash -c`` counted the install.
    So the start is the moment ``jobs`` was first imported, less the CPU time the process had used by then: the
    interpreter's start-up is CPU work, while what a shell waited for (``sleep``, ``pip install``) ran in its
    children and is not counted. The fork stays a lower bound. What this cannot see: a launcher that burns CPU
    in its own process and then execs us (CPU time survives an exec); its work is then counted, up to the fork.
    """
    from jobs import CPU_S_AT_IMPORT, IMPORTED_AT

    exec_estimate = IMPORTED_AT - CPU_S_AT_IMPORT
    now = time.perf_counter()
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return exec_estimate
    forked_at = now - max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    return max(forked_at, exec_estimate)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        help=f"model repository root, path or URI (default: ${MODELS_DIR_ENV}, else ./models, else the models "
        "bundled with StreamScore)",
    )


def models_dir(args: argparse.Namespace) -> str:
    return find_models_dir(getattr(args, "models_dir", None), os.environ.get(MODELS_DIR_ENV), Path.cwd())


INTERRUPTED = "streamscore: interrupted; no output was published"
# After Ctrl-C the command gets this long to unwind (Ray shutting down its local instance included); then, or
# at a second Ctrl-C, it exits at once. Seen here: a Ctrl-C that landed inside ray.init was swallowed there,
# and the run then hung; one that landed in logging's at-fork handler was swallowed by Python itself, which
# printed "Exception ignored ... Traceback". A user's Ctrl-C must end the command whatever it interrupts.
INTERRUPT_GRACE_S = 10.0
_interrupted = threading.Event()
_said = threading.Lock()


def run_command(command: Callable[[], int]) -> int:
    """Run ``command`` and turn our errors and Ctrl-C into one line and an exit status."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
        sys.unraisablehook = _exit_if_interrupt_swallowed
    try:
        return command()
    except StreamScoreError as exc:
        print(f"streamscore: error: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        _say_interrupted()
        return ExitCode.INTERRUPTED


def _on_interrupt(signum: int, frame: object) -> None:
    if _interrupted.is_set():
        _exit_now()
    _interrupted.set()
    watchdog = threading.Timer(INTERRUPT_GRACE_S, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def _exit_if_interrupt_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    """Python cannot raise out of a fork handler, ``__del__`` or a weakref callback: it reports the exception
    and goes on. Our Ctrl-C landing there would then be lost (and its traceback printed), so end the command
    at once instead; every other unraisable exception is reported as Python would."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted.is_set():
        _exit_now()
    sys.__unraisablehook__(unraisable)


def _say_interrupted() -> None:
    if _said.acquire(blocking=False):
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)


def _exit_now() -> None:
    """Stop the processes this command started (a local Ray instance) and exit with 130, skipping clean-up."""
    import psutil

    _say_interrupted()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(ExitCode.INTERRUPTED)


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); without one, start a local instance for this run.

    A local instance lives only as long as this command, so it starts without the dashboard, whose
    processes would take CPU from the actors (measured: about 3% of a 2-core machine).
    """
    import ray

    # Ray colours its log prefixes whenever it is asked to; a pipe or a log file should get plain text.
    os.environ.setdefault("RAY_COLOR_PREFIX", "1" if sys.stderr.isatty() else "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # "local": never join a cluster that `ray start` left running on this machine without being asked.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    _quiet_ray_data_console()


def _quiet_ray_data_console() -> None:
    """Ray Data's per-dataset chatter on the console ("Starting execution", "Progress bars disabled") would
    bury our progress line and summary; its file log in the session's logs/ray-data folder keeps it all."""
    import ray.data  # noqa: F401 - configures Ray Data's loggers, which we then adjust

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


def run_script(
    prog: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[argparse.Namespace, float], int],
    argv: Sequence[str] | None = None,
) -> int:
    """The ``main`` of a job script (``python jobs/X.py ...``, as ``ray job submit`` runs it)."""
    started_at = process_started_at()
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return run_command(lambda: command(args, started_at))
