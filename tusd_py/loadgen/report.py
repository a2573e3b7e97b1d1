"""A run's figures as one JSON-ready dict, and as text for a terminal."""

from __future__ import annotations

import math
from typing import Any

from .stats import KINDS
from .workload import SATURATED, RunResult, format_size


def summarize(result: RunResult) -> dict[str, Any]:
    workload, rec, wall = result.workload, result.recorder, result.wall_seconds
    kinds = KINDS if workload.verify else KINDS[:2]
    generator_cpu = sum(cpu for cpu, _ in result.workers)
    busiest = max((cpu / w for cpu, w in result.workers if w > 0), default=0.0)
    processes = len(result.workers)
    server: dict[str, Any] | None = None
    if result.server is not None:
        usage = result.server
        server = {
            "pid": usage.pid,
            "processes": usage.processes,
            "peak_rss_bytes": usage.peak_rss_bytes,
            "peak_rss_mib": round(usage.peak_rss_bytes / 2**20, 1),
            "cpu_seconds": usage.cpu_seconds,
            "cpu_per_wall": _ratio(usage.cpu_seconds, wall),
            "samples": usage.samples,
        }
    return {
        "endpoint": workload.endpoint,
        "workload": {
            "uploads": workload.uploads,
            "duration": workload.duration,
            "concurrency": workload.concurrency,
            "size": workload.size,
            "chunk": workload.chunk,
            "verify": workload.verify,
            "request_timeout": workload.request_timeout,
            "processes": workload.processes,
        },
        "wall_seconds": round(wall, 3),
        "uploads": {
            "started": rec.uploads_started,
            "ok": rec.uploads_ok,
            "failed": rec.uploads_failed,
        },
        "uploads_per_s": _ratio(rec.uploads_ok, wall),
        "mb_per_s": _ratio(rec.bytes_acknowledged / 1e6, wall),
        "bytes_sent": rec.bytes_sent,
        "bytes_acknowledged": rec.bytes_acknowledged,
        "requests": {kind: rec.kind_summary(kind) for kind in kinds},
        "errors": rec.errors_by_label(),
        "unanswered": sum(rec.unanswered.values()),
        "server": server,
        "generator": {
            "processes": processes,
            "cpu_seconds": round(generator_cpu, 3),
            # CPU seconds / wall seconds / processes, and the same for the busiest process
            "cpu_share": _ratio(generator_cpu / max(processes, 1), wall),
            "busiest_cpu_share": round(busiest, 3),
            "saturated": busiest > SATURATED,
        },
    }


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else 0.0


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def format_text(summary: dict[str, Any]) -> str:
    w = summary["workload"]
    amount = (
        f"{w['uploads']} uploads"
        if w["uploads"] is not None
        else f"uploads for {w['duration']:g} s"
    )
    lines = [
        f"tusd-py bench {summary['endpoint']}",
        f"  {amount}, {format_size(w['size'])} each in {format_size(w['chunk'])} PATCHes, "
        f"{w['concurrency']} concurrent, {summary['generator']['processes']} process(es)"
        + (", HEAD check" if w["verify"] else ""),
    ]
    up = summary["uploads"]
    lines.append(
        f"  {up['ok']} of {up['started']} uploads ok in {summary['wall_seconds']:.2f} s: "
        f"{summary['uploads_per_s']:.1f} uploads/s, {summary['mb_per_s']:.1f} MB/s acknowledged"
    )
    lines.append("")
    lines.append(
        f"  {'request':8}{'sent':>8}{'answered':>10}{'unanswered':>12}{'errors':>8}"
        f"{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"
    )
    for kind, row in summary["requests"].items():
        lines.append(
            f"  {kind:8}{row['sent']:>8}{row['answered']:>10}{row['unanswered']:>12}"
            f"{sum(row['errors'].values()):>8}{_cell(row['p50_ms']):>10}"
            f"{_cell(row['p95_ms']):>10}{_cell(row['p99_ms']):>10}{_cell(row['max_ms']):>10}"
        )
    lines.append("")
    if summary["errors"]:
        by_kind = "; ".join(
            f"{kind} " + ", ".join(f"{label} x{n}" for label, n in row["errors"].items())
            for kind, row in summary["requests"].items()
            if row["errors"]
        )
        lines.append(f"  errors: {sum(summary['errors'].values())} ({by_kind})")
    else:
        lines.append("  errors: 0")
    lines.append(
        f"  unanswered: {summary['unanswered']} "
        f"(no complete answer within {w['request_timeout']:g} s)"
    )
    server = summary["server"]
    if server is not None:
        lines.append(
            f"  server pid {server['pid']} ({server['processes']} process(es)): "
            f"peak RSS {server['peak_rss_mib']:.1f} MiB, CPU {server['cpu_seconds']:.2f} s "
            f"({server['cpu_per_wall']:.2f} CPUs)"
        )
    gen = summary["generator"]
    verdict = (
        "SATURATED: the generator may have been the limit; add --processes"
        if gen["saturated"]
        else "not saturated"
    )
    lines.append(
        f"  generator: {gen['processes']} process(es), CPU {gen['cpu_seconds']:.2f} s, "
        f"{gen['cpu_share']:.2f} of a CPU per process (busiest {gen['busiest_cpu_share']:.2f}): "
        f"{verdict}"
    )
    return "\n".join(lines)
