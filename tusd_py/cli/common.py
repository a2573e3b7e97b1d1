"""What the operator commands share: reaching the state database, printing a moment."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from ..config import Settings

if TYPE_CHECKING:
    from ..state.sql import Repository

T = TypeVar("T")


def with_repository(settings: Settings, work: Callable[[Repository], Awaitable[T]]) -> T | None:
    """`work` on the state database's repository, then the database closed; None (after a
    sentence on stderr) when the schema is not migrated."""
    from ..state.database import Database
    from ..state.sql import Repository
    from ..wiring import SchemaNotMigrated, prepare_database

    async def main() -> T:
        await prepare_database(settings)
        database = Database(settings.resolved_database_url)
        try:
            return await work(Repository(database))
        finally:
            await database.close()

    try:
        return asyncio.run(main())
    except SchemaNotMigrated as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return None


def when(moment: object) -> str:
    """A stored moment as `YYYY-MM-DD HH:MM:SS` (UTC), or `-` when there is none."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if isinstance(moment, datetime) else "-"
