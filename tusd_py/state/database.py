"""The state database: a synchronous SQLAlchemy engine driven from a few worker threads.

Why not SQLAlchemy's asyncio engine: it pays a thread hop (aiosqlite) or a greenlet switch
per statement, plus the async adaptation of every call; measured on SQLite, an insert, a
guarded update and a read cost 530-660 us of CPU each that way, against about 120 us when
a whole repository call runs as plain synchronous code in one thread hop. So each
repository call is one function that runs on a worker thread with its own connection.

- SQLite gets ONE worker thread and one connection: the only writer, so writers never
  wait on each other's file lock (and its busy-sleeps); WAL keeps reads cheap.
- PostgreSQL gets `pool_size + max_overflow` workers; each call takes a connection from a
  pool of `pool_size` kept connections, with `max_overflow` more opened under load (and
  closed when returned), so a call never waits inside the pool.

A call waits in a FIFO queue for a free worker: that is how requests queue for
connections under load instead of failing. The wait has a deadline (`queue_timeout`);
past it the call raises sqlalchemy.exc.TimeoutError (a 503 with Retry-After), so a
request never waits without an answer. A request holds a connection only while its
statements run, never across a body, a lock wait or a network call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import TimeoutError as QueueTimeout

T = TypeVar("T")

#: seconds one statement may run (PostgreSQL's statement_timeout): a call stuck on a lock
#: or a database that went quiet ends with an error, never holds its worker for good
STATEMENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class DatabaseLoad:
    """How busy the database workers are (for /metrics)."""

    #: connections kept open
    size: int
    #: connections opened beyond them, now
    overflow: int
    #: calls running now (each holds a connection)
    busy: int
    #: calls waiting for a free worker
    waiting: int


def sync_url(url: str) -> str:
    """Our async URLs (sqlite+aiosqlite, postgresql+psycopg) as synchronous drivers."""
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def create_engine(url: str, pool_size: int = 1, max_overflow: int = 0) -> sa.Engine:
    url = sync_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            poolclass=sa.pool.QueuePool,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": 30, "check_same_thread": False},
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # a database host that drops packets must cost seconds, not the kernel's minutes
    connect_args: dict[str, Any] = {} if "connect_timeout" in url else {"connect_timeout": 5}
    connect_args["options"] = f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # there are never more workers than connections: a checkout does not wait
        pool_timeout=5,
        # a broken connection fails one call and is replaced: no round trip per checkout
        pool_pre_ping=False,
        connect_args=connect_args,
    )


class Database:
    def __init__(
        self, url: str, pool_size: int = 1, max_overflow: int = 0, queue_timeout: float = 30.0
    ) -> None:
        self.url = url
        self.is_sqlite = sync_url(url).startswith("sqlite")
        if self.is_sqlite:
            pool_size, max_overflow = 1, 0  # one writer
        self.threads = pool_size + max_overflow
        self.queue_timeout = queue_timeout
        self.engine = create_engine(url, pool_size, max_overflow)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="tusd-db"
        )
        self._busy = 0
        self._waiting = 0
        self._counts = threading.Lock()

    def load(self) -> DatabaseLoad:
        pool: Any = self.engine.pool
        return DatabaseLoad(pool.size(), max(pool.overflow(), 0), self._busy, self._waiting)

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(connection, *args, **kwargs)` on a worker thread: its result, or its
        exception. A call that has not started within queue_timeout is dropped (and raises
        QueueTimeout); one that has started runs to its end (a statement deadline bounds
        it, see create_engine)."""
        enqueued = time.monotonic()
        with self._counts:
            self._waiting += 1
        future = self._executor.submit(self._call, enqueued, work, args, kwargs)
        waiting = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waiting}, timeout=self.queue_timeout)
        if not done:
            if future.cancel():  # still queued: it never runs
                with self._counts:
                    self._waiting -= 1
                waiting.cancel()
                raise QueueTimeout(
                    f"Waited {self.queue_timeout:g} s for a database connection; retry shortly."
                )
            done, _ = await asyncio.wait({waiting}, timeout=STATEMENT_TIMEOUT + 5)
            if not done:  # the database stopped answering and no socket noticed
                raise QueueTimeout("The state database did not answer in time.")
        return waiting.result()

    def _call(
        self,
        enqueued: float,
        work: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        with self._counts:
            self._waiting -= 1
            self._busy += 1
        try:
            waited = time.monotonic() - enqueued
            if waited > self.queue_timeout:
                raise QueueTimeout(
                    f"Waited {waited:.1f} s for a database connection; retry shortly."
                )
            with self.engine.connect() as connection:
                return work(connection, *args, **kwargs)
        finally:
            with self._counts:
                self._busy -= 1

    async def ping(self) -> None:
        await self.run(_ping)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.engine.dispose()


def _ping(connection: sa.Connection) -> None:
    connection.execute(sa.text("SELECT 1"))
