"""The S3 store's buffer budget: the pool never hands out more than its budget, serves
waiters in turn, lets a waiter that gives up take nothing with it, ends waits at their
deadline; and S3 appenders sharing a small budget all finish (no deadlock), with their
bytes intact. (The store against real S3 servers: tests/integration/test_s3_budget.py.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tusd_protocol.errors import ProtocolError, ServiceUnavailable
from tusd_storage import Layout, StorageError
from tusd_storage.buffers import GRAIN, Buffer, BufferPool, BufferWaitTimeout, rounded
from tusd_storage.s3 import S3Config, S3Store

MiB = 1024 * 1024
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# --- the pool ---------------------------------------------------------------------------


def test_sizes_are_rounded_up_to_the_grain() -> None:
    assert rounded(1) == GRAIN
    assert rounded(GRAIN) == GRAIN
    assert rounded(GRAIN + 1) == 2 * GRAIN
    assert rounded(2 * MiB) == 2 * MiB


def test_a_buffer_is_writable_memory_of_its_size() -> None:
    async def main() -> None:
        pool = BufferPool(4 * MiB)
        buffer = await pool.take(3 * MiB + 1)
        assert buffer.size == len(buffer.view) == rounded(3 * MiB + 1)
        buffer.view[:5] = b"hello"
        buffer.view[-5:] = b"world"
        assert bytes(buffer.view[:5]) + bytes(buffer.view[-5:]) == b"helloworld"
        assert pool.used == buffer.size
        pool.give(buffer)
        pool.clear()
        assert pool.used == 0

    run(main())


def test_the_budget_is_never_exceeded_under_concurrency() -> None:
    budget = 8 * MiB

    async def main() -> None:
        pool = BufferPool(budget, wait_timeout=30)
        rng = random.Random(7)
        over: list[int] = []

        async def worker() -> None:
            for _ in range(20):
                buffer = await pool.take(rng.randint(1, 3 * MiB))
                if pool.used > budget:
                    over.append(pool.used)
                await asyncio.sleep(rng.random() / 1000)
                pool.give(buffer)

        await asyncio.gather(*(worker() for _ in range(40)))
        assert not over
        assert 0 < pool.peak <= budget
        assert pool.waiting == 0
        assert pool.used == pool.idle  # only idle buffers are left
        pool.clear()
        assert pool.used == 0

    run(main())


def test_waiters_are_served_in_the_order_they_came() -> None:
    async def main() -> None:
        pool = BufferPool(2 * MiB)
        held = [await pool.take(MiB), await pool.take(MiB)]
        served: list[int] = []

        async def waiter(n: int) -> None:
            buffer = await pool.take(MiB)
            served.append(n)
            await asyncio.sleep(0)
            pool.give(buffer)

        tasks = []
        for n in range(6):
            tasks.append(asyncio.create_task(waiter(n)))
            await asyncio.sleep(0)  # each one queued before the next
        assert pool.waiting == 6
        for buffer in held:
            pool.give(buffer)
        await asyncio.gather(*tasks)
        assert served == list(range(6))

    run(main())


def test_a_large_waiter_first_in_line_is_not_passed_by_smaller_ones() -> None:
    async def main() -> None:
        pool = BufferPool(4 * MiB)
        small = await pool.take(MiB)
        big_task = asyncio.create_task(pool.take(4 * MiB))
        await until(lambda: pool.waiting == 1)
        # room for a small one, but the big one waits first: neither try_take nor take passes
        assert pool.try_take(MiB) is None
        small_task = asyncio.create_task(pool.take(MiB))
        await until(lambda: pool.waiting == 2)
        pool.give(small)
        big = await big_task
        assert not small_task.done()
        pool.give(big)
        pool.give(await small_task)

    run(main())


def test_try_take_never_waits_and_never_passes_a_waiter() -> None:
    async def main() -> None:
        pool = BufferPool(2 * MiB)
        first = pool.try_take(2 * MiB)
        assert first is not None
        assert pool.try_take(GRAIN) is None  # nothing left: None at once
        waiter = asyncio.create_task(pool.take(MiB))
        await until(lambda: pool.waiting == 1)
        pool.give(first)
        assert (await waiter) is first  # up to twice the size asked for is handed over

    run(main())


def test_a_buffer_given_back_goes_to_the_waiter_that_fits_it() -> None:
    async def main() -> None:
        pool = BufferPool(2 * MiB)
        held = await pool.take(2 * MiB)
        waiter = asyncio.create_task(pool.take(2 * MiB))
        await until(lambda: pool.waiting == 1)
        pool.give(held)
        assert await waiter is held  # handed over: not unmapped and mapped again
        assert pool.used == 2 * MiB

    run(main())


def test_idle_buffers_make_room_for_a_waiter_of_another_size() -> None:
    async def main() -> None:
        pool = BufferPool(4 * MiB, keep_idle=4 * MiB)
        a, b = await pool.take(2 * MiB), await pool.take(2 * MiB)
        pool.give(a)
        pool.give(b)
        assert pool.idle == 4 * MiB and pool.used == 4 * MiB
        c = await pool.take(3 * MiB)  # does not fit beside the idle ones: they go
        assert c.size == 3 * MiB
        assert pool.used <= 4 * MiB
        pool.give(c)

    run(main())


def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_one_in() -> None:
    async def main() -> None:
        pool = BufferPool(2 * MiB)
        small = await pool.take(MiB)
        big = asyncio.create_task(pool.take(2 * MiB))  # first in line, does not fit
        await until(lambda: pool.waiting == 1)
        behind = asyncio.create_task(pool.take(MiB))  # would fit, waits its turn
        await until(lambda: pool.waiting == 2)
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        got = await asyncio.wait_for(behind, 1)  # the line moved on
        assert pool.waiting == 0
        assert pool.used == small.size + got.size == 2 * MiB
        pool.give(small)
        pool.give(got)

    run(main())


def test_a_waiter_cancelled_just_after_it_was_served_gives_the_buffer_back() -> None:
    async def main() -> None:
        pool = BufferPool(MiB, keep_idle=0)
        held = await pool.take(MiB)
        waiter = asyncio.create_task(pool.take(MiB))
        await until(lambda: pool.waiting == 1)
        pool.give(held)  # handed to the waiter, which has not run yet
        waiter.cancel()  # ... and is cancelled before it does
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.used == 0  # the buffer came back and was freed
        assert (await pool.take(MiB)).size == MiB

    run(main())


def test_a_wait_past_its_deadline_is_503_with_retry_after() -> None:
    async def main() -> None:
        pool = BufferPool(MiB, wait_timeout=0.05)
        held = await pool.take(MiB)
        started = time.monotonic()
        with pytest.raises(BufferWaitTimeout) as caught:
            await pool.take(MiB)
        assert 0.04 < time.monotonic() - started < 2
        error = caught.value
        assert isinstance(error, ServiceUnavailable) and isinstance(error, ProtocolError)
        assert isinstance(error, StorageError)  # what catches store failures catches it too
        assert error.status == 503 and error.code == "ERR_UNAVAILABLE"
        assert int(error.headers["Retry-After"]) > 0
        assert "none came free within 0.05 s" in error.message
        assert pool.waiting == 0 and pool.used == MiB  # it took nothing
        with pytest.raises(BufferWaitTimeout):
            await pool.take(GRAIN, timeout=0)  # 0: at once
        pool.give(held)

    run(main())


def test_a_buffer_larger_than_the_budget_waits_for_all_of_it() -> None:
    async def main() -> None:
        pool = BufferPool(2 * MiB, keep_idle=0)
        small = await pool.take(MiB)
        huge = asyncio.create_task(pool.take(5 * MiB))
        await until(lambda: pool.waiting == 1)
        pool.give(small)
        buffer = await huge
        assert buffer.size == 5 * MiB and buffer.charge == 2 * MiB
        assert pool.used == 2 * MiB
        pool.give(buffer)
        assert pool.used == 0

    run(main())


# --- S3 appenders sharing one small budget --------------------------------------------


@dataclass
class _Response:
    data: bytes
    position: int = 0

    def readinto(self, view: memoryview) -> int:
        block = self.data[self.position : self.position + len(view)]
        view[: len(block)] = block
        self.position += len(block)
        return len(block)

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


@dataclass
class _Etag:
    etag: str


class FakeS3:
    """The calls of the minio client that S3Appender makes, in memory, a little slow."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        self.objects: dict[str, bytes] = {}
        self.parts: dict[tuple[str, int], bytes] = {}
        self.lock = threading.Lock()

    def _check(self, body: Any, headers: dict[str, str]) -> bytes:
        data = bytes(body)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        assert headers["Content-MD5"] == md5, "the body changed under its checksum"
        time.sleep(self.delay)
        return data

    def _upload_part(
        self, bucket: str, key: str, body: Any, headers: Any, upload_id: str, number: int
    ) -> str:
        data = self._check(body, headers)
        with self.lock:
            self.parts[upload_id, number] = data
        return hashlib.md5(data).hexdigest()

    def _put_object(self, bucket: str, key: str, body: Any, headers: Any) -> _Etag:
        data = self._check(body, headers)
        with self.lock:
            self.objects[key] = data
        return _Etag(hashlib.md5(data).hexdigest())

    def get_object(self, bucket: str, key: str, offset: int = 0, length: int = 0) -> _Response:
        with self.lock:
            data = self.objects[key]
        return _Response(data[offset : offset + length])


