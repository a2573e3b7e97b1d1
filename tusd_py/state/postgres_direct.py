"""The hot statements' pool on PostgreSQL: psycopg directly, without SQLAlchemy's engine.

Every PATCH reads its upload and moves it with one guarded UPDATE; every POST inserts one
row. Through SQLAlchemy's asyncio engine each of those cost about 550 us of CPU (pool
checkout through a greenlet, cache keys, the execution context, the adapted cursor, and a
transaction of three round trips); psycopg alone, on a connection in autocommit mode, about
130 us. Under load they are also batched with the concurrent calls of their kind
(postgres_hot.py), so a batch pays that once.

The connections come from psycopg_pool (autocommit, statement_timeout, FIFO waiters with a
deadline). Errors are raised as SQLAlchemy's exception classes, so the HTTP layer answers
them as it does every other database error: a pool wait past its deadline is
sqlalchemy.exc.TimeoutError (503), a lost or refused connection OperationalError (503),
any other database error DBAPIError (500).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

# psycopg and psycopg_pool are imported where a pool is made: a server on SQLite does not
# carry them (about 17 MiB per process)


def connect_options(url: str, statement_timeout: float) -> dict[str, Any]:
    """libpq options for every PostgreSQL connection of the server, both pools: statements
    end after `statement_timeout`, and a database host that drops packets costs seconds
    (connect_timeout 5), not the kernel's minutes, unless the URL says otherwise."""
    options: dict[str, Any] = {"options": f"-c statement_timeout={int(statement_timeout * 1000)}"}
    if "connect_timeout" not in url:
        options["connect_timeout"] = 5
    return options


def psycopg_conninfo(url: str) -> str:
    """An SQLAlchemy URL (postgresql+psycopg://...) as a libpq connection string."""
    parsed = sa.engine.make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class DirectStatements:
    """A psycopg pool and the statements it runs, each one round trip in autocommit."""

    def __init__(
        self,
        url: str,
        size: int,
        timeout: float,
        statement_timeout: float,
    ) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.timeout = timeout
        # psycopg prepares a statement on a connection after a few executions (default)
        kwargs = {"autocommit": True, **connect_options(url, statement_timeout)}
        conninfo = psycopg_conninfo(url)
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            kwargs=kwargs,
            timeout=timeout,
            open=False,
            name="tusd-py",
        )
        self._opened = False

    async def open(self) -> None:
        if not self._opened:
            # wait=False: a database that is down now fails requests (503), not the start
            await self.pool.open(wait=False)
            self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self.pool.close(timeout=5)
            self._opened = False

    def load(self) -> tuple[int, int, int]:
        """(connections it may keep, connections in use, requests waiting)"""
        stats = self.pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return self.pool.max_size, max(in_use, 0), stats.get("requests_waiting", 0)

    async def run(
        self, sql: str, params: Mapping[str, Any], fetch: bool
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement (PostgreSQL text, named parameters): its rows when `fetch`,
        and its row count."""
        import psycopg
        from psycopg_pool import PoolTimeout

        await self.open()
        try:
            async with self.pool.connection() as connection:
                cursor = await connection.execute(sql, params)
                rows = await cursor.fetchall() if fetch else []
                return rows, cursor.rowcount
        except PoolTimeout as exc:
            raise sa_exc.TimeoutError(
                f"Waited {self.timeout:g} s for a database connection; retry shortly."
            ) from exc
        except psycopg.OperationalError as exc:
            raise sa_exc.OperationalError(sql, params, exc) from exc
        except psycopg.Error as exc:
            raise sa_exc.DBAPIError(sql, params, exc) from exc
