"""RedisStateCache and RedisLocks against a real Redis: the state and locks of many instances.

Every test works under its own key prefix (and so its own handover channel) and deletes its
keys afterwards. Each test runs its own event loop and makes its Redis clients inside it;
two RedisLocks objects with their own clients stand for two server instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tests.conftest import missing_service
from tests.unit._async import run, until
from tusd_protocol.errors import UploadGone, UploadLocked
from tusd_protocol.state import ConcatKind, Upload, UploadStatus
from tusd_py.core.ports import HANDOVER
from tusd_py.state.redis_cache import RedisStateCache
from tusd_py.state.redis_locks import RedisLocks

REDIS_URL = os.environ.get("TUSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ID = "abcdefghijklmnop"


# --- plumbing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def new_prefix() -> str:
    return f"tusd-test-{uuid.uuid4().hex}:"


def delete_keys(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    chosen = new_prefix()
    yield chosen
    delete_keys(redis_url, chosen)


def now() -> float:
    return asyncio.get_running_loop().time()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make(upload_id: str = ID, version: int = 0, offset: int = 0) -> Upload:
    return Upload(upload_id, UploadStatus.RECEIVING, offset, 100, version=version)


@asynccontextmanager
async def instances(
    url: str, prefix: str, count: int = 2, **options: Any
) -> AsyncIterator[tuple[Redis, list[RedisLocks]]]:
    """`count` server instances (one Redis client each) listening for handover requests,
    and one more client for the test to look at the keys with."""
    clients = [Redis.from_url(url) for _ in range(count + 1)]
    locks = [RedisLocks(client, prefix=prefix, **options) for client in clients[1:]]
    try:
        for each in locks:
            await each.start()
        yield clients[0], locks
    finally:
        for each in locks:
            await each.stop()
        for client in clients:
            await client.aclose()


# --- cache ----------------------------------------------------------------------------


def test_cache_miss_then_hit_keeps_every_field(redis_url: str, prefix: str) -> None:
    plain = replace(make("p" * 16), length=None)  # deferred length, defaults elsewhere
    full = Upload(
        ID,
        UploadStatus.FINISHED,
        offset=1234,
        length=1234,
        metadata_header="filename d29ybGQudHh0,is_confidential",
        concat_kind=ConcatKind.FINAL,
        concat_header="final;/files/aaaaaaaaaaaaaaaa /files/bbbbbbbbbbbbbbbb",
        expires_at=datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
        version=7,
    )

    async def main() -> tuple[RedisStateCache, list[Upload | None]]:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, prefix=prefix)
            seen = [await cache.get(ID)]
            await cache.put(full)
            await cache.put(plain)
            seen += [await cache.get(ID), await cache.get(plain.id)]
            return cache, seen

    cache, (missed, got_full, got_plain) = run(main)
    assert missed is None
    assert got_full == full
    assert got_full is not None and got_full.expires_at is not None
    assert got_full.expires_at.utcoffset() == timedelta(hours=2)  # == alone compares instants
    assert got_plain == plain and got_plain is not None and got_plain.length is None
    assert (cache.hits, cache.misses, cache.errors) == (2, 1, 0)
    assert cache.authoritative is False


def test_cache_older_version_never_replaces_newer(redis_url: str, prefix: str) -> None:
    async def main() -> Upload | None:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, prefix=prefix)
            await cache.put(make(version=5, offset=50))
            await cache.put(make(version=4, offset=40))
            return await cache.get(ID)

    assert run(main) == make(version=5, offset=50)


def test_cache_same_and_newer_versions_replace(redis_url: str, prefix: str) -> None:
    refreshed = replace(make(version=3, offset=30), status=UploadStatus.FINISHED)

    async def main() -> list[Upload | None]:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, prefix=prefix)
            await cache.put(make(version=3, offset=30))
            await cache.put(refreshed)  # a refresh from the database rewrites the same version
            seen = [await cache.get(ID)]
            await cache.put(make(version=4, offset=40))
            seen.append(await cache.get(ID))
            return seen

    assert run(main) == [refreshed, make(version=4, offset=40)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=12))
def test_cache_stored_version_is_the_highest_written(redis_url: str, versions: list[int]) -> None:
    chosen = new_prefix()

    async def main() -> Upload | None:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, prefix=chosen)
            for version in versions:
                await cache.put(make(version=version, offset=version))
            return await cache.get(ID)

    try:
        cached = run(main)
    finally:
        delete_keys(redis_url, chosen)
    assert cached is not None
    assert cached.version == max(versions)
    assert cached.offset == max(versions)


def test_cache_entry_expires_after_the_ttl(redis_url: str, prefix: str) -> None:
    async def main() -> int:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, ttl_seconds=60, prefix=prefix)
            await cache.put(make())
            return int(await client.pttl(cache.key(ID)))

    assert 58_000 < run(main) <= 60_000


def test_cache_forget_removes_the_entry(redis_url: str, prefix: str) -> None:
    async def main() -> tuple[Upload | None, int]:
        async with Redis.from_url(redis_url) as client:
            cache = RedisStateCache(client, prefix=prefix)
            await cache.put(make(version=9))
            await cache.forget(ID)
            await cache.forget(ID)  # idempotent
            return await cache.get(ID), int(await client.exists(cache.key(ID)))

    assert run(main) == (None, 0)


def test_cache_unreachable_redis_is_a_miss_and_never_raises() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"

    async def main() -> None:
        async with Redis.from_url(url, socket_connect_timeout=0.5) as client:
            cache = RedisStateCache(client, prefix=new_prefix())
            assert await cache.get(ID) is None
            assert (cache.hits, cache.misses, cache.errors) == (0, 1, 1)
            await cache.put(make())  # must not raise
            after_put = cache.errors
            assert after_put > 1
            await cache.forget(ID)  # must not raise
            assert cache.errors == after_put + 1

    run(main)


# --- locks ----------------------------------------------------------------------------


def test_lock_free_upload_is_taken_at_once_and_released_after(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, count=1, lease_seconds=10) as (client, [a]):
            key = a.key(ID)
            started = now()
            async with a.hold(ID) as holding:
                assert now() - started < 0.5
                assert holding.upload_id == ID and not holding.stop_requested
                assert a.is_held(ID)
                token = await client.get(key)
                assert token is not None and len(token) >= 16
                assert 9_000 < await client.pttl(key) <= 10_000
            assert not a.is_held(ID)
            assert await client.exists(key) == 0

    run(main)


def test_lock_held_anywhere_sees_another_instance(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix) as (_, [a, b]):
            assert not await b.held_anywhere(ID)
            async with a.hold(ID):
                assert await b.held_anywhere(ID)
                assert not b.is_held(ID)  # not by a request of b's process
            assert not await b.held_anywhere(ID)

    run(main)


def test_lock_handover_from_another_instance(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, acquire_timeout=5) as (_, [a, b]):
            entered = asyncio.Event()
            times: dict[str, float] = {}

            async def busy_holder() -> None:
                async with a.hold(ID) as holding:
                    entered.set()
                    # busy elsewhere: it is not cancelled, it looks at stop_requested
                    await until(lambda: holding.stop_requested)
                    times["asked"] = now()
                    await asyncio.sleep(0.1)  # saves what it received, answers its client
                    times["let go"] = now()

            holder = asyncio.create_task(busy_holder())
            await entered.wait()
            times["newcomer"] = now()
            async with b.hold(ID) as newcomer:
                times["got"] = now()
                assert not newcomer.stop_requested
            await holder

            assert times["asked"] - times["newcomer"] < 0.5
            remaining_hold = times["let go"] - times["newcomer"]
            assert times["got"] >= times["let go"]  # never two holders
            assert times["got"] - times["newcomer"] < remaining_hold + 0.5

    run(main)


def test_lock_handover_cancels_a_receiving_holder_on_another_instance(
    redis_url: str, prefix: str
) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, acquire_timeout=5) as (_, [a, b]):
            entered = asyncio.Event()
            log: list[str] = []

            async def receiving_holder() -> None:
                async with a.hold(ID) as holding:
                    entered.set()
                    holding.receiving = True
                    try:
                        await asyncio.Event().wait()  # body bytes that never come
                    except asyncio.CancelledError as exc:
                        assert HANDOVER in exc.args and holding.is_handover(exc)
                        log.append("handed over")
                    finally:
                        holding.receiving = False
                    await asyncio.sleep(0.01)
                    log.append("saved")

            holder = asyncio.create_task(receiving_holder())
            await entered.wait()
            async with b.hold(ID):
                log.append("newcomer in")
            await holder
            assert log == ["handed over", "saved", "newcomer in"]

    run(main)


def test_lock_holder_that_never_lets_go_makes_the_newcomer_423(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, acquire_timeout=0.5) as (client, [a, b]):
            entered, release = asyncio.Event(), asyncio.Event()

            async def stuck_holder() -> bool:
                async with a.hold(ID) as holding:
                    entered.set()
                    await release.wait()  # neither receiving nor looking at stop_requested
                    return holding.stop_requested

            holder = asyncio.create_task(stuck_holder())
            await entered.wait()
            started = now()
            with pytest.raises(UploadLocked) as info:
                async with b.hold(ID):
                    pytest.fail("the newcomer must not get the lock")
            waited = now() - started
            assert info.value.status == 423
            assert info.value.code == "ERR_UPLOAD_LOCKED"
            assert "Retry-After" in info.value.headers
            assert 0.45 <= waited < 1.5
            assert not holder.done()
            release.set()
            assert await holder is True  # it was asked, over the channel
            assert await client.exists(a.key(ID)) == 0
            # the failed newcomer left nothing behind
            async with b.hold(ID, wait=False):
                pass

    run(main)


def test_lock_wait_false_raises_423_at_once(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with (
            instances(redis_url, prefix, acquire_timeout=30) as (_, [a, b]),
            a.hold(ID) as holding,
        ):
            started = now()
            with pytest.raises(UploadLocked) as info:
                async with b.hold(ID, wait=False):
                    pytest.fail("the newcomer must not get the lock")
            assert now() - started < 0.3
            assert info.value.status == 423
            assert "Retry-After" in info.value.headers
            # a request that does not wait does not ask the holder to stop
            await asyncio.sleep(0.1)
            assert not holding.stop_requested
            assert not b.is_held(ID)

    run(main)


def test_lock_fenced_release_keeps_a_successors_lock(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, count=1) as (client, [a]):
            key = a.key(ID)
            async with a.hold(ID):
                # the lease ran out and another instance took the lock
                await client.set(key, "successor-token")
            assert await client.get(key) == b"successor-token"

    run(main)


def test_lock_renewal_keeps_the_lock_beyond_its_lease(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, lease_seconds=0.3, acquire_timeout=0.2) as (
            client,
            [a, b],
        ):
            key = a.key(ID)
            async with a.hold(ID) as holding:
                token = await client.get(key)
                await asyncio.sleep(1.0)  # more than three leases
                assert await client.get(key) == token
                assert await client.pttl(key) > 0
                assert not holding.stop_requested
                with pytest.raises(UploadLocked):
                    async with b.hold(ID, wait=False):
                        pass
            assert await client.exists(key) == 0

    run(main)


def test_lock_renewal_notices_a_stolen_lock_and_asks_to_stop(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, count=1, lease_seconds=0.3) as (client, [a]):
            key = a.key(ID)
            async with a.hold(ID) as holding:
                await client.set(key, "thief", px=5_000)
                stolen = now()
                await until(lambda: holding.stop_requested, timeout=1.0)
                # renewals come every lease/3
                assert now() - stolen < 0.3
            assert await client.get(key) == b"thief"

    run(main)


def test_lock_release_and_stop_never_wait_for_a_renewal_that_hangs(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal round trip hangs, and turns its cancellation into a Redis error (as
    redis-py's pool wait can): a request still releases its lock at once, and stop() ends.
    Once a request awaited a renewal task of its own that never ended."""

    async def hanging_renewal() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise redis.ConnectionError("No connection available.") from None

    async def main() -> None:
        async with instances(redis_url, prefix, count=1, lease_seconds=0.3) as (client, [a]):
            monkeypatch.setattr(a, "_renew_all", hanging_renewal)
            async with asyncio.timeout(2):
                async with a.hold(ID):
                    await asyncio.sleep(0.3)  # the renewal has started and hangs
                assert await client.exists(a.key(ID)) == 0
                await a.stop()

    run(main)


