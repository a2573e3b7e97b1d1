"""CPU per state-database call: the repository's hot calls, one at a time, on PostgreSQL.

    uv run python bench/statements.py [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Creates a throw-away database (dropped at the end), migrates it, and times `insert`, `get`
and `transition` through tusd-py's Repository: the CPU this process spends per call
(time.process_time), which is what a busy server pays per request, and the wall time.
`--engine` runs them through SQLAlchemy's asyncio engine instead of the direct psycopg
path, for comparison. Nothing is judged; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid

import psycopg

from tusd_protocol.state import Upload, UploadStatus
from tusd_py.state.database import Database
from tusd_py.state.migrations import upgrade
from tusd_py.state.sql import Repository


def fresh_upload() -> Upload:
    return Upload(secrets.token_urlsafe(16), UploadStatus.RECEIVING, 0, 10**12)


async def measure(url: str, calls: int, engine: bool) -> None:
    database = Database(url, pool_size=20, max_overflow=0, queue_timeout=30)
    if engine:
        database.direct = None  # every call through SQLAlchemy's engine
    repository = Repository(database)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await repository.insert(fresh_upload(), {"name": b"x.bin"})
        report("insert", calls, started, cpu)
        upload = fresh_upload()
        await repository.insert(upload, {})
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await repository.get(upload.id)
        report("get", calls, started, cpu)
        current = upload
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            moved = await repository.transition(
                current, status=UploadStatus.RECEIVING, offset=current.offset + 1
            )
            assert moved is not None
            current = moved
        report("transition", calls, started, cpu)
    finally:
        await database.close()


def report(name: str, calls: int, started: float, cpu: float) -> None:
    cpu_us = (time.process_time() - cpu) / calls * 1e6
    wall_us = (time.perf_counter() - started) / calls * 1e6
    print(f"  {name:<11} {cpu_us:7.0f} us CPU per call  {wall_us:7.0f} us wall per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--engine", action="store_true", help="through SQLAlchemy's engine")
    args = parser.parse_args()
    name = f"tusd_statements_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    try:
        upgrade(url)
        print(f"{'SQLAlchemy engine' if args.engine else 'direct (psycopg)'}, {args.calls} calls")
        asyncio.run(measure(url, args.calls, args.engine))
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
