"""A load generator for any tus 1.0.0 server (`tusd-py bench`).

    from tusd_py.loadgen import Workload, run, summarize
    summary = summarize(run(Workload("http://127.0.0.1:1080/files/", uploads=200,
                                     concurrency=50), pid=server_pid))

Modules: `http` (a minimal HTTP/1.1 client on asyncio streams), `workload` (what an upload
sends, the lanes, the worker processes), `stats` (counts and percentiles), `usage` (CPU and
RSS of a process tree from /proc), `report` (JSON and text). It imports only the standard
library, so that it runs where the server's backends are not installed.
"""

from __future__ import annotations

from .report import format_text, summarize
from .stats import KINDS, Recorder, percentile
from .usage import ProcessTreeSampler, TreeUsage
from .workload import RunResult, Workload, format_size, make_payload, parse_size, run

__all__ = [
    "KINDS",
    "ProcessTreeSampler",
    "Recorder",
    "RunResult",
    "TreeUsage",
    "Workload",
    "format_size",
    "format_text",
    "make_payload",
    "parse_size",
    "percentile",
    "run",
    "summarize",
]