def test_lock_renewal_keeps_every_lock_of_the_process(redis_url: str, prefix: str) -> None:
    ids = [f"{ID}{n:04d}" for n in range(50)]

    async def main() -> None:
        async with instances(redis_url, prefix, count=1, lease_seconds=0.3) as (client, [a]):
            async with contextlib.AsyncExitStack() as stack:
                holdings = [await stack.enter_async_context(a.hold(i)) for i in ids]
                async with a.hold("released-early-0001"):
                    pass
                await asyncio.sleep(1.0)  # more than three leases
                assert all([await client.exists(a.key(i)) for i in ids])
                assert not any(h.stop_requested for h in holdings)
                assert await client.exists(a.key("released-early-0001")) == 0
            assert not any([await client.exists(a.key(i)) for i in ids])

    run(main)


def test_lock_two_requests_in_one_process_are_serialized(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, count=1, acquire_timeout=5) as (client, [a]):
            key = a.key(ID)
            entered = asyncio.Event()
            events: list[str] = []
            tokens: list[bytes | str | None] = []

            async def first() -> None:
                async with a.hold(ID) as holding:
                    tokens.append(await client.get(key))
                    events.append("first in")
                    entered.set()
                    await until(lambda: holding.stop_requested)
                    events.append("first asked")
                    await asyncio.sleep(0.05)
                    events.append("first out")

            async def second() -> None:
                async with a.hold(ID):
                    tokens.append(await client.get(key))
                    events.append("second in")

            first_task = asyncio.create_task(first())
            await entered.wait()
            await asyncio.gather(first_task, second())
            assert events == ["first in", "first asked", "first out", "second in"]
            assert len(tokens) == 2 and None not in tokens and tokens[0] != tokens[1]
            assert await client.exists(key) == 0

    run(main)


