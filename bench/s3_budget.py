"""Many concurrent uploads through the S3 store, side by side with @tus/server + @tus/s3-store,
both on the same throw-away Ceph RADOS Gateway: issue 9's S3 target (1,000 concurrent
uploads of 2 MiB, each sent in one PATCH) and the memory it takes.

    uv run python bench/s3_budget.py --uploads 1000 --concurrency 1000 --size 2MiB --rounds 2

Every round runs the workload once against each server, in turn (the order rotates), each
started fresh with its default settings (tusd-py: SQLite state, default --max-buffer-memory
and --buffer-wait-timeout; extra tusd-py variants with --variant NAME=ENV, e.g.
`--variant 256MiB=TUSD_MAX_BUFFER_MEMORY=268435456`). The load comes from `tusd-py bench`'s
engine (tusd_py.loadgen): a POST, then the upload's bytes in PATCHes of --chunk (default: the
whole upload in one), one connection per upload, every request bounded by
--request-timeout. Reported per run: uploads ok, uploads/s, PATCH p50/p99, errors by status,
unanswered requests, the server's peak RSS and CPU seconds, the gateway's CPU seconds
(radosgw + ceph-osd), and how many objects of the upload's size the bucket holds afterwards
(every upload must be one). The buckets are emptied and the gateway's garbage collector run
after each run, so the in-memory OSD does not fill up.

Needs Ceph (apt-get install ceph-mon ceph-osd radosgw), and node with `npm ci` in bench/peers
for @tus/server. Timing is never judged: exit status 0 unless the script itself fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._report import error_text, git_commit, median_of
from bench.s3 import S3Server, cpu_seconds, empty_buckets, rgw_pids, tus_node, tusd_py, warm_up
from tests.s3_servers import RgwServer, free_port, start_rgw
from tusd_py import loadgen
from tusd_py.loadgen import Workload, format_size, parse_size, summarize

PEER = "@tus/server"


def objects_of_size(rgw: RgwServer, server: S3Server, size: int) -> int:
    client = rgw.endpoint.client()
    return sum(
        1
        for item in client.list_objects(server.bucket, prefix=server.prefix, recursive=True)
        if item.size == size and ".fragments/" not in (item.object_name or "")
    )


def measure(server: S3Server, rgw: RgwServer, workload: Workload) -> dict[str, Any]:
    server.start_on(rgw.endpoint)
    try:
        assert server.process is not None
        gateway = rgw_pids(rgw)
        gateway_before = sum(cpu_seconds(pid) for pid in gateway)
        load = os.getloadavg()[0]
        share = dataclasses.replace(workload, endpoint=server.endpoint)
        summary = summarize(loadgen.run(share, pid=server.process.pid))
        summary["gateway_cpu_seconds"] = round(
            sum(cpu_seconds(pid) for pid in gateway) - gateway_before, 1
        )
        summary["load1_before"] = load
        time.sleep(1)  # completions run after the last 204 (CompleteMultipartUpload)
        summary["objects"] = objects_of_size(rgw, server, workload.size)
    finally:
        server.stop()
        empty_buckets(rgw, [server.bucket])
    return summary


def one_line(name: str, s: dict[str, Any]) -> str:
    server = s["server"] or {}
    errors = ", ".join(f"{label}: {n}" for label, n in s["errors"].items()) or "0"
    patch = s["requests"]["PATCH"]
    return (
        f"  {name:22} {s['uploads']['ok']:>5}/{s['uploads']['started']:<5} ok "
        f"{s['uploads_per_s']:6.1f} uploads/s {s['mb_per_s']:6.1f} MB/s  PATCH p50 "
        f"{(patch['p50_ms'] or 0) / 1000:5.1f} s p99 {(patch['p99_ms'] or 0) / 1000:5.1f} s  "
        f"errors {errors}  unanswered {s['unanswered']}  objects {s['objects']}  "
        f"RSS {server.get('peak_rss_mib', 0):.0f} MiB  CPU {server.get('cpu_seconds', 0):.1f} s  "
        f"gateway CPU {s['gateway_cpu_seconds']:.1f} s  load {s['load1_before']:.1f}"
        + ("  generator SATURATED" if s["generator"]["saturated"] else "")
    )


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    reference = median_of(results[PEER], lambda r: r["uploads_per_s"]) if PEER in results else None
    rows = [
        "| Server | uploads ok | uploads/s | ratio to @tus/s3-store | PATCH p50 / p99 "
        "| errors | unanswered | peak RSS | CPU s | gateway CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        rate = median_of(runs, lambda r: r["uploads_per_s"])
        ratio = f"**{rate / reference:.2f}**" if reference else "-"
        ok = "/".join(str(r["uploads"]["ok"]) for r in runs)
        rows.append(
            f"| {name} | {ok} of {runs[0]['uploads']['started']} | {rate:.1f} | {ratio} "
            f"| {median_of(runs, lambda r: r['requests']['PATCH']['p50_ms']) / 1000:.1f} s / "
            f"{median_of(runs, lambda r: r['requests']['PATCH']['p99_ms']) / 1000:.1f} s "
            f"| {error_text(runs)} | {sum(r['unanswered'] for r in runs)} "
            f"| {max((r['server'] or {}).get('peak_rss_mib', 0) for r in runs):.0f} MiB "
            f"| {median_of(runs, lambda r: (r['server'] or {}).get('cpu_seconds')):.1f} "
            f"| {median_of(runs, lambda r: r['gateway_cpu_seconds']):.1f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--size", type=parse_size, default=parse_size("2MiB"))
    parser.add_argument("--chunk", type=parse_size, help="bytes per PATCH (default: --size)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ENV=VALUE[,ENV=VALUE]",
        help="also run tusd-py with these TUSD_* variables (repeatable)",
    )
    parser.add_argument("--no-peer", action="store_true", help="tusd-py only")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tusd-bench-s3-budget"))
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    workload = Workload(
        "http://127.0.0.1:1/files/",  # each server's endpoint replaces it
        uploads=args.uploads,
        concurrency=args.concurrency,
        size=args.size,
        chunk=args.chunk or args.size,
        request_timeout=args.request_timeout,
        processes=args.processes,
    )
    print(
        f"== S3 load: {args.uploads} uploads of {format_size(args.size)} in "
        f"{format_size(workload.chunk)} PATCHes, {args.concurrency} concurrent, "
        f"{args.rounds} round(s); commit {git_commit()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    rgw = start_rgw(args.dir / "rgw", free_port())
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        s3 = rgw.endpoint
        servers = [tusd_py(free_port(), args.dir, s3)]
        for variant in args.variant:
            name, _, assignments = variant.partition("=")
            env = dict(item.split("=", 1) for item in assignments.split(","))
            server = tusd_py(free_port(), args.dir, s3, extra_env=env)
            server.name = f"tusd-py {name}"
            servers.append(server)
        if not args.no_peer:
            servers.append(tus_node(free_port(), args.dir, s3))
        seconds = warm_up(rgw, 256 * 1024 * 1024)
        print(f"   RGW on {s3.url}; warm-up: 256 MiB in {seconds:.1f} s", flush=True)
        for round_number in range(args.rounds):
            shift = round_number % len(servers)
            for server in servers[shift:] + servers[:shift]:
                summary = measure(server, rgw, workload)
                summary["round"] = round_number + 1
                results.setdefault(server.name, []).append(summary)
                print(one_line(f"{round_number + 1}: {server.name}", summary), flush=True)
    finally:
        rgw.stop()
    print(f"\n   load average at the end {os.getloadavg()[0]:.2f}; medians over the rounds\n")
    if results:
        print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
