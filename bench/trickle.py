"""A slow-client flood must not starve the others: uploads beside thousands of tricklers.

    uv run python bench/trickle.py --slow 5000 --rate 1024 --uploads 200 --concurrency 50

Starts tusd-py (file store and SQLite on tmpfs, default settings), opens --slow connections
that each create an upload of 1 MiB and then send its PATCH body at --rate bytes per second
(issue 9's trickle: 1 KiB/s each, so 5,000 of them are 5,000 small writes a second), and
once they are all sending, runs `tusd-py bench` (--uploads of --size in --chunk PATCHes,
--concurrency at a time) beside them. The same bench runs first without the flood, on a
fresh server, for the baseline. Reports both, how many slow connections were still open at
the end, and the server's peak RSS, open file descriptors and CPU. Nothing is judged: the
exit status is 0 unless the script itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from load import free_port  # noqa: E402
from run import Server  # noqa: E402  (bench/run.py: start, wait for OPTIONS, stop)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class SlowClient:
    """One connection: POST, then a PATCH whose body trickles in one byte at a time."""

    def __init__(self, port: int, size: int, piece: bytes) -> None:
        self.port, self.size, self.piece = port, size, piece
        self.sent = 0
        self.open = False
        self.failure: str | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer = writer
            writer.write(
                b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                b"Upload-Length: " + str(self.size).encode() + b"\r\nContent-Length: 0\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            location = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"location:")
            )
            path = location.split(b"://", 1)[-1]
            path = path[path.index(b"/") :] if b"://" in location else location
            writer.write(
                b"PATCH " + path + b" HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                b"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                b"Content-Length: " + str(self.size).encode() + b"\r\n\r\n"
            )
            await writer.drain()
            self.open = True
        except Exception as exc:  # counted, not raised: the flood is the load, not the test
            self.failure = f"{type(exc).__name__}: {exc}"

    async def trickle(self) -> None:
        if not self.open or self.writer is None:
            return
        try:
            self.writer.write(self.piece)
            await self.writer.drain()
            self.sent += len(self.piece)
            if self.writer.is_closing():
                self.open = False
        except Exception as exc:
            self.open = False
            self.failure = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tusd_py(port: int, data: Path, extra: list[str]) -> Server:
    command = [sys.executable, "-m", "tusd_py", "serve", "--port", str(port)]
    return Server(
        "tusd-py",
        [*command, "--data-dir", str(data), "--log-level", "warning", *extra],
        port,
        data,
    )


def bench(port: int, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tusd_py",
            "bench",
            f"http://127.0.0.1:{port}/files/",
            "--uploads",
            str(args.uploads),
            "--concurrency",
            str(args.concurrency),
            "--size",
            args.size,
            "--chunk",
            args.chunk,
            "--request-timeout",
            "60",
            "--pid",
            str(pid),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def flood_and_bench(port: int, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    piece = b"x" * max(1, int(args.rate * args.interval))
    clients = [SlowClient(port, 1024 * 1024, piece) for _ in range(args.slow)]
    started = time.monotonic()
    for i in range(0, len(clients), 200):  # connect in waves, as a crowd of phones would
        await asyncio.gather(*(c.start() for c in clients[i : i + 200]))
    connected = sum(c.open for c in clients)
    ramp = time.monotonic() - started
    print(
        f"   {connected} of {args.slow} slow uploads sending ({ramp:.1f} s to start them); "
        f"server fds {open_fds(pid)}",
        flush=True,
    )

    async def keep_trickling(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.gather(*(c.trickle() for c in clients))
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except TimeoutError:
                pass

    stop = asyncio.Event()
    trickler = asyncio.create_task(keep_trickling(stop))
    fds = open_fds(pid)
    result = await asyncio.to_thread(bench, port, args, pid)
    stop.set()
    await trickler
    still_open = sum(c.open for c in clients)
    failures: dict[str, int] = {}
    for c in clients:
        if c.failure:
            failures[c.failure[:80]] = failures.get(c.failure[:80], 0) + 1
    for c in clients:
        c.close()
    sent = sum(c.sent for c in clients)
    print(f"   the slow uploads sent {sent / 1e6:.1f} MB in all", flush=True)
    return {
        "bench": result,
        "slow_connected": connected,
        "slow_open_at_end": still_open,
        "slow_failures": failures,
        "server_fds": fds,
    }


def line(name: str, result: dict[str, Any]) -> str:
    server = result.get("server", {})
    kinds = result.get("requests", {})
    patch = kinds.get("PATCH", {})
    post = kinds.get("POST", {})
    return (
        f"| {name} | {result['uploads']['ok']} of {result['uploads']['started']} | "
        f"{result['uploads_per_s']:.1f} | {post.get('p99_ms') or 0:.0f} ms | "
        f"{patch.get('p99_ms') or 0:.0f} ms | {sum(result['errors'].values())} | "
        f"{result['unanswered']} | {server.get('peak_rss_mib', 0):.0f} MiB | "
        f"{server.get('cpu_seconds', 0):.1f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1024.0, help="bytes/s per slow upload")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between writes")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--size", default="1MiB")
    parser.add_argument("--chunk", default="256KiB")
    parser.add_argument("--dir", default="/dev/shm/tusd-trickle")
    parser.add_argument(
        "--server-args", default="", help="extra options for tusd-py serve (one string)"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood's own sockets
    data = Path(args.dir)
    rows = []
    try:
        for flood in (False, True):
            port = free_port()
            server = tusd_py(port, data, args.server_args.split())
            server.start()
            assert server.process is not None
            pid = server.process.pid
            try:
                if flood:
                    print(f"== {args.uploads} uploads beside {args.slow} slow ones", flush=True)
                    outcome = asyncio.run(flood_and_bench(port, args, pid))
                    result = outcome["bench"]
                    print(
                        f"   slow uploads still open at the end: {outcome['slow_open_at_end']}"
                        f"; failures {outcome['slow_failures']}",
                        flush=True,
                    )
                else:
                    print(f"== {args.uploads} uploads alone", flush=True)
                    result = bench(port, args, pid)
                rows.append(line(f"beside {args.slow} slow uploads" if flood else "alone", result))
                print(rows[-1], flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(
        "\n| Run | uploads ok | uploads/s | POST p99 | PATCH p99 | errors | unanswered "
        "| peak RSS | server CPU |\n|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