@pytest.mark.parametrize(
    ("settled", "stolen", "cached"),
    [
        # the holder's state reaches the cache with the release, even over an entry that lies
        (make(version=3, offset=30), False, make(version=3, offset=30)),
        # a commit whose outcome is unknown leaves the entry as it was
        (None, False, make(version=99, offset=77)),
        # a holder whose lease ran out writes nothing: the lock is its successor's
        (make(version=3, offset=30), True, make(version=99, offset=77)),
    ],
    ids=["settled", "unknown", "lost"],
)
def test_lock_release_writes_the_settled_state_to_the_cache(
    redis_url: str, prefix: str, settled: Upload | None, stolen: bool, cached: Upload
) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_url)
        cache = RedisStateCache(client, prefix=prefix)
        locks = RedisLocks(client, prefix=prefix, cache=cache, keep_seconds=0)
        try:
            await cache.put(make(version=99, offset=77))  # ahead of the truth
            async with locks.hold(ID) as holding:
                assert holding.keeps_state
                holding.settled = settled
                if stolen:
                    await client.set(locks.key(ID), "successor-token")
            assert (await cache.get(ID)) == cached
            assert await client.get(locks.key(ID)) == (b"successor-token" if stolen else None)
            assert 0 < await client.pttl(cache.key(ID)) <= cache.ttl_ms
        finally:
            await locks.stop()
            await client.aclose()

    run(main)


