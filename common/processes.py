"""Whether a process still exists, for files named after the process that wrote them (Linux and macOS)."""

from __future__ import annotations

import psutil


def process_exists(pid: int) -> bool:
    """True while ``pid`` names a process (one we may not signal counts); False for pid <= 0 (which psutil
    would take for the kernel's idle task)."""
    return pid > 0 and psutil.pid_exists(pid)
