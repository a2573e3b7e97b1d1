"""The ports of the core: what the upload service needs from the world, as Protocols.

The service is written against these and nothing else; `state/` implements them (SQL
repository, in-process and Redis caches, local and Redis locks), `metrics/` the Meter,
`wiring.py` plugs the implementations in. Tests can pass any object of the right shape.

`Holding` and `Receive` live here too: they are the shapes the service and the body pump
share with the lock managers and the HTTP server, not a backend of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tusd_protocol.state import Upload, UploadStatus
from tusd_storage import Layout, Part

#: an ASGI receive channel: the request body arrives as {"type": "http.request", ...}
#: messages, an ended connection as {"type": "http.disconnect"}
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BackendUnavailable(Exception):
    """A backing service (lock service, cache) could not be asked; the HTTP layer answers
    503 with Retry-After. Raised by port implementations, so the core needs no driver's
    exception types."""


# --- the state database ---------------------------------------------------------------


@dataclass(frozen=True)
class ProgressNote:
    """How far an upload got, for people watching it."""

    upload_id: str
    offset: int
    length: int | None
    #: the upload's status (UploadStatus's value)
    status: str

    @property
    def final(self) -> bool:
        """No more notes follow: the upload finished, or ended otherwise."""
        return self.status not in ("receiving", "concatenating")


class ProgressFeed(Protocol):
    """Notes of progress from the requests that move uploads to the people watching them
    (events/progress.py): best effort, for display."""

    def wanted(self, upload_id: str) -> bool:
        """Whether anyone watches the upload, here or on another instance."""

    def publish(self, note: ProgressNote) -> None: ...

    def watch(
        self, upload_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[ProgressNote]]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class OutboxEvent(Protocol):
    """An event claimed for delivery (state/sql.py's row)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def upload_id(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def payload(self) -> str: ...
    @property
    def attempts(self) -> int: ...


class Repository(Protocol):
    """Upload records: every transition is guarded by the expected old record."""

    async def insert(
        self,
        upload: Upload,
        metadata: dict[str, bytes | None],
        partial_ids: Sequence[str] = (),
        now: datetime | None = None,
        layout: Layout = ...,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Insert the upload; `events` go to the outbox in the same transaction."""

    async def get(self, upload_id: str) -> Upload | None: ...

    async def get_many(self, upload_ids: Sequence[str]) -> dict[str, Upload]: ...

    async def metadata(self, upload_id: str) -> dict[str, bytes | None]: ...

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

    async def claim_events(self, limit: int, lease_seconds: float) -> Sequence[OutboxEvent]:
        """Up to `limit` due events, each claimed for `lease_seconds`, its attempt counted."""

    async def event_counts(self) -> tuple[int, int]:
        """How many events wait for delivery (pending), and how many gave up (failed)."""

    async def prune_events(self, delivered_before: datetime) -> int:
        """Delete the events delivered before then; how many were deleted."""

    async def event_delivered(self, event_id: str) -> None: ...

    async def event_not_delivered(
        self, event_id: str, error: str, retry_at: datetime | None
    ) -> None:
        """Try again at `retry_at`, or (None) mark it failed."""

    async def layout(self, upload_id: str) -> Layout: ...

    async def save_layout(self, upload_id: str, layout: Layout) -> None: ...

    async def parts(self, upload_id: str) -> list[Part]: ...

    async def unassembled(self, limit: int = 100) -> list[str]: ...

    async def live_handles(self, handles: Sequence[str]) -> set[str]: ...

    async def kept(self, upload_ids: Sequence[str]) -> set[str]: ...

    async def receiving(self, upload_ids: Sequence[str]) -> set[str]: ...

    async def delete(self, upload_id: str) -> None: ...

    async def partial_ids(self, final_id: str) -> list[str]: ...

    async def finals_waiting_on(self, partial_id: str) -> list[str]: ...

    async def expired(
        self, now: datetime, idle_since: datetime | None = None, limit: int = 500
    ) -> list[Upload]: ...


# --- the hot-state cache --------------------------------------------------------------


class UploadCache(Protocol):
    """The hot state of uploads beside the database (in-process, or Redis)."""

    #: True when every commit goes through this cache (one process): writers may trust it
    authoritative: bool
    hits: int
    misses: int

    async def get(self, upload_id: str) -> Upload | None: ...

    async def put(self, upload: Upload) -> None: ...

    async def refresh(self, upload: Upload) -> None:
        """Write the database's record whatever the entry's version (lock holders only)."""

    async def forget(self, upload_id: str) -> None: ...


# --- one holder per upload ------------------------------------------------------------

HANDOVER = "tusd-py: lock handover"


@dataclass(eq=False)
class Holding:
    """The current holder of one upload's lock."""

    upload_id: str
    task: asyncio.Task[object] | None = field(default_factory=asyncio.current_task)
    #: set when another request wants the upload
    stop_requested: bool = False
    #: True only while the holder awaits body bytes; then cancelling it loses nothing
    receiving: bool = False
    #: True when the lock service writes `settled` to the cache as it releases the lock
    #: (RedisLocks, in the same round trip): the holder need not write the cache itself
    keeps_state: bool = False
    #: the upload as the database has it now, known for sure (after a read or a commit by
    #: this holder), or None (not read, terminated, or a commit whose outcome is unknown):
    #: only a known state goes to the cache on release
    settled: Upload | None = None
    #: the upload's state when the lock service kept the lock since its last holder read or
    #: committed it (RedisLocks keeps locks between an upload's requests): the database's
    #: record, which a holder may start from instead of reading it (load_for_write)
    kept: Upload | None = None

    def request_stop(self) -> None:
        if self.stop_requested:
            return  # one cancellation per handover, however many newcomers ask
        self.stop_requested = True
        if self.receiving and self.task is not None and not self.task.done():
            self.task.cancel(HANDOVER)

    def is_handover(self, exc: asyncio.CancelledError) -> bool:
        """Was this cancellation our handover (and not a shutdown)? Un-cancels if so."""
        if not self.stop_requested or self.task is None:
            return False
        if HANDOVER not in exc.args or self.task.cancelling() > 1:
            return False  # a real cancellation (shutdown) came too: let it through
        self.task.uncancel()
        return True


class UploadLocks(Protocol):
    """One holder per upload, with handover (LocalLocks, RedisLocks)."""

    def is_held(self, upload_id: str) -> bool: ...

    async def held_anywhere(self, upload_id: str) -> bool:
        """Held by any request that could write the upload; raises BackendUnavailable when
        the lock service cannot be asked."""

    def kept_state(self, upload_id: str) -> Upload | None:
        """The upload's state, when this process keeps its lock between requests with no
        request holding it (RedisLocks): what the last holder read or committed, which no
        one else can have changed since. None otherwise."""

    def hold(
        self, upload_id: str, *, wait: bool = True
    ) -> contextlib.AbstractAsyncContextManager[Holding]: ...

    def stop_all(self) -> None:
        """Shutdown: ask every holder of this process to let go now, and every later one
        as soon as it holds."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# --- figures for monitoring -------------------------------------------------------------


class Meter(Protocol):
    """What the core reports as it happens, for monitoring (metrics/ exposes it).

    Plain synchronous calls, cheap enough for the hot path: they never await, never raise
    and never allocate much; the core imports no metrics library. Lock waits and storage
    calls are timed by thin wrappers (metrics/instrumented.py) that call this too, so the
    core's own code carries only the events it alone can see.
    """

    def upload_created(self) -> None: ...

    def upload_finished(self) -> None: ...

    def upload_terminated(self) -> None: ...

    def uploads_expired(self, count: int) -> None: ...

    def bytes_received(self, count: int) -> None:
        """Body bytes handed to the store (counted as they arrive, not when committed)."""

    def receiving_started(self) -> None:
        """A request begins carrying upload bytes (the uploads-in-progress gauge)."""

    def receiving_ended(self) -> None: ...

    def lock_waited(self, seconds: float, outcome: str) -> None:
        """How long taking an upload's lock took; outcome: acquired, timeout, busy, error."""

    def lock_handover(self) -> None:
        """A holder was asked to let its upload go (a newcomer wants it, or its lease was
        lost)."""

    def storage_call(self, operation: str, seconds: float, ok: bool) -> None: ...

    def admission_refused(self, reason: str) -> None:
        """A request was refused before its body was read (503/429/507)."""

    def hook_called(self, point: str, outcome: str, seconds: float) -> None:
        """A hook was called (accepted, rejected, failed) or an event delivered to the
        hooks (delivered, failed)."""

    def events_backlog(self, pending: int, failed: int) -> None:
        """The outbox's events waiting for delivery, and those that gave up."""


class NullMeter:
    """A Meter that keeps nothing: the default, and for tests."""

    def upload_created(self) -> None:
        pass

    def upload_finished(self) -> None:
        pass

    def upload_terminated(self) -> None:
        pass

    def uploads_expired(self, count: int) -> None:
        pass

    def bytes_received(self, count: int) -> None:
        pass

    def receiving_started(self) -> None:
        pass

    def receiving_ended(self) -> None:
        pass

    def lock_waited(self, seconds: float, outcome: str) -> None:
        pass

    def lock_handover(self) -> None:
        pass

    def storage_call(self, operation: str, seconds: float, ok: bool) -> None:
        pass

    def admission_refused(self, reason: str) -> None:
        pass

    def hook_called(self, point: str, outcome: str, seconds: float) -> None:
        pass

    def events_backlog(self, pending: int, failed: int) -> None:
        pass


NULL_METER: Meter = NullMeter()