def test_a_lock_is_kept_for_the_uploads_next_request_then_given_back_with_its_state(
    redis_url: str, prefix: str
) -> None:
    """A request ends with the upload still receiving: the process keeps the Redis lock, so
    the next request takes it without a round trip; once idle for keep_seconds it goes back,
    and the state it was kept with reaches the cache."""

    async def main() -> None:
        client = Redis.from_url(redis_url)
        cache = RedisStateCache(client, prefix=prefix)
        locks = RedisLocks(client, prefix=prefix, cache=cache, keep_seconds=0.3)
        try:
            async with locks.hold(ID) as holding:
                holding.settled = make(version=1, offset=10)
            token = await client.get(locks.key(ID))
            assert token is not None  # kept
            assert await locks.held_anywhere(ID)
            assert await cache.get(ID) is None  # the state goes with the lock, later
            async with locks.hold(ID) as holding:
                assert holding.keeps_state
                assert await client.get(locks.key(ID)) == token  # the same lease, no new take
                # the holder may start from the state the lock was kept with (no database
                # read); what it settles is its own to say
                assert holding.kept == make(version=1, offset=10)
                assert holding.settled is None
                holding.settled = make(version=2, offset=20)
            assert locks.reused == 1
            await asyncio.sleep(0.15)
            assert await client.get(locks.key(ID)) == token  # idle for less than 0.3 s
            await until(lambda: not locks._leases, timeout=2)
            await until_gone(client, locks.key(ID))
            assert await cache.get(ID) == make(version=2, offset=20)
            assert not await locks.held_anywhere(ID)
        finally:
            await locks.stop()
            await client.aclose()

    run(main)


