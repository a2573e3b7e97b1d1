"""Many instances: HEAD latency with and without the Redis cache, and handover across instances.

Three tusd-py instances share one PostgreSQL database, one Redis database and one data
directory (file store on /dev/shm, so that no object store is measured):

    uv run python bench/multi.py --rounds 3

1. Load, per phase: `cache` (the Redis state cache on, the default TTL) and `no-cache`
   (`--cache-ttl 0`: every HEAD reads PostgreSQL). The phases alternate over --rounds
   rounds (cache/no-cache, then no-cache/cache, ...), so that noise on a shared machine falls
   on both; each run starts fresh instances on a flushed Redis database. 200 uploads of
   4 MiB are created, then one asyncio task per upload (each with its own httpx.AsyncClient)
   loops: HEAD on a random instance, PATCH 64 KiB at the reported offset on another one,
   until the upload is done or the time budget (20 s) is spent. Every HEAD's and PATCH's
   latency is recorded (as the client sees it: with 200 tasks in one client process, that
   includes the client's own queueing); a request that meets a kept-alive connection the
   server just closed is counted by its error and retried, not timed.
   After the load, 200 sequential HEADs (one at a time, round robin) measure a HEAD on
   otherwise idle instances.
   Per run: PostgreSQL transactions (pg_stat_database of the bench database, read after the
   instances exit so that every backend has flushed its counters; a calibration run with
   start, 200 POSTs and stop only is subtracted), Redis keyspace hits/misses and command
   counts (INFO stats / commandstats: server-wide, so another Redis client adds to them),
   CPU seconds of each instance and of the client.
2. Handover, per phase (one run each): on instance A a raw socket starts a PATCH announcing
   3 MiB, sends 1 MiB and goes silent; 0.5 s later a HEAD goes to instance C and is timed
   until its answer (A's holder must let go first). C's Upload-Offset must be 1 MiB, and A's
   own answer is read too. Repeated --handover-reps times on fresh uploads.

Needs PostgreSQL (--pg, trust auth; a fresh database is created and dropped) and Redis
(--redis, a database number of its own: it is flushed before each run). The instances get
--server-args (default: pools that keep 3 instances under max_connections = 100). Run it
with the checkout to measure: `cd CHECKOUT && uv run python PATH/TO/bench/multi.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PHASES = {"cache": [], "no-cache": ["--cache-ttl", "0"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": percentile(values, 50) * 1000,
        "p90": percentile(values, 90) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": max(values) * 1000 if values else float("nan"),
    }


# --- PostgreSQL and Redis -------------------------------------------------------------


class Postgres:
    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url = admin_url
        self.name = name

    @property
    def url(self) -> str:
        return self.admin_url.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + self.name

    def create(self) -> None:
        with psycopg.connect(self.admin_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        subprocess.run(
            [sys.executable, "-m", "tusd_py", "migrate", "--database-url", self.url],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def drop(self) -> None:
        with psycopg.connect(self.admin_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def stats(self) -> dict[str, int]:
        """Counters of the bench database, read from another database (no self-counting)."""
        with psycopg.connect(self.admin_url + "/postgres", autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted,"
                " tup_updated FROM pg_stat_database WHERE datname = %s",
                (self.name,),
            ).fetchone()
        assert row is not None
        keys = ("commit", "rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")
        return dict(zip(keys, (int(v) for v in row), strict=True))


def redis_counters(client: redis.Redis) -> dict[str, float]:
    stats = client.info("stats")
    commands = client.info("commandstats")
    cpu = client.info("cpu")
    out: dict[str, float] = {
        "keyspace_hits": stats["keyspace_hits"],
        "keyspace_misses": stats["keyspace_misses"],
        "cpu": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
    }
    for name in ("exists", "hget", "hset", "pexpire", "set", "evalsha", "publish", "del"):
        out[name] = commands.get(f"cmdstat_{name}", {}).get("calls", 0)
    return out


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {key: after[key] - before[key] for key in after}


# --- instances ------------------------------------------------------------------------


class Fleet:
    def __init__(self, ports: list[int], args: argparse.Namespace, pg: Postgres, extra: list[str]):
        self.ports = ports
        self.args = args
        self.pg = pg
        self.extra = extra
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def endpoint(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def start(self) -> None:
        self.args.log_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            log = self.args.log_dir / f"instance-{port}.log"
            self.logs.append(log)
            with open(log, "ab") as handle:
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tusd_py",
                            "serve",
                            "--port",
                            str(port),
                            "--data-dir",
                            str(self.args.data_dir),
                            "--database-url",
                            self.pg.url,
                            "--redis-url",
                            self.args.redis,
                            "--log-level",
                            "warning",
                            *self.args.server_args.split(),
                            *self.extra,
                        ],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 60
        for index, process in enumerate(self.processes):
            while True:
                try:
                    httpx.get(self.endpoint(index) + "/health", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        port = self.ports[index]
                        raise RuntimeError(f"instance on {port} did not start") from None
                    time.sleep(0.1)

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []

    def warnings(self) -> int:
        count = 0
        for log in self.logs:
            with contextlib.suppress(FileNotFoundError):
                text = log.read_text(errors="replace")
                count += sum(
                    1
                    for line in text.splitlines()
                    if "WARNING" in line or "ERROR" in line or "Traceback" in line
                )
        return count


def fresh_state(args: argparse.Namespace, redis_client: redis.Redis) -> None:
    redis_client.flushdb()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    shutil.rmtree(args.log_dir, ignore_errors=True)


async def create_uploads(
    client: httpx.AsyncClient, fleet: Fleet, count: int, length: int
) -> list[str]:
    async def one(i: int) -> str:
        response = await client.post(
            fleet.endpoint(i % 3) + "/files/", headers={**TUS, "Upload-Length": str(length)}
        )
        response.raise_for_status()
        return urlsplit(response.headers["Location"]).path

    paths: list[str] = []
    for start in range(0, count, 50):  # a few at a time: creation is not what we measure
        paths += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))
    return paths


def new_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    return httpx.AsyncClient(limits=limits, timeout=60)


# --- 1. load --------------------------------------------------------------------------


async def load(
    fleet: Fleet, paths: list[str], length: int, chunk: int, budget: float
) -> dict[str, Any]:
    body = os.urandom(chunk)
    heads: list[float] = []
    patches: list[float] = []
    statuses: Counter[str] = Counter()
    done = 0
    acknowledged = 0
    loop = asyncio.get_running_loop()
    deadline = 0.0

    async def upload(path: str, client: httpx.AsyncClient) -> None:
        nonlocal done, acknowledged
        async with client:
            while loop.time() < deadline:
                head_on = random.randrange(3)
                started = time.perf_counter()
                try:
                    response = await client.head(fleet.endpoint(head_on) + path, headers=TUS)
                except httpx.TransportError as exc:  # a kept-alive connection closed under us
                    statuses[f"HEAD {type(exc).__name__}"] += 1
                    continue
                heads.append(time.perf_counter() - started)
                statuses[f"HEAD {response.status_code}"] += 1
                if response.status_code != 200:
                    await asyncio.sleep(0.05)
                    continue
                offset = int(response.headers["Upload-Offset"])
                if offset >= length:
                    done += 1
                    return
                if loop.time() >= deadline:
                    return
                patch_on = random.choice([i for i in range(3) if i != head_on])
                size = min(chunk, length - offset)
                started = time.perf_counter()
                try:
                    response = await client.patch(
                        fleet.endpoint(patch_on) + path,
                        headers={
                            **TUS,
                            "Upload-Offset": str(offset),
                            "Content-Type": "application/offset+octet-stream",
                        },
                        content=body[:size],
                    )
                except httpx.TransportError as exc:
                    statuses[f"PATCH {type(exc).__name__}"] += 1
                    continue
                patches.append(time.perf_counter() - started)
                statuses[f"PATCH {response.status_code}"] += 1
                if response.status_code == 204:
                    acknowledged += size

    # a client per upload, as a tus client has (and made before the clock starts): one
    # shared httpx pool of ~600 connections cost the client ~7 ms of CPU per request here,
    # which made this process, not the servers, the bottleneck
    clients = [httpx.AsyncClient(timeout=60) for _ in paths]
    deadline = loop.time() + budget
    wall = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*map(upload, paths, clients))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu

    async with new_client() as client:
        # HEADs one at a time on idle instances: the server's cost without client queueing
        idle: list[float] = []
        for i, path in enumerate(paths):
            started = time.perf_counter()
            response = await client.head(fleet.endpoint(i % 3) + path, headers=TUS)
            idle.append(time.perf_counter() - started)
            statuses[f"idle HEAD {response.status_code}"] += 1
    return {
        "heads": heads,
        "patches": patches,
        "idle_heads": idle,
        "statuses": dict(statuses),
        "finished_uploads": done,
        "acknowledged_mib": acknowledged / MiB,
        "wall": wall,
        "client_cpu": cpu,
    }


def run_load(
    phase: str, args: argparse.Namespace, pg: Postgres, redis_client: redis.Redis
) -> dict[str, Any]:
    fresh_state(args, redis_client)
    fleet = Fleet(args.ports, args, pg, PHASES[phase])
    pg_before = pg.stats()
    fleet.start()
    try:
        paths = asyncio.run(_create(fleet, args.uploads, args.length_mib * MiB))
        redis_before = redis_counters(redis_client)
        cpu_before = fleet.cpu()
        result = asyncio.run(
            load(fleet, paths, args.length_mib * MiB, args.chunk_kib * 1024, args.budget)
        )
        cpu_after = fleet.cpu()
        redis_after = redis_counters(redis_client)
        cached = sum(1 for _ in redis_client.scan_iter("tusd:upload:*", count=1000))
        load_average = os.getloadavg()
    finally:
        fleet.stop()
    time.sleep(0.5)  # the backends' exit flushes their counters
    result["pg"] = delta(pg.stats(), pg_before)
    result["redis"] = delta(redis_after, redis_before)
    result["cached_entries_after"] = cached
    result["server_cpu"] = [a - b for a, b in zip(cpu_after, cpu_before, strict=True)]
    result["loadavg"] = load_average
    result["log_warnings"] = fleet.warnings()
    return result


async def _create(fleet: Fleet, count: int, length: int) -> list[str]:
    async with new_client() as client:
        return await create_uploads(client, fleet, count, length)


def calibrate(args: argparse.Namespace, pg: Postgres, redis_client: redis.Redis) -> dict[str, int]:
    """PostgreSQL transactions of start, the uploads' creation and stop, without load."""
    fresh_state(args, redis_client)
    fleet = Fleet(args.ports, args, pg, [])
    before = pg.stats()
    fleet.start()
    try:
        asyncio.run(_create(fleet, args.uploads, args.length_mib * MiB))
    finally:
        fleet.stop()
    time.sleep(0.5)
    return delta(pg.stats(), before)


