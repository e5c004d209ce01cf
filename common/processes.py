"""Whether a process still exists, for files named after the process that wrote them (Linux and macOS)."""

from __future__ import annotations

import os


def process_exists(pid: int) -> bool:
    """True while ``pid`` names a process (one we may not signal counts); False for pid <= 0."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
