"""The readers the admission policy is given: this process's resident memory and the free
space of a directory's filesystem. Each returns None when the figure cannot be read (no
/proc on this system, a vanished directory): a limit that cannot see does not refuse."""

from __future__ import annotations

import os
from pathlib import Path

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Resident set size from /proc/self/statm (Linux): its second field, in pages."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem (or, while it
    does not exist yet, on that of its nearest existing parent)."""
    path = directory
    while True:
        try:
            stats = os.statvfs(path)
        except FileNotFoundError:
            if path.parent == path:
                return None
            path = path.parent
            continue
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize
