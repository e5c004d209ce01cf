"""How a command ends on Ctrl-C, wherever the signal lands (a real process, a real SIGINT)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

# The SIGINT lands inside __del__, where Python cannot raise: it reports the KeyboardInterrupt as "Exception
# ignored" and goes on. Seen in CI with logging's at-fork handler, while Ray was starting its workers.
_SWALLOWED_CTRL_C = textwrap.dedent(
    """
    import signal, sys, time
    from jobs import console

    console.INTERRUPT_GRACE_S = 600  # so that only the swallowed Ctrl-C itself can end the command

    class LandsInDel:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
            sum(range(10_000))  # bytecode to run, where the handler is called

    def command():
        LandsInDel()
        time.sleep(20)  # what the command would go on doing had the Ctrl-C been lost
        return 0

    sys.exit(console.run_command(command))
    """
)


def test_a_ctrl_c_python_swallows_still_ends_the_command_at_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SWALLOWED_CTRL_C], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr  # 0 had the command run on to its end
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == ["streamscore: interrupted; no output was published"]


_AGES = (
    "import os, time; from pathlib import Path; from jobs import console;"
    "stat = Path('/proc/self/stat').read_text().rsplit(')', 1)[1].split();"
    "fork_age = float(Path('/proc/uptime').read_text().split()[0]) - int(stat[19]) / os.sysconf('SC_CLK_TCK');"
    "print(fork_age, time.perf_counter() - console.process_started_at())"
)


def test_a_command_a_shell_execs_does_not_count_what_the_shell_did_before() -> None:
    """``bash -c 'sleep 2 && CMD'`` execs CMD in the shell's own process, forked before the sleep: the fork's
    start time is 2 s too early, and the command's start must not be taken from it."""
    done = subprocess.run(
        ["bash", "-c", f'sleep 2 && {sys.executable} -c "{_AGES}"'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    fork_age_s, started_s_ago = map(float, done.stdout.split())
    assert fork_age_s >= 2.0, "bash did not exec the command: this test would prove nothing"
    assert started_s_ago < fork_age_s - 1.5, (fork_age_s, started_s_ago)
