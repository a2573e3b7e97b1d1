"""pump_body: request body -> appender, with limits, disconnects and handover."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from typing import Any

import pytest

from tests.unit._async import run, until
from tusd_py.core.body import DRAIN_MAX, BodyResult, pump_body
from tusd_py.core.ports import HANDOVER, Holding, NullMeter
from tusd_py.state.local_locks import LocalLocks
from tusd_storage import MemoryStore

ID = "abcdefghijklmnop"
MiB = 1024 * 1024


def body_messages(chunks: Iterable[bytes], *, end: str = "complete") -> list[dict[str, Any]]:
    """ASGI messages for these chunks; end = complete | disconnect."""
    chunks = list(chunks)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if end == "complete":
        if messages:
            messages[-1]["more_body"] = False
        else:
            messages.append({"type": "http.request", "body": b"", "more_body": False})
    else:
        messages.append({"type": "http.disconnect"})
    return messages


class FakeReceive:
    """Hands out messages, then blocks forever (a client that stopped sending)."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = list(messages)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.messages:
            await asyncio.sleep(0)
            return self.messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def pump_into_memory(
    messages: list[dict[str, Any]],
    max_bytes: int | None = None,
    hasher: Any = None,
    offset: int = 0,
    prefix: bytes = b"",
) -> tuple[BodyResult, bytes, int]:
    store = MemoryStore()
    await store.create(ID, None)
    if prefix:
        appender = store.appender(ID, 0)
        await appender.write(prefix)
        await appender.close()
    appender = store.appender(ID, offset)
    result = await pump_body(FakeReceive(messages), appender, max_bytes, hasher, Holding(ID))
    stored = (await appender.close()).size
    return result, bytes(store.blobs[ID]), stored


def test_collects_every_chunk_into_the_appender() -> None:
    chunks = [b"hello", b" ", b"", b"world", b"!" * 1000]
    result, blob, stored = run(lambda: pump_into_memory(body_messages(chunks)))
    assert result == BodyResult(received=1011, complete=True, overrun=False)
    assert blob == b"".join(chunks)
    assert stored == 1011


def test_appends_at_the_appenders_offset() -> None:
    result, blob, _ = run(
        lambda: pump_into_memory(body_messages([b"def"]), offset=3, prefix=b"abc")
    )
    assert result.received == 3
    assert blob == b"abcdef"


def test_an_empty_body_is_complete() -> None:
    result, blob, _ = run(lambda: pump_into_memory(body_messages([])))
    assert result == BodyResult(0, complete=True)
    assert blob == b""


def test_a_final_message_with_bytes_is_counted() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd"},  # more_body defaults to False
    ]
    result, blob, _ = run(lambda: pump_into_memory(messages))
    assert result == BodyResult(4, complete=True)
    assert blob == b"abcd"


def test_hashes_what_it_stores() -> None:
    chunks = [b"a" * 100, b"b" * 7, b"c"]
    hasher = hashlib.sha256()
    run(lambda: pump_into_memory(body_messages(chunks), hasher=hasher))
    assert hasher.digest() == hashlib.sha256(b"".join(chunks)).digest()


def test_up_to_max_bytes_is_not_an_overrun() -> None:
    result, blob, _ = run(lambda: pump_into_memory(body_messages([b"abc", b"de"]), max_bytes=5))
    assert result == BodyResult(5, complete=True, overrun=False)
    assert blob == b"abcde"


def test_stops_at_max_bytes_with_overrun() -> None:
    hasher = hashlib.sha1()
    messages = body_messages([b"abc", b"def", b"ghi"])
    result, blob, stored = run(lambda: pump_into_memory(messages, max_bytes=5, hasher=hasher))
    assert result == BodyResult(3, complete=False, overrun=True)
    # nothing past the limit was stored, and the chunk that crossed it was not hashed either
    assert blob == b"abc"
    assert stored == 3
    assert hasher.digest() == hashlib.sha1(b"abc").digest()


def test_max_bytes_zero_refuses_the_first_byte() -> None:
    result, blob, _ = run(lambda: pump_into_memory(body_messages([b"x"]), max_bytes=0))
    assert result == BodyResult(0, complete=False, overrun=True)
    assert blob == b""


def test_disconnect_reports_an_incomplete_body_and_keeps_what_arrived() -> None:
    messages = body_messages([b"abc", b"def"], end="disconnect")
    result, blob, _ = run(lambda: pump_into_memory(messages))
    assert result == BodyResult(6, complete=False, overrun=False)
    assert blob == b"abcdef"


def test_disconnect_before_any_byte() -> None:
    result, _, _ = run(lambda: pump_into_memory([{"type": "http.disconnect"}]))
    assert result == BodyResult(0, complete=False)


