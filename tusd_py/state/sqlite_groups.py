"""The hot writes on SQLite, committed in groups: a POST's INSERT, a PATCH's guarded UPDATE.

SQLite has one writer (database.py runs every call on one thread), and each write was a
call of its own: a thread hop there and back, a transaction, and a commit, which with
`synchronous=FULL` is an fsync of the WAL. At 1,000 concurrent uploads the calls queue for
that thread anyway. A Batcher (batching.py) takes the writes that arrive while the previous
group is being written and runs them as one call: one hop, one transaction, one commit
for the group (group commit). The statements are sql.py's, with the same named values.

What does not change:
- Durability: a caller is answered only after the commit of the transaction that carries
  its write.
- Guards: each guarded UPDATE is its own statement, with its own expected status, offset
  and version; a guard that fails answers its own caller only (False: a lost race).
- Errors: a write that fails on its data (a constraint) rolls the group back, and the
  group is written again one transaction per row, so that only that write fails (the same
  rule as PostgreSQL's batches: statement_batches.each_on_data_error); any other error (the
  database locked past its timeout, a full disk) is every write's of the group.
- Two writes for the same upload never share a group.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from .batching import Batcher
from .database import Database
from .sql import INSERT_UPLOAD, TRANSITION_UPLOAD
from .statement_batches import Row, each_on_data_error, inserted_id, moved_id


class SqliteGroups:
    """insert and transition for the Repository on SQLite, each committed with the
    concurrent writes of its kind."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.inserts: Batcher[Row, None] = Batcher(
            self._insert_group, key=inserted_id, max_in_flight=1
        )
        self.transitions: Batcher[Row, bool] = Batcher(
            self._transition_group, key=moved_id, max_in_flight=1
        )

    async def insert(self, values: Row) -> None:
        await self.inserts.submit(values)

    async def transition(self, values: Row) -> bool:
        """Whether the guarded UPDATE moved the upload (False: the record is no longer the
        expected old one)."""
        return await self.transitions.submit(values)

    async def _insert_group(self, rows: list[Row]) -> list[BaseException | None]:
        async def insert(some: Sequence[Row]) -> None:
            await self.database.run(_write_all, INSERT_UPLOAD, some)

        return await each_on_data_error(rows, insert, lambda _: None)

    async def _transition_group(self, rows: list[Row]) -> list[bool | BaseException]:
        moved: set[str] = set()

        async def transition(some: Sequence[Row]) -> None:
            counts = await self.database.run(_write_all, TRANSITION_UPLOAD, some)
            moved.update(moved_id(row) for row, count in zip(some, counts, strict=True) if count)

        return await each_on_data_error(rows, transition, lambda row: moved_id(row) in moved)


def _write_all(conn: sa.Connection, statement: sa.Executable, rows: Sequence[Row]) -> list[int]:
    """`statement` once per row, all in one transaction (one commit): the rows each changed."""
    with conn.begin():
        return [conn.execute(statement, row).rowcount for row in rows]
