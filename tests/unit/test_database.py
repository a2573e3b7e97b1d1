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