def test_a_stop_request_still_takes_the_bytes_already_received() -> None:
    """PROTOCOL 7 and 23: a holder asked to let go keeps what reached the server."""

    async def main() -> tuple[BodyResult, bytes]:
        store = MemoryStore()
        await store.create(ID, None)
        holding = Holding(ID)
        holding.request_stop()
        receive = FakeReceive(body_messages([b"abc", b"def"], end="disconnect")[:2])
        result = await pump_body(receive, store.appender(ID, 0), None, None, holding)
        return result, bytes(store.blobs[ID])

    started = time.monotonic()
    result, stored = run(main)
    assert result == BodyResult(6, complete=False)
    assert stored == b"abcdef"
    # and it waits for nothing more than a moment
    assert time.monotonic() - started < 0.5 + DRAIN_MAX


def test_a_stop_request_with_the_whole_body_already_received_completes_it() -> None:
    async def main() -> BodyResult:
        store = MemoryStore()
        await store.create(ID, None)
        holding = Holding(ID)
        holding.request_stop()
        receive = FakeReceive(body_messages([b"abc"]))
        return await pump_body(receive, store.appender(ID, 0), None, None, holding)

    assert run(main) == BodyResult(3, complete=True)


def test_stops_on_handover_while_waiting_for_bytes() -> None:
    """A newcomer takes the upload while the client is silent: the pump returns what it has."""

    async def main() -> tuple[BodyResult, bytes, int]:
        store = MemoryStore()
        await store.create(ID, None)
        locks = LocalLocks(acquire_timeout=5)
        pumping = asyncio.Event()
        seen: list[BodyResult] = []

        class Receive(FakeReceive):
            async def __call__(self) -> dict[str, Any]:
                if not self.messages:
                    pumping.set()  # everything sent so far is in; now the client stalls
                return await super().__call__()

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                appender = store.appender(ID, 0)
                receive = Receive(body_messages([b"abc", b"defg"], end="disconnect")[:-1])
                seen.append(await pump_body(receive, appender, None, None, holding))
                await appender.close()  # the holder saves what it received

        task = asyncio.create_task(holder())
        await pumping.wait()
        async with locks.hold(ID):
            blob_for_newcomer = bytes(store.blobs[ID])
        await task
        return seen[0], blob_for_newcomer, task.cancelling()

    result, blob, cancelling = run(main)
    assert result == BodyResult(7, complete=False, overrun=False)
    assert blob == b"abcdefg"
    assert cancelling == 0


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(None, id="a-real-cancellation"),
        pytest.param(HANDOVER, id="the-marker-without-a-stop-request"),
    ],
)
def test_a_cancellation_that_is_no_handover_propagates(message: str | None) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.create(ID, None)
        holding = Holding(ID)  # this task holds it; nobody asked it to stop
        receive = FakeReceive([])

        async def pump() -> BodyResult:
            holding.task = asyncio.current_task()
            return await pump_body(receive, store.appender(ID, 0), None, None, holding)

        task = asyncio.create_task(pump())
        await until(lambda: receive.calls > 0)
        task.cancel(message)  # a shutdown; or the marker, but not from request_stop
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not holding.receiving

    run(main)


def test_receiving_flag_is_set_only_while_waiting() -> None:
    async def main() -> list[bool]:
        store = MemoryStore()
        await store.create(ID, None)
        holding = Holding(ID)
        flags: list[bool] = []

        class Appender:
            async def write(self, chunk: bytes) -> None:
                flags.append(holding.receiving)

        class Receive(FakeReceive):
            async def __call__(self) -> dict[str, Any]:
                flags.append(holding.receiving)
                return await super().__call__()

        await pump_body(Receive(body_messages([b"a", b"b"])), Appender(), None, None, holding)  # type: ignore[arg-type]
        flags.append(holding.receiving)
        return flags

    assert run(main) == [True, False, True, False, False]


class CountingMeter(NullMeter):
    def __init__(self) -> None:
        self.told: list[int] = []

    def bytes_received(self, count: int) -> None:
        self.told.append(count)


@pytest.mark.parametrize("end", ["complete", "disconnect"])
def test_bytes_received_are_told_to_the_meter_in_steps_and_at_the_end(end: str) -> None:
    """2.5 MiB in 64 KiB chunks: the meter hears of them at each MiB and once at the end (a
    counter update per chunk was most of a request's metric updates), all of them either way."""
    chunk = b"x" * (64 * 1024)
    meter = CountingMeter()

    async def main() -> BodyResult:
        store = MemoryStore()
        await store.create(ID, None)
        receive = FakeReceive(body_messages([chunk] * 40, end=end))
        return await pump_body(receive, store.appender(ID, 0), None, None, Holding(ID), meter)

    result = run(main)
    assert result.received == 40 * len(chunk)
    assert meter.told == [MiB, MiB, MiB // 2]


def test_the_meter_hears_of_bytes_received_before_an_overrun() -> None:
    meter = CountingMeter()

    async def main() -> BodyResult:
        store = MemoryStore()
        await store.create(ID, None)
        receive = FakeReceive(body_messages([b"abc", b"defg"]))
        return await pump_body(receive, store.appender(ID, 0), 5, None, Holding(ID), meter)

    assert run(main).overrun
    assert meter.told == [3]
