"""The state database: where each repository call runs, and how long it may wait.

Every repository call (state/sql.py) is one plain synchronous function of a SQLAlchemy
Connection. This module runs those functions:

- SQLite: on ONE worker thread with one connection. It is the only writer, so writers
  never wait on each other's file lock (and its busy-sleeps), and a whole call is one
  thread hop. SQLAlchemy's asyncio engine over aiosqlite pays a thread hop per statement
  plus the async adaptation: measured, an insert, a guarded update and a read cost
  530-660 us of CPU each that way, about 120 us this way.
- PostgreSQL: through SQLAlchemy's asyncio engine (psycopg's async driver), the function
  run with `run_sync` on a pooled connection. Worker threads were tried here too and lost:
  at 1,000 concurrent uploads, dozens of threads doing CPU-bound statement work starved
  the event loop of the GIL.

On PostgreSQL the hot statements (a PATCH's read and guarded UPDATE, a POST's INSERT) do
not come here at all: `direct` runs them through psycopg (postgres_direct.py), on a pool of
its own of `pool_size` connections; the engine here keeps `engine_pool_size(pool_size)`
(a quarter, at least 2) plus `max_overflow` for everything else.

A call whose work is one statement (a read, a single guarded UPDATE, an INSERT of one row)
runs with `run_single`: on PostgreSQL its connection is in autocommit mode, so the statement
is its own transaction and costs one round trip instead of three (BEGIN, the statement,
COMMIT or ROLLBACK). A statement alone is atomic; work of several statements needs `run`.

Every call waits at most `queue_timeout` for its turn (a free worker or a pooled
connection), FIFO, and then raises sqlalchemy.exc.TimeoutError, which the HTTP layer
answers with 503 and Retry-After: requests queue for connections under load instead of
failing, and never wait without an answer. PostgreSQL statements end after
STATEMENT_TIMEOUT (a row lock held elsewhere, a database that went quiet). A request holds
a connection only while its statements run, never across a body, a lock wait or a
network call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import TimeoutError as QueueTimeout

from ..config import normalize_database_url
from .postgres_direct import DirectStatements, connect_options

if TYPE_CHECKING:
    # imported where a PostgreSQL engine is made (it brings greenlet): not on SQLite
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

#: seconds one PostgreSQL statement may run (statement_timeout)
STATEMENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class DatabaseLoad:
    """How busy the database is (for /metrics)."""

    #: connections kept open
    size: int
    #: connections opened beyond them, now
    overflow: int
    #: calls running now (each holds a connection)
    busy: int
    #: calls waiting for their turn
    waiting: int


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(
        normalize_database_url(url),
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


def engine_pool_size(pool_size: int) -> int:
    """PostgreSQL: connections the SQLAlchemy engine keeps beside the direct pool."""
    return max(2, pool_size // 4)


def _postgres_engine(url: str, pool_size: int, max_overflow: int, timeout: float) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    connect_args = connect_options(url, STATEMENT_TIMEOUT)
    return create_async_engine(
        normalize_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=timeout,
        # a broken connection fails one call and is replaced: no round trip per checkout
        pool_pre_ping=False,
        connect_args=connect_args,
    )


class Database:
    def __init__(
        self, url: str, pool_size: int = 1, max_overflow: int = 0, queue_timeout: float = 30.0
    ) -> None:
        self.url = url
        self.is_sqlite = normalize_database_url(url).startswith("sqlite")
        self.queue_timeout = queue_timeout
        self._busy = 0
        self._waiting = 0
        self._counts = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._engine: sa.Engine | None = None
        self._async_engine: AsyncEngine | None = None
        #: the same pool, its connections in autocommit mode while checked out
        self._autocommit_engine: AsyncEngine | None = None
        #: PostgreSQL: the hot statements, straight through psycopg
        self.direct: DirectStatements | None = None
        if self.is_sqlite:
            self._engine = _sqlite_engine(url)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tusd-sqlite"
            )
        else:
            self._async_engine = _postgres_engine(
                url, engine_pool_size(pool_size), max_overflow, queue_timeout
            )
            self._autocommit_engine = self._async_engine.execution_options(
                isolation_level="AUTOCOMMIT"
            )
            self.direct = DirectStatements(
                normalize_database_url(url), pool_size, queue_timeout, STATEMENT_TIMEOUT
            )

    @property
    def pool(self) -> Any:
        if self._engine is not None:
            return self._engine.pool
        assert self._async_engine is not None
        return self._async_engine.sync_engine.pool

    def load(self) -> DatabaseLoad:
        pool = self.pool
        size, overflow = pool.size(), max(pool.overflow(), 0)
        busy, waiting = self._busy, self._waiting
        if self.direct is not None:
            direct_size, direct_busy, direct_waiting = self.direct.load()
            size, busy, waiting = size + direct_size, busy + direct_busy, waiting + direct_waiting
        return DatabaseLoad(size, overflow, busy, waiting)

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(connection, *args, **kwargs)` with a connection of its own: its result, or
        its exception (QueueTimeout when its turn did not come within queue_timeout)."""
        if self._async_engine is not None:
            return await self._run_async(self._async_engine, work, args, kwargs)
        return await self._run_in_thread(work, args, kwargs)

    async def run_single(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like `run`, for work that runs ONE statement (or only reads, where each read may
        see its own snapshot): on PostgreSQL without a transaction around it."""
        if self._autocommit_engine is not None:
            return await self._run_async(self._autocommit_engine, work, args, kwargs)
        return await self._run_in_thread(work, args, kwargs)

    async def _run_async(
        self,
        engine: AsyncEngine,
        work: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        with self._counts:
            self._waiting += 1
        waiting = True
        try:
            async with engine.connect() as connection:  # waits at most pool_timeout
                with self._counts:
                    self._waiting -= 1
                    self._busy += 1
                waiting = False
                try:
                    return await connection.run_sync(work, *args, **kwargs)
                finally:
                    with self._counts:
                        self._busy -= 1
        finally:
            if waiting:
                with self._counts:
                    self._waiting -= 1

    async def _run_in_thread(
        self, work: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        assert self._executor is not None
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
                raise QueueTimeout(
                    f"Waited {self.queue_timeout:g} s for the database; retry shortly."
                )
            await asyncio.wait({waiting})  # running: SQLite's busy timeout bounds it
        return waiting.result()

    def _call(
        self,
        enqueued: float,
        work: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        assert self._engine is not None
        with self._counts:
            self._waiting -= 1
            self._busy += 1
        try:
            waited = time.monotonic() - enqueued
            if waited > self.queue_timeout:
                raise QueueTimeout(f"Waited {waited:.1f} s for the database; retry shortly.")
            with self._engine.connect() as connection:
                return work(connection, *args, **kwargs)
        finally:
            with self._counts:
                self._busy -= 1

    async def ping(self) -> None:
        await self.run(_ping)

    async def close(self) -> None:
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            if self.direct is not None:
                await self.direct.close()
        with contextlib.suppress(Exception):
            if self._engine is not None:
                self._engine.dispose()
            if self._async_engine is not None:
                await self._async_engine.dispose()


def _ping(connection: sa.Connection) -> None:
    connection.execute(sa.text("SELECT 1"))