def fake_store(budget: int, part_size: int = 5 * MiB, **options: Any) -> tuple[S3Store, FakeS3]:
    fake = FakeS3()
    config = S3Config(
        bucket="b", part_size=part_size, max_buffer_memory=budget, secure=False, **options
    )
    return S3Store(config, client=fake), fake  # type: ignore[arg-type]


async def send(
    store: S3Store, upload_id: str, data: bytes, chunk: int, layout: Layout | None = None
) -> Layout:
    """Send `data` as one request from offset 0 (or the layout's), in chunks; the new layout."""
    layout = layout or Layout(key=upload_id, handle=f"h-{upload_id}", part_size=5 * MiB)
    appender = store.appender(upload_id, 0, layout, len(data))
    try:
        for start in range(0, len(data), chunk):
            await appender.write(data[start : start + chunk])
        stored = await appender.close()
    except BaseException:
        await appender.abort()
        raise
    assert stored.size == len(data)
    return stored.layout


def assembled(fake: FakeS3, upload_id: str) -> bytes:
    numbers = sorted(n for (handle, n) in fake.parts if handle == f"h-{upload_id}")
    assert numbers == list(range(1, len(numbers) + 1))
    return b"".join(fake.parts[f"h-{upload_id}", n] for n in numbers)


def test_many_appenders_on_a_budget_of_two_parts_all_finish_byte_exact() -> None:
    """Each request would like 1 part filling + 4 in flight; the budget holds 2 parts. No
    request may wait for the budget while it holds some of it, or they all would."""
    part = 5 * MiB

    async def main() -> None:
        store, fake = fake_store(2 * part, max_concurrent_parts=4)
        uploads = {f"u{n}": random.randbytes(3 * part + n * 4099) for n in range(12)}
        await asyncio.wait_for(
            asyncio.gather(
                *(send(store, name, data, 256 * 1024) for name, data in uploads.items())
            ),
            60,
        )
        for name, data in uploads.items():
            assert assembled(fake, name) == data
        assert store.buffers.peak <= 2 * part
        assert store.buffers.used == store.buffers.idle  # every buffer came back
        await store.close()

    run(main())