async def until_gone(client: Redis, key: str) -> None:
    async with asyncio.timeout(2):
        while await client.exists(key):
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("status", [UploadStatus.FINISHED, UploadStatus.TERMINATED, None], ids=str)
def test_a_lock_whose_upload_expects_no_more_bytes_goes_back_at_once(
    redis_url: str, prefix: str, status: UploadStatus | None
) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_url)
        cache = RedisStateCache(client, prefix=prefix)
        locks = RedisLocks(client, prefix=prefix, cache=cache, keep_seconds=30)
        try:
            async with locks.hold(ID) as holding:
                holding.settled = None if status is None else replace(make(), status=status)
            assert await client.exists(locks.key(ID)) == 0
            assert not locks._leases
        finally:
            await locks.stop()
            await client.aclose()

    run(main)


def test_a_kept_lock_goes_at_once_to_another_instance_that_asks_and_at_shutdown(
    redis_url: str, prefix: str
) -> None:
    async def main() -> None:
        async with instances(redis_url, prefix, keep_seconds=30) as (client, (one, two)):
            cache = RedisStateCache(client, prefix=prefix)
            one.cache = two.cache = cache
            async with one.hold(ID) as holding:
                holding.settled = make(version=4, offset=40)
            assert await two.held_anywhere(ID)  # kept by the other instance
            started = now()
            async with two.hold(ID) as holding:
                # well before the 3 s a holder gets to let go: no request was holding it
                assert now() - started < 1.0
                assert await cache.get(ID) == make(version=4, offset=40)
                holding.settled = make("q" * 16)  # another id: nothing kept of this one
            async with two.hold("k" * 16) as holding:
                holding.settled = make("k" * 16, version=1)
            assert await client.exists(two.key("k" * 16)) == 1
            await two.stop()  # shutdown gives kept locks back, with their states
            assert await client.exists(two.key("k" * 16)) == 0
            assert await cache.get("k" * 16) == make("k" * 16, version=1)

    run(main)


def test_lock_without_a_caching_cache_leaves_the_cache_to_the_holder(
    redis_url: str, prefix: str
) -> None:
    """With --cache-ttl 0 the cache is off: a release writes no state, and the holding says
    so (the service then skips the cache itself, which does nothing)."""

    async def main() -> None:
        client = Redis.from_url(redis_url)
        cache = RedisStateCache(client, ttl_seconds=0, prefix=prefix)
        locks = RedisLocks(client, prefix=prefix, cache=cache, keep_seconds=0)
        try:
            async with locks.hold(ID) as holding:
                assert not holding.keeps_state
                holding.settled = make(version=3, offset=30)
            assert await client.exists(cache.key(ID)) == 0
            assert await client.exists(locks.key(ID)) == 0
        finally:
            await locks.stop()
            await client.aclose()

    run(main)


