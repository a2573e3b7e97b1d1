"""tusd-py bench: load any tus server with many concurrent uploads and report what happened.

Its options are the client's, not the server's, so they are declared here and not in
tusd_py.config (no TUSD_* environment variables). It imports only tusd_py.loadgen (the
standard library): it runs where the server's backends are not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

NAME = "bench"
HELP = "load a tus server with many concurrent uploads and report throughput and latency"
DESCRIPTION = (
    "Load a tus 1.0.0 server (tusd-py, tusd, @tus/server, ...) with many concurrent uploads. "
    "Each upload opens a connection, creates the upload (POST with Upload-Length), sends "
    "its bytes in PATCHes of --chunk bytes on that keep-alive connection and, with "
    "--verify, checks with HEAD that Upload-Offset equals the length. An upload stops at "
    "its first failure; nothing is retried. Reports uploads/s, MB/s, latency percentiles "
    "per request kind, errors by status and unanswered requests (no complete answer "
    "within --request-timeout); with --pid, the server's peak RSS and CPU seconds. "
    "Exit status: 0 when every upload succeeded, 1 when any failed, 2 for bad arguments."
)


def _size(text: str) -> int:
    from ..loadgen import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: type[Any]) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
        return value

    convert.__name__ = kind.__name__
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "endpoint", metavar="ENDPOINT", help="creation URL, e.g. http://127.0.0.1:1080/files/"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--uploads", type=_positive(int), metavar="N", help="uploads to run (default 100)"
    )
    amount.add_argument(
        "--duration",
        type=_positive(float),
        metavar="SECONDS",
        help="start uploads for this long instead (those in flight then finish)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive(int),
        default=10,
        metavar="K",
        help="uploads in flight at once, one connection each (default 10)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=1024 * 1024,
        metavar="SIZE",
        help="bytes per upload: 1048576, 1MiB, 256KiB, 1MB (default 1MiB)",
    )
    parser.add_argument(
        "--chunk",
        type=_size,
        default=256 * 1024,
        metavar="SIZE",
        help="bytes per PATCH (default 256KiB)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="end each upload with a HEAD whose Upload-Offset must equal the length",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive(float),
        default=60.0,
        metavar="SECONDS",
        help="a request without a complete answer after this long is counted as "
        "unanswered and its upload stops (default 60)",
    )
    parser.add_argument(
        "--processes",
        type=_positive(int),
        default=1,
        metavar="P",
        help="generator processes to split the uploads over (default 1); use more when "
        "the report says the generator was saturated",
    )
    parser.add_argument(
        "--pid",
        type=_positive(int),
        metavar="PID",
        help="the server's process: report its peak RSS and CPU seconds over the run, "
        "its child processes (workers) included (Linux: reads /proc)",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header on every request (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser(prog: str = "tusd-py bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    from ..loadgen import Workload, format_text, run, summarize

    args = build_parser().parse_args(argv)
    try:
        workload = Workload(
            args.endpoint,
            uploads=None if args.duration else (args.uploads or 100),
            duration=args.duration,
            concurrency=args.concurrency,
            size=args.size,
            chunk=args.chunk,
            verify=args.verify,
            request_timeout=args.request_timeout,
            headers=tuple(args.header),
            processes=args.processes,
        )
        result = run(workload, pid=args.pid)
    except ValueError as exc:
        print(f"tusd-py bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tusd-py bench: interrupted", file=sys.stderr)
        return 130
    summary = summarize(result)
    print(json.dumps(summary) if args.json else format_text(summary), flush=True)
    return 0 if summary["uploads"]["failed"] == 0 else 1
