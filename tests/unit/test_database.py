"""The state database runner: FIFO turns with a deadline (tusd_py.state.database)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import TimeoutError as QueueTimeout

from tests.unit._async import run
from tusd_py.state.database import Database


def test_a_call_that_never_got_its_turn_gives_up_at_the_deadline_and_never_runs(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}", queue_timeout=0.3)
    release = threading.Event()
    ran: list[str] = []

    def hold(connection: Any) -> None:
        release.wait(10)

    def late(connection: Any) -> None:
        ran.append("late")

    async def main() -> float:
        holder = asyncio.ensure_future(database.run(hold))  # the only SQLite worker
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(QueueTimeout):
            await database.run(late)
        waited = time.monotonic() - started
        release.set()
        await holder
        await database.close()
        return waited

    waited = run(main)
    assert 0.25 < waited < 2
    assert ran == []  # dropped from the line, not run later
    assert database.load().waiting == 0 and database.load().busy == 0


def test_calls_run_one_at_a_time_in_arrival_order_on_sqlite(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    order: list[int] = []
    inside = 0
    most_inside = 0
    lock = threading.Lock()

    def work(connection: Any, number: int) -> int:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        time.sleep(0.005)
        order.append(number)
        with lock:
            inside -= 1
        return number * 2

    async def main() -> list[int]:
        results = await asyncio.gather(*(database.run(work, n) for n in range(20)))
        await database.close()
        return list(results)

    assert run(main) == [n * 2 for n in range(20)]
    assert order == list(range(20))
    assert most_inside == 1  # one writer


def test_postgres_single_statements_run_in_autocommit_and_the_rest_in_a_transaction(
    postgres_databases: Any,
) -> None:
    """run_single: the statement is its own transaction (one round trip, no BEGIN/COMMIT);
    run: a transaction, so work of several statements is all or nothing, on the same pooled
    connection right after a run_single."""
    import sqlalchemy as sa

    url = postgres_databases.create()

    def autocommit(conn: sa.Connection) -> bool:
        return bool(conn.connection.dbapi_connection.autocommit)  # type: ignore[union-attr]

    def create_table(conn: sa.Connection) -> None:
        with conn.begin():
            conn.execute(sa.text("CREATE TABLE t (n integer)"))

    def insert_then_fail(conn: sa.Connection) -> None:
        with conn.begin():
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            raise RuntimeError("the second statement failed")

    def count(conn: sa.Connection) -> int:
        return int(conn.scalar(sa.text("SELECT count(*) FROM t")) or 0)

    async def main() -> None:
        database = Database(url, pool_size=1, max_overflow=0, queue_timeout=5)
        try:
            assert await database.run_single(autocommit) is True
            assert await database.run(autocommit) is False
            assert await database.run_single(autocommit) is True  # reset on return
            await database.run(create_table)
            with pytest.raises(RuntimeError):
                await database.run(insert_then_fail)
            assert await database.run_single(count) == 0  # rolled back as a whole
        finally:
            await database.close()

    run(main)


def test_postgres_direct_statements_keep_the_deadline_and_the_error_classes(
    postgres_databases: Any,
) -> None:
    """The direct path answers like the engine: a pool wait past its deadline is
    sqlalchemy's TimeoutError (503), an unreachable server OperationalError (503)."""
    import socket

    from sqlalchemy.exc import OperationalError

    from tusd_py.state.postgres_direct import DirectStatements

    url = postgres_databases.create()

    async def select(direct: DirectStatements, n: int) -> list[tuple[Any, ...]]:
        rows, _ = await direct.run("SELECT %(n)s::int", {"n": n}, fetch=True)
        return rows

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    async def main() -> None:
        direct = DirectStatements(url, size=1, timeout=0.3, statement_timeout=5)
        try:
            assert await select(direct, 7) == [(7,)]
            async with direct.pool.connection():  # the only connection is taken
                started = time.monotonic()
                with pytest.raises(QueueTimeout):
                    await select(direct, 8)
                assert 0.25 < time.monotonic() - started < 3
            assert await select(direct, 9) == [(9,)]
        finally:
            await direct.close()
        down = DirectStatements(
            f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x",
            size=1,
            timeout=2,
            statement_timeout=5,
        )
        try:
            with pytest.raises((OperationalError, QueueTimeout)):
                await select(down, 1)
        finally:
            await down.close()

    run(main)
