"""Every command's exit status, in one place: what a scheduler or a shell script branches on."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """``streamscore``'s exit statuses (the same for every command that can end that way)."""

    OK = 0  # done; for nightly also "nothing new"
    FAILED = 1  # the command ran but what it asked for did not happen (an admin call refused, no models listed)
    ERROR = 2  # bad arguments, model, input or settings, or a worker that died: one line says which
    ERROR_BUDGET_EXCEEDED = 3  # more error rows than --max-error-fraction allows; the output is written anyway
    IN_PROGRESS = 4  # nightly: another run of this job holds the claim
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
