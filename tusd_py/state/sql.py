"""The state database: tables and the repository that reads and moves upload records.

Every transition is one statement guarded by the expected old status and offset, so a
request that lost a race changes nothing (its UPDATE matches no row) instead of corrupting
the record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tusd_protocol.state import ConcatKind, Upload, UploadStatus, check_transition
from tusd_storage import EMPTY_LAYOUT, Fragment, Layout, Part

from .database import Database

if TYPE_CHECKING:
    from .postgres_hot import HotStatements
    from .sqlite_groups import SqliteGroups

metadata_obj = sa.MetaData()

uploads = sa.Table(
    "uploads",
    metadata_obj,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=True),
    sa.Column("metadata_header", sa.Text, nullable=True),
    sa.Column("metadata_json", sa.Text, nullable=True),
    sa.Column("concat_kind", sa.String(8), nullable=False),
    sa.Column("concat_header", sa.Text, nullable=True),
    sa.Column("storage_key", sa.String(1024), nullable=True),
    sa.Column("backend_handle", sa.String(1024), nullable=True),
    sa.Column("part_size", sa.BigInteger, nullable=True),
    sa.Column("owner", sa.String(256), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_uploads_status_expires_at", "status", "expires_at"),
    sa.Index("ix_uploads_created_at", "created_at"),
    sa.Index("ix_uploads_backend_handle", "backend_handle"),
)

upload_concat = sa.Table(
    "upload_concat",
    metadata_obj,
    sa.Column(
        "final_id",
        sa.String(64),
        sa.ForeignKey("uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("partial_id", sa.String(64), sa.ForeignKey("uploads.id"), nullable=False),
    sa.Index("ix_upload_concat_partial_id", "partial_id"),
)

#: the parts of a multipart object, recorded as they are uploaded (S3: completion reads this,
#: never ListParts)
upload_parts = sa.Table(
    "upload_parts",
    metadata_obj,
    sa.Column(
        "upload_id",
        sa.String(64),
        sa.ForeignKey("uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(256), nullable=False),
    sa.Column("checksum", sa.String(128), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),
)

#: bytes that did not fill a part yet, kept as small objects until the next part takes them
upload_fragments = sa.Table(
    "upload_fragments",
    metadata_obj,
    sa.Column(
        "upload_id",
        sa.String(64),
        sa.ForeignKey("uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("checksum", sa.String(128), nullable=False),
)


#: events (post-create, post-finish, post-terminate), written in the transaction that makes
#: the change and delivered at least once by the relay (events/relay.py). Pending events have
#: a next_attempt_at; delivered and failed ones do not.
events_outbox = sa.Table(
    "events_outbox",
    metadata_obj,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("upload_id", sa.String(64), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_events_outbox_next_attempt_at", "next_attempt_at"),
    sa.Index("ix_events_outbox_upload_id", "upload_id"),
)


@dataclass(frozen=True)
class UploadQuery:
    """Which uploads `tusd-py uploads list` shows; None matches anything."""

    ids: tuple[str, ...] = ()
    status: str | None = None
    owner: str | None = None
    created_before: datetime | None = None
    #: a metadata key the upload has, and (when not None) the text value it has
    metadata_key: str | None = None
    metadata_value: str | None = None
    limit: int = 100


#: what each status of `tusd-py events list` means in the outbox
_EVENT_STATUS: dict[str, sa.ColumnElement[bool]] = {
    "pending": events_outbox.c.next_attempt_at.is_not(None),
    "failed": events_outbox.c.failed_at.is_not(None),
    "delivered": events_outbox.c.delivered_at.is_not(None),
}
EVENT_STATUSES = (*_EVENT_STATUS, "all")


@dataclass(frozen=True)
class OutboxEvent:
    """An event claimed for delivery."""

    id: str
    type: str
    upload_id: str | None
    created_at: datetime
    #: the event as JSON text
    payload: str
    #: deliveries tried so far, this one included
    attempts: int


def outbox_row(event: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "id": event["id"],
        "type": event["type"],
        "upload_id": event["upload"]["id"],
        "payload": json.dumps(event, separators=(",", ":")),
        "created_at": now,
        "attempts": 0,
        "next_attempt_at": now,
    }


#: statuses whose bytes we keep
KEPT_STATUSES = (UploadStatus.RECEIVING, UploadStatus.CONCATENATING, UploadStatus.FINISHED)


class _LostRace(Exception):
    """The guarded UPDATE matched no row: roll the whole transaction back."""


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime in this program is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# --- the hot statements, built once -----------------------------------------------------
# Every POST runs INSERT_UPLOAD, every PATCH GET_UPLOAD and TRANSITION_UPLOAD. They are
# built here once with named parameters, and SQLite runs them through SQLAlchemy.
# PostgreSQL runs their batched forms (postgres_hot.py: the same named values, a set of
# rows per statement) through psycopg.

#: the columns an Upload is made of, in this order
UPLOAD_COLUMNS = (
    uploads.c.id,
    uploads.c.status,
    uploads.c.offset,
    uploads.c.length,
    uploads.c.metadata_header,
    uploads.c.concat_kind,
    uploads.c.concat_header,
    uploads.c.expires_at,
    uploads.c.version,
    uploads.c.owner,
)

GET_UPLOAD = sa.select(*UPLOAD_COLUMNS).where(uploads.c.id == sa.bindparam("id"))

#: parameters: `v_<column>` for every column
INSERT_UPLOAD = uploads.insert().values(
    {column: sa.bindparam(f"v_{column.key}") for column in uploads.c}
)

#: parameters: the expected old record (old_id, old_status, old_offset, old_version) and
#: the new values (new_status, new_offset, new_length, new_expires_at, updated_at, new_version)
TRANSITION_UPLOAD = (
    uploads.update()
    .where(
        uploads.c.id == sa.bindparam("old_id"),
        uploads.c.status == sa.bindparam("old_status"),
        uploads.c.offset == sa.bindparam("old_offset"),
        uploads.c.version == sa.bindparam("old_version"),
    )
    .values(
        status=sa.bindparam("new_status"),
        offset=sa.bindparam("new_offset"),
        length=sa.bindparam("new_length"),
        expires_at=sa.bindparam("new_expires_at"),
        updated_at=sa.bindparam("new_updated_at"),
        version=sa.bindparam("new_version"),
    )
)


def upload_from_tuple(row: Sequence[Any]) -> Upload:
    """An Upload from a row of UPLOAD_COLUMNS."""
    (
        upload_id,
        status,
        offset,
        length,
        header,
        concat_kind,
        concat_header,
        expires,
        version,
        owner,
    ) = row
    return Upload(
        id=upload_id,
        status=UploadStatus(status),
        offset=offset,
        length=length,
        metadata_header=header,
        concat_kind=ConcatKind(concat_kind),
        concat_header=concat_header,
        expires_at=utc(expires),
        version=version,
        owner=owner,
    )


def insert_values(
    upload: Upload, metadata: dict[str, bytes | None], now: datetime, layout: Layout
) -> dict[str, Any]:
    return {
        "v_id": upload.id,
        "v_status": upload.status.value,
        "v_offset": upload.offset,
        "v_length": upload.length,
        "v_metadata_header": upload.metadata_header,
        "v_metadata_json": encode_metadata(metadata),
        "v_concat_kind": upload.concat_kind.value,
        "v_concat_header": upload.concat_header,
        "v_storage_key": layout.key,
        "v_backend_handle": layout.handle,
        "v_part_size": layout.part_size,
        "v_created_at": now,
        "v_updated_at": now,
        "v_expires_at": upload.expires_at,
        "v_version": upload.version,
        "v_owner": upload.owner,
    }


def next_record(
    old: Upload,
    status: UploadStatus,
    offset: int | None,
    length: int | None,
    expires_at: datetime | None,
) -> Upload:
    """The record a transition of `old` writes (checked against the state machine)."""
    check_transition(old.status, status)
    return Upload(
        id=old.id,
        status=status,
        offset=old.offset if offset is None else offset,
        length=old.length if length is None else length,
        metadata_header=old.metadata_header,
        concat_kind=old.concat_kind,
        concat_header=old.concat_header,
        expires_at=expires_at,
        version=old.version + 1,
        owner=old.owner,
    )


def transition_values(old: Upload, new: Upload, now: datetime) -> dict[str, Any]:
    return {
        "old_id": old.id,
        "old_status": old.status.value,
        "old_offset": old.offset,
        "old_version": old.version,
        "new_status": new.status.value,
        "new_offset": new.offset,
        "new_length": new.length,
        "new_expires_at": new.expires_at,
        "new_updated_at": now,
        "new_version": new.version,
    }


def encode_metadata(metadata: dict[str, bytes | None]) -> str:
    """Parsed metadata as JSON: UTF-8 values as text, others as latin-1 (lossless)."""
    return json.dumps({k: None if v is None else v.decode("latin-1") for k, v in metadata.items()})


def decode_metadata(text: str | None) -> dict[str, bytes | None]:
    if not text:
        return {}
    raw: dict[str, str | None] = json.loads(text)
    return {k: None if v is None else v.encode("latin-1") for k, v in raw.items()}


class Repository:
    """The state database behind core.ports.Repository: each call is one trip to a database
    worker thread (see database.py)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._sql = _Statements()
        #: PostgreSQL: the hot statements batched with concurrent ones (postgres_hot.py)
        self._hot: HotStatements | None = None
        if database.direct is not None:
            # imported here: postgres_hot builds its statements from this module's table
            from .postgres_hot import HotStatements

            self._hot = HotStatements(database.direct)
        #: SQLite: the hot writes committed in groups with concurrent ones (sqlite_groups.py)
        self._groups: SqliteGroups | None = None
        if database.is_sqlite:
            from .sqlite_groups import SqliteGroups

            self._groups = SqliteGroups(database)
        #: where a lone INSERT or guarded UPDATE goes with the concurrent ones (either one)
        self._batched_writes = self._hot or self._groups

    async def insert(
        self,
        upload: Upload,
        metadata: dict[str, bytes | None],
        partial_ids: Sequence[str] = (),
        now: datetime | None = None,
        layout: Layout = EMPTY_LAYOUT,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Insert the upload; `events` go to the outbox in the same transaction."""
        batched = self._batched_writes
        if batched is not None and not partial_ids and not events:  # one INSERT, batched
            values = insert_values(upload, metadata, now or datetime.now(UTC), layout)
            await batched.insert(values)
            return
        # one INSERT unless the final of a concatenation lists its partials, or events go too
        run = self.database.run if partial_ids or events else self.database.run_single
        return await run(self._sql.insert, upload, metadata, partial_ids, now, layout, events)

    async def get(self, upload_id: str) -> Upload | None:
        if self._hot is not None:
            return await self._hot.get(upload_id)
        return await self.database.run_single(self._sql.get, upload_id)

    async def get_many(self, upload_ids: Sequence[str]) -> dict[str, Upload]:
        return await self.database.run_single(self._sql.get_many, upload_ids)

    async def metadata(self, upload_id: str) -> dict[str, bytes | None]:
        return await self.database.run_single(self._sql.metadata, upload_id)

    async def transition(
        self,
        old: Upload,
        *,
        status: UploadStatus,
        offset: int | None = None,
        length: int | None = None,
        expires_at: datetime | None = None,
        now: datetime | None = None,
        layout: Layout | None = None,
        new_parts: Sequence[Part] = (),
        events: Sequence[Mapping[str, Any]] = (),
    ) -> Upload | None:
        """Move `old` to its next state; None when the stored record is no longer `old`.
        `events` go to the outbox in the same transaction (and only if it commits)."""
        single = layout is None and not new_parts and not events
        batched = self._batched_writes
        if single and batched is not None:  # one guarded UPDATE, batched
            now = now or datetime.now(UTC)
            new = next_record(old, status, offset, length, expires_at)
            moved = await batched.transition(transition_values(old, new, now))
            return new if moved else None
        # one guarded UPDATE unless the store's record of parts and fragments moves with it
        run = self.database.run_single if single else self.database.run
        return await run(
            self._sql.transition,
            old,
            status=status,
            offset=offset,
            length=length,
            expires_at=expires_at,
            now=now,
            layout=layout,
            new_parts=new_parts,
            events=events,
        )

    # --- the outbox ---------------------------------------------------------------------

    async def claim_events(self, limit: int, lease_seconds: float) -> list[OutboxEvent]:
        """Up to `limit` due events, each claimed for `lease_seconds` (no other relay, on
        any instance, takes them meanwhile), and its attempt counted."""
        return await self.database.run(self._sql.claim_events, limit, lease_seconds)

    async def event_delivered(self, event_id: str) -> None:
        await self.database.run_single(self._sql.event_delivered, event_id)

    async def event_not_delivered(
        self, event_id: str, error: str, retry_at: datetime | None
    ) -> None:
        """Try again at `retry_at`, or (None) give up: the event is failed until retried."""
        await self.database.run_single(self._sql.event_not_delivered, event_id, error, retry_at)

    async def listing(self, query: UploadQuery) -> list[dict[str, Any]]:
        """Uploads matching `query`, newest first, each with its record's columns."""
        return await self.database.run_single(self._sql.listing, query)

    async def list_events(self, status: str, limit: int) -> list[dict[str, Any]]:
        """Outbox rows, newest first: status pending, failed, delivered or all."""
        return await self.database.run_single(self._sql.list_events, status, limit)

    async def event_counts(self) -> tuple[int, int]:
        """How many events wait for delivery (pending), and how many gave up (failed)."""
        return await self.database.run_single(self._sql.event_counts)

    async def prune_events(self, delivered_before: datetime) -> int:
        """Delete the events delivered before then; how many were deleted."""
        return await self.database.run(self._sql.prune_events, delivered_before)

    async def retry_events(self, event_ids: Sequence[str], all_failed: bool) -> int:
        """Make these events (or every failed one) due now, with their attempts anew."""
        return await self.database.run(self._sql.retry_events, event_ids, all_failed)

    async def drop_events(self, event_ids: Sequence[str], all_failed: bool) -> int:
        """Delete these events (or every failed one): they will never be delivered."""
        return await self.database.run(self._sql.drop_events, event_ids, all_failed)

    async def layout(self, upload_id: str) -> Layout:
        """Where the store keeps this upload's bytes (S3: key, multipart id, fragments)."""
        return await self.database.run(self._sql.layout, upload_id)

    async def save_layout(self, upload_id: str, layout: Layout) -> None:
        """Record a layout change that moves no offset (an object assembled, say)."""
        return await self.database.run(self._sql.save_layout, upload_id, layout)

    async def parts(self, upload_id: str) -> list[Part]:
        return await self.database.run(self._sql.parts, upload_id)

    async def unassembled(self, limit: int = 100) -> list[str]:
        """Finished uploads whose object is not whole yet (their assembly failed)."""
        return await self.database.run(self._sql.unassembled, limit)

    async def live_handles(self, handles: Sequence[str]) -> set[str]:
        """Which of these multipart upload ids belong to an upload we still keep."""
        return await self.database.run(self._sql.live_handles, handles)

    async def kept(self, upload_ids: Sequence[str]) -> set[str]:
        """Which of these uploads still have bytes we keep (not terminated, expired, unknown)."""
        return await self.database.run(self._sql.kept, upload_ids)

    async def receiving(self, upload_ids: Sequence[str]) -> set[str]:
        """Which of these uploads are still receiving bytes (and so may own fragments)."""
        return await self.database.run(self._sql.receiving, upload_ids)

    async def delete(self, upload_id: str) -> None:
        """Forget an upload entirely (only for one whose creation failed)."""
        return await self.database.run(self._sql.delete, upload_id)

    async def partial_ids(self, final_id: str) -> list[str]:
        return await self.database.run(self._sql.partial_ids, final_id)

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        return await self.database.run(self._sql.finals_waiting_on, partial_id)

    async def expired(
        self, now: datetime, idle_since: datetime | None = None, limit: int = 500
    ) -> list[Upload]:
        """Unfinished uploads past their deadline, or (idle_since) not touched since then."""
        return await self.database.run(self._sql.expired, now, idle_since, limit)


class _Statements:
    """The repository's work, as plain synchronous SQLAlchemy Core on one connection.

    Each method runs whole on a database worker thread (see database.py); writes open
    their own transaction, reads end with the connection's return to the pool."""

    def insert(
        self,
        conn: sa.Connection,
        upload: Upload,
        metadata: dict[str, bytes | None],
        partial_ids: Sequence[str] = (),
        now: datetime | None = None,
        layout: Layout = EMPTY_LAYOUT,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        now = now or datetime.now(UTC)
        with conn.begin():
            conn.execute(INSERT_UPLOAD, insert_values(upload, metadata, now, layout))
            if events:
                conn.execute(events_outbox.insert(), [outbox_row(e, now) for e in events])
            if partial_ids:
                conn.execute(
                    upload_concat.insert(),
                    [
                        {"final_id": upload.id, "position": i, "partial_id": p}
                        for i, p in enumerate(partial_ids)
                    ],
                )

    def get(self, conn: sa.Connection, upload_id: str) -> Upload | None:
        row = conn.execute(GET_UPLOAD, {"id": upload_id}).first()
        return upload_from_tuple(row) if row else None

    def get_many(self, conn: sa.Connection, upload_ids: Sequence[str]) -> dict[str, Upload]:
        rows = conn.execute(sa.select(*UPLOAD_COLUMNS).where(uploads.c.id.in_(set(upload_ids))))
        return {row.id: upload_from_tuple(row) for row in rows}

    def metadata(self, conn: sa.Connection, upload_id: str) -> dict[str, bytes | None]:
        text = conn.scalar(sa.select(uploads.c.metadata_json).where(uploads.c.id == upload_id))
        return decode_metadata(text)

    def transition(
        self,
        conn: sa.Connection,
        old: Upload,
        *,
        status: UploadStatus,
        offset: int | None = None,
        length: int | None = None,
        expires_at: datetime | None = None,
        now: datetime | None = None,
        layout: Layout | None = None,
        new_parts: Sequence[Part] = (),
        events: Sequence[Mapping[str, Any]] = (),
    ) -> Upload | None:
        """Move `old` to its next state; None when the stored record is no longer `old`.

        With `layout`, the store's record of where the bytes are (new parts, the current
        fragments) is written in the same transaction: it and the offset move together.
        """
        now = now or datetime.now(UTC)
        new = next_record(old, status, offset, length, expires_at)
        try:
            with conn.begin():
                update = TRANSITION_UPLOAD
                if layout is not None:  # the store's record moves with the offset
                    update = update.values(**_layout_columns(layout))
                result = conn.execute(update, transition_values(old, new, now))
                if result.rowcount != 1:
                    raise _LostRace
                if new_parts:
                    conn.execute(
                        upload_parts.insert(),
                        [
                            {
                                "upload_id": old.id,
                                "number": p.number,
                                "size": p.size,
                                "etag": p.etag,
                                "checksum": p.checksum,
                                "sha256": p.sha256,
                            }
                            for p in new_parts
                        ],
                    )
                if layout is not None:
                    _replace_fragments(conn, old.id, layout.fragments)
                if events:
                    conn.execute(events_outbox.insert(), [outbox_row(e, now) for e in events])
        except _LostRace:
            return None
        return new

    def claim_events(
        self, conn: sa.Connection, limit: int, lease_seconds: float
    ) -> list[OutboxEvent]:
        now = datetime.now(UTC)
        due = (
            sa.select(events_outbox.c.id)
            .where(
                events_outbox.c.next_attempt_at <= now,
                sa.or_(
                    events_outbox.c.claimed_until.is_(None),
                    events_outbox.c.claimed_until < now,
                ),
            )
            .order_by(events_outbox.c.next_attempt_at)
            .limit(limit)
            # PostgreSQL: relays of other instances skip what this one is claiming (SQLite
            # has one writer: the statement alone is enough there)
            .with_for_update(skip_locked=True)
        )
        claim = (
            events_outbox.update()
            .where(events_outbox.c.id.in_(due.scalar_subquery()))
            .values(
                claimed_until=now + timedelta(seconds=lease_seconds),
                attempts=events_outbox.c.attempts + 1,
            )
            .returning(
                events_outbox.c.id,
                events_outbox.c.type,
                events_outbox.c.upload_id,
                events_outbox.c.created_at,
                events_outbox.c.payload,
                events_outbox.c.attempts,
            )
        )
        with conn.begin():
            rows = conn.execute(claim).all()
        return [OutboxEvent(*row) for row in rows]

    def listing(self, conn: sa.Connection, query: UploadQuery) -> list[dict[str, Any]]:
        chosen = sa.select(uploads).order_by(uploads.c.created_at.desc()).limit(query.limit)
        if query.ids:
            chosen = chosen.where(uploads.c.id.in_(query.ids))
        if query.status is not None:
            chosen = chosen.where(uploads.c.status == query.status)
        if query.owner is not None:
            chosen = chosen.where(uploads.c.owner == query.owner)
        if query.created_before is not None:
            chosen = chosen.where(uploads.c.created_at <= query.created_before)
        if query.metadata_key is not None:
            # the metadata as JSON, read by each database's own JSON functions: PostgreSQL
            # needs the text cast to json; SQLite reads JSON from text as it is (a CAST there
            # would make it a number)
            document: sa.ColumnElement[Any]
            if conn.dialect.name == "sqlite":
                document = sa.type_coerce(uploads.c.metadata_json, sa.JSON)
            else:
                document = sa.cast(uploads.c.metadata_json, sa.JSON)
            value = document[query.metadata_key].as_string()
            if query.metadata_value is None:
                chosen = chosen.where(value.is_not(None))
            else:
                chosen = chosen.where(value == query.metadata_value)
        return [dict(row._mapping) for row in conn.execute(chosen)]

    def list_events(self, conn: sa.Connection, status: str, limit: int) -> list[dict[str, Any]]:
        query = sa.select(
            events_outbox.c.id,
            events_outbox.c.type,
            events_outbox.c.upload_id,
            events_outbox.c.created_at,
            events_outbox.c.attempts,
            events_outbox.c.next_attempt_at,
            events_outbox.c.delivered_at,
            events_outbox.c.failed_at,
            events_outbox.c.last_error,
        )
        if status != "all":
            query = query.where(_EVENT_STATUS[status])
        rows = conn.execute(query.order_by(events_outbox.c.created_at.desc()).limit(limit))
        return [dict(row._mapping) for row in rows]

    def event_counts(self, conn: sa.Connection) -> tuple[int, int]:
        def counted(condition: Any) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        row = conn.execute(
            sa.select(counted(_EVENT_STATUS["pending"]), counted(_EVENT_STATUS["failed"]))
        ).one()
        return int(row[0]), int(row[1])

    def prune_events(self, conn: sa.Connection, delivered_before: datetime) -> int:
        with conn.begin():
            result = conn.execute(
                events_outbox.delete().where(events_outbox.c.delivered_at < delivered_before)
            )
        return int(result.rowcount)

    def retry_events(self, conn: sa.Connection, event_ids: Sequence[str], all_failed: bool) -> int:
        chosen = _EVENT_STATUS["failed"] if all_failed else events_outbox.c.id.in_(event_ids)
        with conn.begin():
            result = conn.execute(
                events_outbox.update()
                .where(chosen, events_outbox.c.delivered_at.is_(None))
                .values(
                    next_attempt_at=datetime.now(UTC),
                    failed_at=None,
                    claimed_until=None,
                    attempts=0,
                )
            )
        return int(result.rowcount)

    def drop_events(self, conn: sa.Connection, event_ids: Sequence[str], all_failed: bool) -> int:
        chosen = _EVENT_STATUS["failed"] if all_failed else events_outbox.c.id.in_(event_ids)
        with conn.begin():
            result = conn.execute(events_outbox.delete().where(chosen))
        return int(result.rowcount)

    def event_delivered(self, conn: sa.Connection, event_id: str) -> None:
        with conn.begin():
            conn.execute(
                events_outbox.update()
                .where(events_outbox.c.id == event_id)
                .values(delivered_at=datetime.now(UTC), next_attempt_at=None, claimed_until=None)
            )

    def event_not_delivered(
        self, conn: sa.Connection, event_id: str, error: str, retry_at: datetime | None
    ) -> None:
        values: dict[str, Any] = {
            "next_attempt_at": retry_at,
            "claimed_until": None,
            "last_error": error[:2000],
        }
        if retry_at is None:
            values["failed_at"] = datetime.now(UTC)
        with conn.begin():
            conn.execute(
                events_outbox.update().where(events_outbox.c.id == event_id).values(values)
            )

    def layout(self, conn: sa.Connection, upload_id: str) -> Layout:
        """Where the store keeps this upload's bytes (S3: key, multipart id, fragments)."""
        row = (
            conn.execute(
                sa.select(
                    uploads.c.storage_key, uploads.c.backend_handle, uploads.c.part_size
                ).where(uploads.c.id == upload_id)
            )
        ).first()
        if row is None:
            return EMPTY_LAYOUT
        fragments = conn.execute(
            sa.select(upload_fragments)
            .where(upload_fragments.c.upload_id == upload_id)
            .order_by(upload_fragments.c.offset)
        )
        return Layout(
            key=row.storage_key,
            handle=row.backend_handle,
            part_size=row.part_size,
            fragments=tuple(Fragment(f.offset, f.size, f.key, f.checksum) for f in fragments),
        )

    def save_layout(self, conn: sa.Connection, upload_id: str, layout: Layout) -> None:
        """Record a layout change that moves no offset (an object assembled, say)."""
        with conn.begin():
            conn.execute(
                uploads.update().where(uploads.c.id == upload_id).values(**_layout_columns(layout))
            )
            _replace_fragments(conn, upload_id, layout.fragments)
            if layout.handle is None:
                # the object is whole: its parts are history
                conn.execute(upload_parts.delete().where(upload_parts.c.upload_id == upload_id))

    def parts(self, conn: sa.Connection, upload_id: str) -> list[Part]:
        rows = conn.execute(
            sa.select(upload_parts)
            .where(upload_parts.c.upload_id == upload_id)
            .order_by(upload_parts.c.number)
        )
        return [Part(r.number, r.size, r.etag, r.checksum, r.sha256) for r in rows]

    def unassembled(self, conn: sa.Connection, limit: int = 100) -> list[str]:
        """Finished uploads whose object is not whole yet (their assembly failed)."""
        rows = conn.execute(
            sa.select(uploads.c.id)
            .where(
                uploads.c.status == UploadStatus.FINISHED.value,
                uploads.c.backend_handle.is_not(None),
            )
            .limit(limit)
        )
        return [row.id for row in rows]

    def live_handles(self, conn: sa.Connection, handles: Sequence[str]) -> set[str]:
        """Which of these multipart upload ids belong to an upload we still keep."""
        return self._matching(conn, uploads.c.backend_handle, handles, KEPT_STATUSES)

    def kept(self, conn: sa.Connection, upload_ids: Sequence[str]) -> set[str]:
        """Which of these uploads still have bytes we keep (not terminated, expired, unknown)."""
        return self._matching(conn, uploads.c.id, upload_ids, KEPT_STATUSES)

    def _matching(
        self,
        conn: sa.Connection,
        column: sa.Column[Any],
        values: Sequence[str],
        statuses: Sequence[UploadStatus],
    ) -> set[str]:
        """Which of `values` (of `column`) belong to an upload in one of `statuses`."""
        found: set[str] = set()
        values = list(values)
        for start in range(0, len(values), 500):
            rows = conn.execute(
                sa.select(column).where(
                    column.in_(values[start : start + 500]),
                    uploads.c.status.in_([status.value for status in statuses]),
                )
            )
            found.update(row[0] for row in rows)
        return found

    def receiving(self, conn: sa.Connection, upload_ids: Sequence[str]) -> set[str]:
        """Which of these uploads are still receiving bytes (and so may own fragments)."""
        return self._matching(conn, uploads.c.id, upload_ids, (UploadStatus.RECEIVING,))

    def delete(self, conn: sa.Connection, upload_id: str) -> None:
        """Forget an upload entirely (only for one whose creation failed)."""
        with conn.begin():
            conn.execute(upload_parts.delete().where(upload_parts.c.upload_id == upload_id))
            conn.execute(upload_fragments.delete().where(upload_fragments.c.upload_id == upload_id))
            conn.execute(upload_concat.delete().where(upload_concat.c.final_id == upload_id))
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))

    def partial_ids(self, conn: sa.Connection, final_id: str) -> list[str]:
        rows = conn.execute(
            sa.select(upload_concat.c.partial_id)
            .where(upload_concat.c.final_id == final_id)
            .order_by(upload_concat.c.position)
        )
        return [row.partial_id for row in rows]

    def finals_waiting_on(self, conn: sa.Connection, partial_id: str) -> list[str]:
        rows = conn.execute(
            sa.select(upload_concat.c.final_id)
            .distinct()
            .join(uploads, uploads.c.id == upload_concat.c.final_id)
            .where(
                upload_concat.c.partial_id == partial_id,
                uploads.c.status == UploadStatus.CONCATENATING.value,
            )
        )
        return [row.final_id for row in rows]

    def expired(
        self,
        conn: sa.Connection,
        now: datetime,
        idle_since: datetime | None = None,
        limit: int = 500,
    ) -> list[Upload]:
        due = sa.and_(uploads.c.expires_at.is_not(None), uploads.c.expires_at <= now)
        if idle_since is not None:
            due = sa.or_(due, uploads.c.updated_at <= idle_since)
        rows = conn.execute(
            sa.select(*UPLOAD_COLUMNS)
            .where(
                uploads.c.status.in_(
                    [UploadStatus.RECEIVING.value, UploadStatus.CONCATENATING.value]
                ),
                due,
            )
            .limit(limit)
        )
        return [upload_from_tuple(row) for row in rows]


def _layout_columns(layout: Layout) -> dict[str, Any]:
    return {
        "storage_key": layout.key,
        "backend_handle": layout.handle,
        "part_size": layout.part_size,
    }


def _replace_fragments(conn: sa.Connection, upload_id: str, fragments: Sequence[Fragment]) -> None:
    conn.execute(upload_fragments.delete().where(upload_fragments.c.upload_id == upload_id))
    if fragments:
        conn.execute(
            upload_fragments.insert(),
            [
                {
                    "upload_id": upload_id,
                    "offset": f.offset,
                    "size": f.size,
                    "key": f.key,
                    "checksum": f.checksum,
                }
                for f in fragments
            ],
        )