# --- 2. handover ----------------------------------------------------------------------


async def stall_and_resume(fleet: Fleet, path: str, sent: int, announced: int) -> dict[str, Any]:
    port_a = fleet.ports[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", port_a)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_a}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {announced}\r\n\r\n"
    ).encode()
    writer.write(head + os.urandom(sent))
    await writer.drain()
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.perf_counter()
        response = await client.head(fleet.endpoint(2) + path, headers=TUS)
        seconds = time.perf_counter() - started
    a_status, a_offset = None, None
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = answer.decode("latin-1").split("\r\n")
        a_status = int(lines[0].split()[1])
        for line in lines[1:]:
            if line.lower().startswith("upload-offset:"):
                a_offset = int(line.split(":", 1)[1])
    except (TimeoutError, asyncio.IncompleteReadError):
        pass
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return {
        "seconds": seconds,
        "c_status": response.status_code,
        "c_offset": int(response.headers.get("Upload-Offset", -1)),
        "a_status": a_status,
        "a_offset": a_offset,
    }


def run_handover(
    phase: str, args: argparse.Namespace, pg: Postgres, redis_client: redis.Redis
) -> dict[str, Any]:
    fresh_state(args, redis_client)
    fleet = Fleet(args.ports, args, pg, PHASES[phase])
    fleet.start()
    sent, announced = 1 * MiB, 3 * MiB
    try:

        async def all_reps() -> list[dict[str, Any]]:
            async with new_client() as client:
                paths = await create_uploads(client, fleet, args.handover_reps, announced)
            return [await stall_and_resume(fleet, path, sent, announced) for path in paths]

        reps = asyncio.run(all_reps())
    finally:
        fleet.stop()
    seconds = [r["seconds"] for r in reps]
    return {
        "reps": reps,
        "p50_ms": percentile(seconds, 50) * 1000,
        "max_ms": max(seconds) * 1000,
        "min_ms": min(seconds) * 1000,
        "offsets_ok": sum(1 for r in reps if r["c_status"] == 200 and r["c_offset"] == sent),
        "a_answers": dict(Counter(f"{r['a_status']} offset {r['a_offset']}" for r in reps)),
        "log_warnings": fleet.warnings(),
    }


