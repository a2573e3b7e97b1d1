"""Small helpers for what the commands print."""

from __future__ import annotations

from datetime import datetime


def when(moment: object) -> str:
    """A stored moment as `YYYY-MM-DD HH:MM:SS` (UTC), or `-` when there is none."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if isinstance(moment, datetime) else "-"
