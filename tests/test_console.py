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