def test_requests_that_take_a_kept_lock_read_nothing_from_the_database(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """An upload's requests in the process that keeps its lock start from the kept state: no
    other instance can have written the upload meanwhile. The database is read again only by
    a request that takes the lock from Redis (here: another instance's)."""
    from tusd_protocol.commands import Append, Body, Create
    from tusd_protocol.rules import Limits
    from tusd_py.core.service import UploadService
    from tusd_py.state.database import Database
    from tusd_py.state.migrations import upgrade
    from tusd_py.state.sql import Repository
    from tusd_storage import MemoryStore

    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(database_url)

    def body(data: bytes) -> Any:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        return receive

    async def main() -> None:
        database = Database(database_url)
        repository = Repository(database)
        reads: list[str] = []
        read = repository.get

        async def counted_read(upload_id: str) -> Upload | None:
            reads.append(upload_id)
            return await read(upload_id)

        repository.get = counted_read  # type: ignore[method-assign]
        store = MemoryStore()
        clients = [Redis.from_url(redis_url) for _ in range(2)]
        caches = [RedisStateCache(client, prefix=prefix) for client in clients]
        locks = [
            RedisLocks(client, prefix=prefix, cache=cache)
            for client, cache in zip(clients, caches, strict=True)
        ]
        one, two = (
            UploadService(store, repository, Limits(), cache, lock)
            for cache, lock in zip(caches, locks, strict=True)
        )
        try:
            for lock in locks:
                await lock.start()
            upload = await one.create(Create(length=30), body(b""), "/files/", frozenset())
            for offset in (0, 10):
                upload = await one.append(upload.id, Append(offset, Body(10)), body(b"x" * 10))
            assert upload.offset == 20
            assert reads == []
            assert locks[0].reused == 2
            # another instance asks: the kept lock goes to it, and it reads the database
            upload = await two.append(upload.id, Append(20, Body(10)), body(b"y" * 10))
            assert upload.status is UploadStatus.FINISHED
            assert reads == [upload.id]
            stored = b"".join([b async for b in store.read(upload.id, 0, 30)])
            assert stored == b"x" * 20 + b"y" * 10
            # a termination that takes a kept lock: what it committed is what stays (the
            # kept state is a starting point, never what goes back to the cache)
            upload = await one.create(Create(length=30), body(b""), "/files/", frozenset())
            await one.append(upload.id, Append(0, Body(10)), body(b"x" * 10))
            reused = locks[0].reused
            await one.terminate(upload.id)
            assert locks[0].reused == reused + 1
            for service in (one, two):
                with pytest.raises(UploadGone):
                    await service.head(upload.id)
            cached = await caches[1].get(upload.id)
            assert cached is not None and cached.status is UploadStatus.TERMINATED
        finally:
            for lock in locks:
                await lock.stop()
            for client in clients:
                await client.aclose()
            await database.close()

    run(main)


def test_concurrent_takes_and_releases_go_to_redis_in_pipelines(
    redis_url: str, prefix: str
) -> None:
    """100 requests take 100 uploads' locks at once: the takes (and then the releases) go in
    a few pipelines, not 100 round trips; each still holds its own lock alone."""

    async def main() -> None:
        client = Redis.from_url(redis_url)
        locks = RedisLocks(client, prefix=prefix, keep_seconds=0)
        other = Redis.from_url(redis_url)
        ids = [f"batch{n:011d}" for n in range(100)]
        entered = asyncio.Event()
        inside = 0

        async def request(upload_id: str) -> None:
            nonlocal inside
            async with locks.hold(upload_id):
                assert await other.get(locks.key(upload_id)) is not None
                inside += 1
                if inside == len(ids):
                    entered.set()
                await entered.wait()  # every lock is held at once

        try:
            await asyncio.wait_for(asyncio.gather(*(request(i) for i in ids)), 10)
            assert locks._takes.calls == len(ids) and locks._takes.batches < len(ids) / 5
            assert locks._gives.calls == len(ids) and locks._gives.batches < len(ids) / 5
            for upload_id in ids:
                assert not await other.exists(locks.key(upload_id))
        finally:
            await locks.stop()
            await client.aclose()
            await other.aclose()

    run(main)