def test_a_request_that_has_begun_never_waits_in_line_again() -> None:
    """A request waits for the budget only for its first buffer; later parts reuse the
    buffers of its own parts once sent. So it is never stuck mid-body behind requests
    that came later (and never times out with parts sent but not recorded)."""
    part = 5 * MiB

    async def main() -> None:
        store, fake = fake_store(part)
        big = random.randbytes(4 * part)
        layout = Layout(key="big", handle="h-big", part_size=part)
        appender = store.appender("big", 0, layout, len(big))
        await appender.write(big[:MiB])  # holds the only buffer
        later = [
            asyncio.create_task(send(store, f"s{n}", random.randbytes(MiB), MiB)) for n in range(3)
        ]
        await until(lambda: store.buffers.waiting == 3)
        for start in range(MiB, len(big), MiB):
            await asyncio.wait_for(appender.write(big[start : start + MiB]), 10)
        await asyncio.wait_for(appender.close(), 10)
        await asyncio.wait_for(asyncio.gather(*later), 10)
        assert assembled(fake, "big") == big
        # it went on first: its four parts reached S3 before any of the later requests'
        order = [handle for handle, _ in fake.parts]
        assert order[:4] == ["h-big"] * 4, order

    run(main())


def test_a_small_upload_takes_a_buffer_of_its_own_size_not_a_part() -> None:
    async def main() -> None:
        store, fake = fake_store(8 * MiB, part_size=8 * MiB)
        data = random.randbytes(2 * MiB)
        sizes: list[int] = []
        take = store.buffers.take

        async def spy(size: int, timeout: float | None = None) -> Buffer:
            buffer = await take(size, timeout)
            sizes.append(buffer.size)
            return buffer

        store.buffers.take = spy  # type: ignore[method-assign]
        layout = Layout(key="s", handle="h-s", part_size=8 * MiB)
        await send(store, "s", data, 64 * 1024, layout)
        assert sizes == [2 * MiB]
        assert assembled(fake, "s") == data

    run(main())


