"""EventRelay: delivers the outbox's events (post-create, post-finish, post-terminate) at
least once.

An event is written in the transaction that makes its change, so a change that committed
has its event, and a change that did not has none. Each server process runs a relay. It
claims due events in small batches (a lease of `lease_seconds` on each: the relays of other
instances skip claimed rows, PostgreSQL's SKIP LOCKED makes claiming itself race-free),
delivers them, and marks each delivered, or due again after a backoff (1 s, doubling, at
most 5 min). After MAX_ATTEMPTS it is marked failed and waits for `tusd-py events retry`.

A process killed after the commit and before the delivery leaves the event pending (or
claimed until its lease ends): the next relay, on any instance, delivers it. The price is
that an event can arrive twice (a relay killed after the delivery and before marking it,
a consumer that took it but answered late); consumers drop duplicates by the event's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..core.hooks import HookFailed, HookPoint, Hooks
from ..core.ports import NULL_METER, Meter, OutboxEvent, Repository
from ..core.tasks import cancel_and_wait

log = logging.getLogger("tusd_py.events")

#: deliveries tried before an event is marked failed
MAX_ATTEMPTS = 20
#: the first pause before an event is tried again; doubled each time, up to MAX_BACKOFF
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
#: events claimed at a time
BATCH = 20
#: seconds between two counts of the backlog (tusdpy_events_pending, tusdpy_events_failed)
COUNT_INTERVAL = 15.0
#: seconds between two deletions of old delivered events
PRUNE_INTERVAL = 600.0
#: how long a delivered event is kept by default (a week: `tusd-py events list --status
#: delivered` answers "was it told?" for that long)
KEEP_DELIVERED = 7 * 24 * 3600.0


def backoff(attempts: int) -> float:
    return float(min(FIRST_BACKOFF * 2 ** (attempts - 1), MAX_BACKOFF))


class EventRelay:
    def __init__(
        self,
        repository: Repository,
        hooks: Hooks,
        lease_seconds: float,
        poll_seconds: float = 1.0,
        ensure_whole: Callable[[str], Awaitable[None]] | None = None,
        meter: Meter = NULL_METER,
        keep_delivered: float = KEEP_DELIVERED,
    ) -> None:
        self.repository = repository
        self.hooks = hooks
        #: called with the upload's id before a post-finish event is delivered: its bytes
        #: must be whole in the store first (UploadService.ensure_whole)
        self.ensure_whole = ensure_whole
        self.meter = meter
        #: seconds a delivered event stays in the outbox (`tusd-py events list`)
        self.keep_delivered = keep_delivered
        self._counted_at = -math.inf
        self._pruned_at = -math.inf
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """Events were written: look now, not at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run_forever(self) -> None:
        while True:
            try:
                claimed = await self.run_once()
                await self.keep_house()
            except Exception:  # the database went away, say: try again at the next poll
                log.exception("the event relay could not claim events")
                claimed = 0
            if claimed:
                continue  # there may be more
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()

    async def keep_house(self, now: float | None = None) -> None:
        """Now and then: count the backlog for /metrics, and delete delivered events older
        than `keep_delivered` (every instance does; deleting twice deletes nothing)."""
        now = time.monotonic() if now is None else now
        if now - self._counted_at >= COUNT_INTERVAL:
            self._counted_at = now
            self.meter.events_backlog(*await self.repository.event_counts())
        if now - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = now
            before = datetime.now(UTC) - timedelta(seconds=self.keep_delivered)
            pruned = await self.repository.prune_events(before)
            if pruned:
                log.info("deleted %d delivered events from the outbox", pruned)

    async def run_once(self) -> int:
        """Claim and deliver one batch of due events: how many were claimed."""
        events = await self.repository.claim_events(BATCH, self.lease_seconds)
        # one upload's events in the order they were written; different uploads at once
        by_upload: dict[str | None, list[OutboxEvent]] = {}
        for event in sorted(events, key=lambda e: e.created_at):
            by_upload.setdefault(event.upload_id, []).append(event)
        await asyncio.gather(*(self._deliver_in_order(group) for group in by_upload.values()))
        return len(events)

    async def _deliver_in_order(self, events: list[OutboxEvent]) -> None:
        for event in events:
            await self._deliver(event.id, event.type, event.payload, event.attempts)

    async def _deliver(self, event_id: str, kind: str, payload: str, attempts: int) -> None:
        point = HookPoint(kind)
        event = json.loads(payload)
        try:
            if point is HookPoint.POST_FINISH and self.ensure_whole is not None:
                await self._made_whole(event["upload"]["id"])
            await self.hooks.deliver(point, event)
        except HookFailed as exc:
            give_up = attempts >= MAX_ATTEMPTS
            retry_at = None if give_up else datetime.now(UTC) + timedelta(seconds=backoff(attempts))
            log.warning(
                "event %s (%s) not delivered, attempt %d%s: %s",
                event_id, kind, attempts, "; marked failed" if give_up else "", exc.detail,
            )  # fmt: skip
            await self.repository.event_not_delivered(event_id, exc.detail, retry_at)
        else:
            await self.repository.event_delivered(event_id)

    async def _made_whole(self, upload_id: str) -> None:
        assert self.ensure_whole is not None
        try:
            await self.ensure_whole(upload_id)
        except Exception as exc:  # the store or the lock service is down: not yet
            raise HookFailed(f"the upload's bytes are not whole in the store yet: {exc}") from exc
