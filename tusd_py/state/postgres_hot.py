"""The hot statements on PostgreSQL, batched: a PATCH's read and guarded UPDATE, a POST's INSERT.

Each is one statement over a set of rows given as one JSON parameter (statement_batches.py
says why and what stays the same). The rows are the same named values the single-row
statements of sql.py take (insert_values, transition_values), so a batch of one is exactly
what a lone call did, and SQLite, which has no batches, runs the same values through
sql.py's statements.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from tusd_protocol.state import Upload

from .batching import Batcher
from .postgres_direct import DirectStatements
from .sql import UPLOAD_COLUMNS, upload_from_tuple, uploads
from .statement_batches import (
    Row,
    each_on_data_error,
    inserted_id,
    json_rows,
    moved_id,
    recordset,
)


def _quoted(name: str) -> str:
    return f'"{name}"'


_SELECTED = ", ".join(f"uploads.{_quoted(c.name)}" for c in UPLOAD_COLUMNS)

#: the uploads whose ids are in %(ids)s (a list), each row as UPLOAD_COLUMNS
GET_UPLOADS = f"SELECT {_SELECTED} FROM uploads WHERE uploads.id = ANY(%(ids)s::text[])"

_INSERTED = list(uploads.c)

#: one row per element of %(rows)s, each with the fields of sql.insert_values (v_<column>)
INSERT_UPLOADS = (
    f"INSERT INTO uploads ({', '.join(_quoted(c.name) for c in _INSERTED)}) "
    f"SELECT {', '.join('v.' + _quoted('v_' + c.name) for c in _INSERTED)} "
    f"FROM {recordset([('v_' + c.name, c) for c in _INSERTED])}"
)

_TRANSITION_FIELDS = [
    ("old_id", uploads.c.id),
    ("old_status", uploads.c.status),
    ("old_offset", uploads.c.offset),
    ("old_version", uploads.c.version),
    ("new_status", uploads.c.status),
    ("new_offset", uploads.c.offset),
    ("new_length", uploads.c.length),
    ("new_expires_at", uploads.c.expires_at),
    ("new_updated_at", uploads.c.updated_at),
    ("new_version", uploads.c.version),
]

#: every element of %(rows)s (the fields of sql.transition_values) moves its upload when,
#: and only when, the stored record is still the expected old one; the ids moved come back
TRANSITION_UPLOADS = (
    'UPDATE uploads SET status = v.new_status, "offset" = v.new_offset, '
    "length = v.new_length, expires_at = v.new_expires_at, "
    "updated_at = v.new_updated_at, version = v.new_version "
    f"FROM {recordset(_TRANSITION_FIELDS)} "
    "WHERE uploads.id = v.old_id AND uploads.status = v.old_status "
    'AND uploads."offset" = v.old_offset AND uploads.version = v.old_version '
    "RETURNING uploads.id"
)


class HotStatements:
    """get, insert and transition for the Repository, each call batched with the
    concurrent calls of its kind."""

    def __init__(self, direct: DirectStatements, max_in_flight: int = 2) -> None:
        self.direct = direct
        self.gets: Batcher[str, Upload | None] = Batcher(
            self._get_batch, key=_same, max_in_flight=max_in_flight
        )
        self.inserts: Batcher[Row, None] = Batcher(
            self._insert_batch, key=inserted_id, max_in_flight=max_in_flight
        )
        self.transitions: Batcher[Row, bool] = Batcher(
            self._transition_batch, key=moved_id, max_in_flight=max_in_flight
        )

    async def get(self, upload_id: str) -> Upload | None:
        return await self.gets.submit(upload_id)

    async def insert(self, values: Row) -> None:
        await self.inserts.submit(values)

    async def transition(self, values: Row) -> bool:
        """Whether the guarded UPDATE moved the upload (False: the record is no longer the
        expected old one)."""
        return await self.transitions.submit(values)

    async def _get_batch(self, upload_ids: list[str]) -> list[Upload | BaseException | None]:
        rows, _ = await self.direct.run(GET_UPLOADS, {"ids": upload_ids}, fetch=True)
        found = {row[0]: upload_from_tuple(row) for row in rows}
        return [found.get(upload_id) for upload_id in upload_ids]

    async def _insert_batch(self, rows: list[Row]) -> list[BaseException | None]:
        async def insert(some: Sequence[Row]) -> None:
            await self.direct.run(INSERT_UPLOADS, {"rows": json_rows(some)}, fetch=False)

        return await each_on_data_error(rows, insert, lambda _: None)

    async def _transition_batch(self, rows: list[Row]) -> list[bool | BaseException]:
        moved: set[str] = set()

        async def transition(some: Sequence[Row]) -> None:
            found, _ = await self.direct.run(
                TRANSITION_UPLOADS, {"rows": json_rows(some)}, fetch=True
            )
            moved.update(row[0] for row in found)

        return await each_on_data_error(rows, transition, lambda row: row["old_id"] in moved)


def _same(upload_id: str) -> Hashable:
    return upload_id