def test_fragments_are_folded_and_merged_inside_the_budget() -> None:
    """Nine small requests (nine fragments: the ninth merges them), then the part they
    complete: every buffer within the budget, the bytes in order."""

    async def main() -> None:
        part = 5 * MiB
        store, fake = fake_store(part)
        data = random.randbytes(part + 1000)
        layout = Layout(key="f", handle="h-f", part_size=part)
        offset = 0
        for size in [100_000] * 9:
            appender = store.appender("f", offset, layout, len(data))
            await appender.write(data[offset : offset + size])
            stored = await appender.close()
            layout, offset = stored.layout, offset + size
        # the ninth was merged with the eight before it, in the ninth request's buffer
        assert [(f.offset, f.size) for f in layout.fragments] == [(0, 900_000)]
        appender = store.appender("f", offset, layout, len(data))
        await appender.write(data[offset:])
        stored = await appender.close()
        assert [p.size for p in stored.new_parts] == [part, 1000]
        assert assembled(fake, "f") == data
        assert store.buffers.peak <= part

    run(main())


def test_a_request_that_times_out_waiting_stores_nothing_and_holds_nothing() -> None:
    async def main() -> None:
        store, _ = fake_store(5 * MiB, buffer_wait_timeout=0.05)
        blocker = await store.buffers.take(5 * MiB)
        layout = Layout(key="t", handle="h-t", part_size=5 * MiB)
        appender = store.appender("t", 0, layout, MiB)
        with pytest.raises(BufferWaitTimeout):
            await appender.write(b"x" * 1000)
        await appender.abort()
        assert store.buffers.used == 5 * MiB  # the blocker's only
        store.buffers.give(blocker)

    run(main())


def test_an_aborted_request_gives_every_buffer_back() -> None:
    async def main() -> None:
        store, _ = fake_store(20 * MiB)
        layout = Layout(key="a", handle="h-a", part_size=5 * MiB)
        appender = store.appender("a", 0, layout, 30 * MiB)
        await appender.write(random.randbytes(12 * MiB))  # two parts in flight, one filling
        await appender.abort()
        assert store.buffers.used == store.buffers.idle

    run(main())