# --- report ---------------------------------------------------------------------------


def describe(run: dict[str, Any], calibration: dict[str, int]) -> dict[str, Any]:
    heads = summary_ms(run["heads"])
    patches = summary_ms(run["patches"])
    idle = summary_ms(run["idle_heads"])
    n_heads = len(run["heads"]) + len(run["idle_heads"])
    n_patches = len(run["patches"])
    commits = run["pg"]["commit"] - calibration["commit"]
    rollbacks = run["pg"]["rollback"] - calibration["rollback"]
    # each PATCH reads the upload under its lock (a rollback: read-only transaction) and
    # commits one transition; what is left over is what the HEADs read
    head_reads = rollbacks - n_patches
    hits = run["redis"]["keyspace_hits"]
    misses = run["redis"]["keyspace_misses"]
    return {
        "head": heads,
        "patch": patches,
        "idle_head": idle,
        "head_rps": len(run["heads"]) / run["wall"],
        "mib_per_s": run["acknowledged_mib"] / run["wall"],
        "pg_commits": commits,
        "pg_rollbacks": rollbacks,
        "pg_reads_per_head": head_reads / n_heads if n_heads else float("nan"),
        # a PATCH is 4 (2 pool pre-pings, the read, the transition; see the cache phase,
        # where HEADs take none): what is left is the HEADs'
        "pg_xacts_per_head": (commits + rollbacks - 4 * n_patches) / n_heads
        if n_heads
        else float("nan"),
        "pg_xacts_per_request": (commits + rollbacks) / (n_heads + n_patches),
        "redis_hits": hits,
        "redis_misses": misses,
        "redis_hget_per_head": run["redis"]["hget"] / n_heads if n_heads else float("nan"),
        "redis_exists_per_head": run["redis"]["exists"] / n_heads if n_heads else float("nan"),
        "redis_cpu": run["redis"]["cpu"],
        "server_cpu": sum(run["server_cpu"]),
        "client_cpu": run["client_cpu"],
        "wall": run["wall"],
        "finished": run["finished_uploads"],
        "loadavg_1m": run["loadavg"][0],
    }


