"""The outbox relay against a real SQLite database: backoff, and an event marked failed after
its attempts (tusd_py.events.relay)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit._async import run
from tusd_protocol.state import Upload, UploadStatus
from tusd_py.core.hooks import ANONYMOUS, HookFailed, HookPoint, HookUpload, make_event
from tusd_py.events import relay as relay_module
from tusd_py.events.relay import EventRelay
from tusd_py.state.database import Database
from tusd_py.state.migrations import upgrade_if_needed
from tusd_py.state.sql import Repository


class Unreachable:
    def __init__(self) -> None:
        self.tries = 0

    def enabled(self, point: HookPoint) -> bool:
        return True

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        self.tries += 1
        raise HookFailed("The post-create hook (test) could not be reached.")


def outbox(path: Path) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT attempts, next_attempt_at, failed_at, last_error, delivered_at "
            "FROM events_outbox"
        ).fetchone()


def make_due(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE events_outbox SET next_attempt_at = '2000-01-01 00:00:00.000000' "
            "WHERE next_attempt_at IS NOT NULL"
        )


def test_an_event_is_tried_again_later_and_marked_failed_after_its_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "MAX_ATTEMPTS", 3)
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    upgrade_if_needed(url)
    upload = Upload("u" * 22, UploadStatus.RECEIVING, 0, 10)
    event = make_event(HookPoint.POST_CREATE, HookUpload(id=upload.id, length=10), ANONYMOUS)
    hooks = Unreachable()

    async def main() -> list[tuple[Any, ...]]:
        database = Database(url)
        repository = Repository(database)
        relay = EventRelay(repository, hooks, lease_seconds=30)  # type: ignore[arg-type]
        seen = []
        try:
            await repository.insert(upload, {}, events=[event])
            for _ in range(3):
                assert await relay.run_once() == 1
                seen.append(outbox(path))
                assert await relay.run_once() == 0  # not due again yet
                make_due(path)
            assert await relay.run_once() == 0  # failed: never tried again by itself
            # `tusd-py events retry --all-failed`: due now, with its attempts anew
            assert await repository.retry_events([], all_failed=True) == 1
            assert outbox(path)[0] == 0 and outbox(path)[2] is None
            assert await relay.run_once() == 1
            seen.append(outbox(path))
            # `tusd-py events drop --all-failed` leaves a pending event alone
            assert await repository.drop_events([], all_failed=True) == 0
            assert outbox(path) is not None
        finally:
            await database.close()
        return seen

    started = datetime.now(UTC).replace(tzinfo=None)
    seen = run(main)
    waits = [
        (datetime.fromisoformat(str(row[1])).replace(tzinfo=None) - started).total_seconds()
        for row in seen[:2]
    ]
    assert 0.5 < waits[0] < 3 and 1.5 < waits[1] < 4  # 1 s, then 2 s
    attempts, next_at, failed_at, error, delivered = seen[2]
    assert attempts == 3 and next_at is None and failed_at is not None and delivered is None
    assert "could not be reached" in error
    assert seen[3][0] == 1 and seen[3][1] is not None  # tried again, pending again
    assert hooks.tries == 4


class Taking:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def enabled(self, point: HookPoint) -> bool:
        return True

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        self.log.append(f"{point.value} delivered")


def test_post_finish_waits_until_the_store_made_the_bytes_whole(tmp_path: Path) -> None:
    """A reader of `upload.storage` must find the object complete (S3): the relay has the
    upload made whole first, and when that fails the event is not delivered yet."""
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    upgrade_if_needed(url)
    upload = Upload("w" * 22, UploadStatus.FINISHED, 10, 10)
    events = [
        make_event(point, HookUpload(id=upload.id, length=10), ANONYMOUS)
        for point in (HookPoint.POST_CREATE, HookPoint.POST_FINISH)
    ]
    log: list[str] = []
    store_down = [True]

    async def ensure_whole(upload_id: str) -> None:
        log.append(f"ensure_whole {upload_id[:1]}")
        if store_down[0]:
            raise ConnectionError("the S3 endpoint did not answer")

    async def main() -> None:
        database = Database(url)
        repository = Repository(database)
        relay = EventRelay(
            repository,
            Taking(log),  # type: ignore[arg-type]
            lease_seconds=30,
            ensure_whole=ensure_whole,
        )
        try:
            await repository.insert(upload, {}, events=events)
            assert await relay.run_once() == 2
            assert log == ["post-create delivered", "ensure_whole w"]
            assert outbox_rows(path) == [(None, 1), ("the S3 endpoint", 0)]
            store_down[0] = False
            make_due(path)
            assert await relay.run_once() == 1
            assert log[2:] == ["ensure_whole w", "post-finish delivered"]
        finally:
            await database.close()

    run(main)


def outbox_rows(path: Path) -> list[tuple[Any, ...]]:
    """(the start of the last error, delivered) of each event, in the order written."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT last_error, delivered_at IS NOT NULL FROM events_outbox ORDER BY created_at"
        ).fetchall()
    return [(error and error.split(": ", 1)[1][:15], delivered) for error, delivered in rows]


class Backlog:
    def __init__(self) -> None:
        self.readings: list[tuple[int, int]] = []

    def events_backlog(self, pending: int, failed: int) -> None:
        self.readings.append((pending, failed))


def test_the_relay_counts_its_backlog_and_deletes_old_delivered_events(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    upgrade_if_needed(url)
    uploads = [Upload(c * 22, UploadStatus.RECEIVING, 0, 10) for c in "abc"]
    meter = Backlog()

    def made(upload: Upload) -> list[dict[str, Any]]:
        return [make_event(HookPoint.POST_CREATE, HookUpload(id=upload.id), ANONYMOUS)]

    async def main() -> None:
        database = Database(url)
        repository = Repository(database)
        relay = EventRelay(
            repository,
            Taking([]),  # type: ignore[arg-type]
            lease_seconds=30,
            meter=meter,  # type: ignore[arg-type]
            keep_delivered=3600,
        )
        try:
            for upload in uploads:
                await repository.insert(upload, {}, events=made(upload))
            await relay.keep_house(now=0.0)
            assert meter.readings == [(3, 0)]
            assert await relay.run_once() == 3
            with sqlite3.connect(path) as conn:  # two were delivered two hours ago
                conn.execute(
                    "UPDATE events_outbox SET delivered_at = '2000-01-01 00:00:00.000000' "
                    "WHERE upload_id IN (?, ?)",
                    (uploads[0].id, uploads[1].id),
                )
            await relay.keep_house(now=1.0)  # counted and pruned within their intervals
            assert meter.readings == [(3, 0)]
            assert len(await repository.list_events("all", 10)) == 3
            await relay.keep_house(now=relay_module.PRUNE_INTERVAL)
            assert meter.readings == [(3, 0), (0, 0)]
            left = await repository.list_events("all", 10)
            assert [row["upload_id"] for row in left] == [uploads[2].id]
        finally:
            await database.close()

    run(main)
