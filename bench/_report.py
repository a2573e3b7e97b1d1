"""Helpers shared by the benchmark scripts' reports (bench/load.py, bench/s3_budget.py)."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD's short hash, noting uncommitted changes to tracked files; "unknown" without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def median_of(runs: list[dict[str, Any]], pick: Any) -> float:
    """The median of pick(run) over the runs, skipping None; NaN when nothing is left."""
    values = [v for v in (pick(r) for r in runs) if v is not None]
    return statistics.median(values) if values else float("nan")


def error_text(runs: list[dict[str, Any]]) -> str:
    """The runs' errors summed by label, as "3 x 503, 1 x timeout", or "0"."""
    errors: dict[str, int] = {}
    for r in runs:
        for label, n in r["errors"].items():
            errors[label] = errors.get(label, 0) + n
    return ", ".join(f"{n} x {label}" for label, n in errors.items()) or "0"
