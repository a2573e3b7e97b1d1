"""Many concurrent uploads, side by side: tusd-py on SQLite, tusd-py on PostgreSQL + Redis,
and @tus/server (file store), all on tmpfs, loaded by `tusd-py bench`'s engine.

    uv run python bench/load.py --uploads 2000 --concurrency 1000 --size 1MiB --chunk 256KiB

Every round runs the same workload once against each server, in turn (the order rotates
from round to round), so that noise on a shared machine falls on all of them alike. Each
measurement starts its server fresh on an empty data directory under --dir (tmpfs), loads
it with tusd_py.loadgen (--processes generator processes, every request bounded by
--request-timeout), samples the server's RSS and CPU from /proc, and stops it. The table at
the end gives medians over the rounds and the ratio of uploads/s to @tus/server's.

Services: PostgreSQL at --pg (trust auth; a throw-away database is created, migrated and
dropped at the end), Redis at --redis (the first empty database from --redis-dbs is used,
flushed before each measurement and at the end; nothing else is touched), node with
`npm ci` done in bench/peers. A server whose service is missing is skipped with a note.
Timing is never judged here: the exit status is 0 unless the script itself fails (a
server that does not start, a crash), so CI can run it for its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import error_text, git_commit, median_of  # noqa: E402
from run import Server  # noqa: E402  (bench/run.py: start, wait for OPTIONS, stop)

from tusd_py import loadgen  # noqa: E402
from tusd_py.loadgen import Workload, format_size, parse_size, summarize  # noqa: E402

PEER = "tus-node"
NAMES = {"sqlite": "tusd-py SQLite", "postgres": "tusd-py PG+Redis", PEER: "@tus/server"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoggedServer(Server):
    """bench/run.py's Server, keeping the server's output in a log file, and stopping it
    even when it does not want to (a server stuck with requests in flight)."""

    def __init__(
        self,
        key: str,
        command: list[str],
        port: int,
        data: Path,
        log: Path,
        env: dict[str, str] | None = None,
        before_start: Any = None,
    ) -> None:
        super().__init__(NAMES[key], command, port, data, env)
        self.key, self.log, self.before_start = key, log, before_start

    def start(self) -> None:
        if self.before_start is not None:
            self.before_start()
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                print(f"  ({self.name} did not stop within 20 s of SIGTERM: killed)", flush=True)
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data, ignore_errors=True)


# --- services ------------------------------------------------------------------------------


class Postgres:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"tusd_load_{uuid.uuid4().hex[:10]}"
        self.created = False

    def available(self) -> str | None:
        try:
            import psycopg

            with psycopg.connect(self.admin_url, connect_timeout=3):
                return None
        except Exception as exc:
            return f"PostgreSQL not reachable at {self.admin_url}: {exc}"

    def create(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        url = f"{base}/{self.name}"
        subprocess.run(
            [sys.executable, "-m", "tusd_py", "migrate", "--database-url", url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return url

    def drop(self) -> None:
        if not self.created:
            return
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class RedisDb:
    """The first empty database of `candidates`: only that one is ever flushed."""

    def __init__(self, base_url: str, candidates: list[int]) -> None:
        self.base_url, self.candidates = base_url.rstrip("/"), candidates
        self.db: int | None = None

    def claim(self) -> str | None:
        try:
            import redis
        except ImportError:
            return "the redis package is not installed"
        try:
            for db in self.candidates:
                client = redis.Redis.from_url(f"{self.base_url}/{db}", socket_timeout=3)
                try:
                    if client.dbsize() == 0:
                        self.db = db
                        return None
                finally:
                    client.close()
        except Exception as exc:
            return f"Redis not reachable at {self.base_url}: {exc}"
        return f"no empty Redis database among {self.candidates}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.db}"

    def flush(self) -> None:
        if self.db is None:
            return
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=10)
        try:
            client.flushdb()
        finally:
            client.close()


def peer_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "peers" / "node_modules" / "@tus" / "server").is_dir():
        return "run `npm ci` in bench/peers first"
    return None


# --- the run ---------------------------------------------------------------------------------


def measure(server: LoggedServer, workload: Workload) -> dict[str, Any]:
    server.start()
    try:
        assert server.process is not None
        summary = summarize(loadgen.run(workload, pid=server.process.pid))
    finally:
        server.stop()
    return summary


def one_line(name: str, s: dict[str, Any]) -> str:
    server = s["server"] or {}
    errors = ", ".join(f"{label}: {n}" for label, n in s["errors"].items()) or "0"
    gen = s["generator"]
    return (
        f"  {name:18} {s['uploads']['ok']:>5}/{s['uploads']['started']:<5} ok "
        f"{s['uploads_per_s']:7.1f} uploads/s {s['mb_per_s']:7.1f} MB/s  "
        f"PATCH p99 {s['requests']['PATCH']['p99_ms'] or 0:8.0f} ms  errors {errors}  "
        f"unanswered {s['unanswered']}  RSS {server.get('peak_rss_mib', 0):.0f} MiB  "
        f"CPU {server.get('cpu_seconds', 0):.1f} s  generator {gen['busiest_cpu_share']:.2f}"
        + (" SATURATED" if gen["saturated"] else "")
    )


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    reference = median_of(results[PEER], lambda r: r["uploads_per_s"]) if PEER in results else None
    rows = [
        "| Server | uploads ok | uploads/s | ratio to @tus/server | POST p99 | PATCH p99 "
        "| errors | unanswered | peak RSS | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, runs in results.items():
        rate = median_of(runs, lambda r: r["uploads_per_s"])
        ratio = f"**{rate / reference:.2f}**" if reference else "-"
        ok = "/".join(str(r["uploads"]["ok"]) for r in runs)
        rows.append(
            f"| {NAMES[key]} | {ok} of {runs[0]['uploads']['started']} | {rate:.1f} | {ratio} "
            f"| {median_of(runs, lambda r: r['requests']['POST']['p99_ms']) / 1000:.2f} s "
            f"| {median_of(runs, lambda r: r['requests']['PATCH']['p99_ms']) / 1000:.2f} s "
            f"| {error_text(runs)} | {sum(r['unanswered'] for r in runs)} "
            f"| {max((r['server'] or {}).get('peak_rss_mib', 0) for r in runs):.0f} MiB "
            f"| {median_of(runs, lambda r: (r['server'] or {}).get('cpu_seconds')):.1f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--size", type=parse_size, default=parse_size("1MiB"))
    parser.add_argument("--chunk", type=parse_size, default=parse_size("256KiB"))
    parser.add_argument("--verify", action="store_true", help="end each upload with a HEAD")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--warm-up",
        type=int,
        help="uploads sent to each server before the first round, not measured (default: a "
        "quarter of --uploads; 0: none). The first measurement of a run was up to 20 %% "
        "slower than the same server's later ones, whichever server it was: memory the "
        "machine had not touched yet (tmpfs pages, PostgreSQL's buffers)",
    )
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument(
        "--servers",
        default=f"sqlite,postgres,{PEER}",
        help=f"comma-separated, from sqlite, postgres, {PEER} (default: all three)",
    )
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tusd-load"))
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument(
        "--redis-dbs",
        default="8,9,10,11,12,13,14,15",
        help="Redis databases to choose from (the first empty one is used)",
    )
    parser.add_argument(
        "--server-args", default="", help="extra options for both tusd-py servers (one string)"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="write the servers' output to this directory and keep it (default: under --dir, "
        "removed at the end)",
    )
    args = parser.parse_args()

    wanted = [key.strip() for key in args.servers.split(",") if key.strip()]
    unknown = set(wanted) - set(NAMES)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    workload = Workload(
        "http://127.0.0.1:1/files/",  # each server's endpoint replaces it
        uploads=args.uploads,
        concurrency=args.concurrency,
        size=args.size,
        chunk=args.chunk,
        verify=args.verify,
        request_timeout=args.request_timeout,
        processes=args.processes,
    )
    load_start = os.getloadavg()
    started_at = datetime.now(UTC)
    print(
        f"== load: {args.uploads} uploads of {format_size(args.size)} in "
        f"{format_size(args.chunk)} PATCHes, {args.concurrency} concurrent, "
        f"{args.processes} generator processes, {args.rounds} round(s)\n"
        f"   {started_at:%Y-%m-%d %H:%M} UTC, commit {git_commit()}, {os.cpu_count()} CPUs, "
        f"load average {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}",
        flush=True,
    )

    args.dir.mkdir(parents=True, exist_ok=True)
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    tusd = [
        sys.executable,
        "-m",
        "tusd_py",
        "serve",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        *args.server_args.split(),
    ]
    postgres = Postgres(args.pg)
    redis_db = RedisDb(args.redis, [int(n) for n in args.redis_dbs.split(",")])
    servers: list[LoggedServer] = []
    try:
        for key in wanted:
            port = free_port()
            data = args.dir / key
            log = (args.keep_logs or args.dir) / f"{key}.log"
            if key == "sqlite":
                command = [*tusd, "--port", str(port), "--data-dir", str(data)]
                servers.append(LoggedServer(key, command, port, data, log))
            elif key == "postgres":
                missing = postgres.available() or redis_db.claim()
                if missing:
                    print(f"   skipped {NAMES[key]}: {missing}", flush=True)
                    continue
                database_url = postgres.create()
                command = [
                    *tusd,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data),
                    "--database-url",
                    database_url,
                    "--redis-url",
                    redis_db.url,
                ]
                servers.append(
                    LoggedServer(key, command, port, data, log, before_start=redis_db.flush)
                )
                print(f"   {NAMES[key]}: database {postgres.name}, Redis db {redis_db.db}")
            else:
                missing = peer_missing()
                if missing:
                    print(f"   skipped {NAMES[key]}: {missing}", flush=True)
                    continue
                command = [
                    "node",
                    str(HERE / "peers" / "tus-node-server.mjs"),
                    str(port),
                    str(data),
                ]
                servers.append(LoggedServer(key, command, port, data, log))

        warm_up = args.uploads // 4 if args.warm_up is None else args.warm_up
        if warm_up > 0:
            for server in servers:
                measure(
                    server, dataclasses.replace(workload, endpoint=server.endpoint, uploads=warm_up)
                )
            print(f"   warm-up: {warm_up} uploads to each server, not measured", flush=True)
        results: dict[str, list[dict[str, Any]]] = {s.key: [] for s in servers}
        for round_number in range(args.rounds):
            shift = round_number % max(len(servers), 1)
            for server in servers[shift:] + servers[:shift]:
                share = dataclasses.replace(workload, endpoint=server.endpoint)
                summary = measure(server, share)
                summary["round"] = round_number + 1
                results[server.key].append(summary)
                print(one_line(f"{round_number + 1}: {server.name}", summary), flush=True)
    finally:
        for server in servers:
            server.stop()
        postgres.drop()
        redis_db.flush()
        shutil.rmtree(args.dir, ignore_errors=True)

    load_end = os.getloadavg()
    print(
        f"\n   load average at the end {load_end[0]:.2f} / {load_end[1]:.2f} / "
        f"{load_end[2]:.2f}; medians over {args.rounds} round(s)\n"
    )
    if results:
        print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started_at.isoformat(),
                    "commit": git_commit(),
                    "load_average": {"start": load_start, "end": load_end},
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