def median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def print_table(described: dict[str, list[dict[str, Any]]], handover: dict[str, Any]) -> None:
    rows = [
        ("HEAD count (load)", ("head", "count"), "{:.0f}"),
        ("HEAD p50 ms", ("head", "p50"), "{:.1f}"),
        ("HEAD p90 ms", ("head", "p90"), "{:.1f}"),
        ("HEAD p99 ms", ("head", "p99"), "{:.1f}"),
        ("HEAD max ms", ("head", "max"), "{:.1f}"),
        ("PATCH count", ("patch", "count"), "{:.0f}"),
        ("PATCH p50 ms", ("patch", "p50"), "{:.1f}"),
        ("PATCH p99 ms", ("patch", "p99"), "{:.1f}"),
        ("HEADs/s", ("head_rps",), "{:.0f}"),
        ("MiB/s acknowledged", ("mib_per_s",), "{:.1f}"),
        ("uploads finished", ("finished",), "{:.0f}"),
        ("idle HEAD p50 ms", ("idle_head", "p50"), "{:.2f}"),
        ("idle HEAD p99 ms", ("idle_head", "p99"), "{:.2f}"),
        ("PG commits", ("pg_commits",), "{:.0f}"),
        ("PG read-only xacts", ("pg_rollbacks",), "{:.0f}"),
        ("PG reads per HEAD", ("pg_reads_per_head",), "{:.2f}"),
        ("PG xacts per request", ("pg_xacts_per_request",), "{:.2f}"),
        ("PG xacts per HEAD", ("pg_xacts_per_head",), "{:.2f}"),
        ("Redis keyspace hits", ("redis_hits",), "{:.0f}"),
        ("Redis keyspace misses", ("redis_misses",), "{:.0f}"),
        ("Redis HGET per HEAD", ("redis_hget_per_head",), "{:.2f}"),
        ("Redis EXISTS per HEAD", ("redis_exists_per_head",), "{:.2f}"),
        ("server CPU s (3 inst.)", ("server_cpu",), "{:.1f}"),
        ("Redis CPU s", ("redis_cpu",), "{:.1f}"),
        ("client CPU s", ("client_cpu",), "{:.1f}"),
        ("load wall s", ("wall",), "{:.1f}"),
        ("load average 1 min", ("loadavg_1m",), "{:.1f}"),
    ]
    phases = list(described)
    print()
    print("medians across rounds (per-round values in brackets)")
    print(f"{'':26}" + "".join(f"{p:>30}" for p in phases))
    for label, keys, fmt in rows:
        cells = []
        for phase in phases:
            runs = described[phase]
            per_round = ", ".join(fmt.format(median_of([r], *keys)) for r in runs)
            cells.append(f"{fmt.format(median_of(runs, *keys))} [{per_round}]")
        print(f"{label:26}" + "".join(f"{c:>30}" for c in cells))
    print()
    for phase, result in handover.items():
        print(
            f"handover ({phase}): HEAD on C p50 {result['p50_ms']:.1f} ms, "
            f"max {result['max_ms']:.1f} ms, min {result['min_ms']:.1f} ms; "
            f"C's offset = 1 MiB in {result['offsets_ok']}/{len(result['reps'])}; "
            f"A answered {result['a_answers']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--length-mib", type=int, default=4)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--handover-reps", type=int, default=20, help="0 skips the handover")
    parser.add_argument("--phases", default="cache,no-cache")
    parser.add_argument("--ports", default="18291,18292,18293")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--data-dir", type=Path, default=Path("/dev/shm/tusd-multi"))
    parser.add_argument(
        "--server-args",
        default="--db-pool-size 20 --db-max-overflow 5",
        help="more serve options for every instance; the default keeps 3 instances within "
        "PostgreSQL's default max_connections = 100 (3 x 50 with the default pools is not)",
    )
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the instances' logs")
    args = parser.parse_args()
    args.ports = [int(p) for p in args.ports.split(",")]
    args.phases = args.phases.split(",")
    if not set(args.phases) <= set(PHASES):
        parser.error(f"--phases: choose among {', '.join(PHASES)}")
    assert len(args.ports) == 3
    args.log_dir = args.data_dir.with_name(args.data_dir.name + "-logs")
    if urlsplit(args.redis).path in ("", "/", "/0"):
        parser.error("--redis must name a database of its own (it is flushed), e.g. .../5")

    pg = Postgres(args.pg, f"tusd_multi_{os.getpid()}")
    redis_client = redis.Redis.from_url(args.redis)
    pg.create()
    started = time.monotonic()
    raw: dict[str, Any] = {"rounds": {}, "handover": {}}
    try:
        calibration = calibrate(args, pg, redis_client)
        raw["calibration"] = calibration
        print("calibration (start, create, stop):", calibration, flush=True)
        described: dict[str, list[dict[str, Any]]] = {phase: [] for phase in args.phases}
        for round_number in range(args.rounds):
            order = args.phases if round_number % 2 == 0 else list(reversed(args.phases))
            for phase in order:
                run = run_load(phase, args, pg, redis_client)
                info = describe(run, calibration)
                described[phase].append(info)
                raw["rounds"].setdefault(phase, []).append(
                    {k: v for k, v in run.items() if k not in ("heads", "patches", "idle_heads")}
                    | {"summary": info}
                )
                print(
                    f"round {round_number + 1} {phase:8}: HEAD n={info['head']['count']} "
                    f"p50 {info['head']['p50']:.1f} p99 {info['head']['p99']:.1f} "
                    f"max {info['head']['max']:.1f} ms; PATCH p50 {info['patch']['p50']:.1f} "
                    f"p99 {info['patch']['p99']:.1f} ms; PG reads/HEAD "
                    f"{info['pg_reads_per_head']:.2f}; statuses {run['statuses']}; "
                    f"warnings {run['log_warnings']}; load {run['loadavg'][0]:.1f} "
                    f"[{time.monotonic() - started:.0f} s]",
                    flush=True,
                )
        handover: dict[str, Any] = {}
        for phase in args.phases if args.handover_reps else []:
            handover[phase] = run_handover(phase, args, pg, redis_client)
            print(
                f"handover {phase}: p50 {handover[phase]['p50_ms']:.1f} ms max "
                f"{handover[phase]['max_ms']:.1f} ms [{time.monotonic() - started:.0f} s]",
                flush=True,
            )
        raw["handover"] = handover
        print_table(described, handover)
        print(f"\ntotal {time.monotonic() - started:.0f} s; load average {os.getloadavg()}")
        if args.json:
            args.json.write_text(json.dumps(raw, indent=1, default=str))
    finally:
        with contextlib.suppress(Exception):
            redis_client.flushdb()
        pg.drop()
        shutil.rmtree(args.data_dir, ignore_errors=True)
        if not args.keep_logs:
            shutil.rmtree(args.log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
