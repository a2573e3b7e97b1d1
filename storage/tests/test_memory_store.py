"""MemoryStore: the unit-test store behaves like the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_storage import Capability, MemoryStore, Source, StorageError

ID = "abcdefghijklmnop"


async def _read_all(store: MemoryStore, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([block async for block in store.read(upload_id, start, end)])


def read_all(store: MemoryStore, upload_id: str, start: int, end: int) -> bytes:
    return asyncio.run(_read_all(store, upload_id, start, end))


async def _append(store: MemoryStore, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
    appender = store.appender(upload_id, offset)
    for chunk in chunks:
        await appender.write(chunk)
    return (await appender.close()).size


def append(store: MemoryStore, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
    return asyncio.run(_append(store, upload_id, offset, chunks))


def new_store(*ids: str) -> MemoryStore:
    store = MemoryStore()
    for upload_id in ids or (ID,):
        asyncio.run(store.create(upload_id, None))
    return store


def test_declares_its_capabilities() -> None:
    assert MemoryStore.capabilities == {
        Capability.CONCATENATION,
        Capability.RANGE_READS,
        Capability.DEFERRED_LENGTH,
    }


def test_round_trip() -> None:
    store = new_store()
    assert append(store, ID, 0, [b"hello", b" ", b"world"]) == 11
    asyncio.run(store.finish(ID, 11))
    assert read_all(store, ID, 0, 11) == b"hello world"
    assert read_all(store, ID, 6, 11) == b"world"


def test_create_twice_fails() -> None:
    store = new_store()
    with pytest.raises(StorageError):
        asyncio.run(store.create(ID, 10))


def test_append_at_the_offset_overwrites_garbage_past_it() -> None:
    store = new_store()
    append(store, ID, 0, [b"01234GARBAGE"])
    assert append(store, ID, 5, [b"567"]) == 3
    asyncio.run(store.finish(ID, 8))
    assert read_all(store, ID, 0, 100) == b"01234567"


def test_finish_truncates_bytes_past_the_length() -> None:
    store = new_store()
    append(store, ID, 0, [b"abcdEXTRA"])
    asyncio.run(store.finish(ID, 4))
    assert bytes(store.blobs[ID]) == b"abcd"


def test_abort_keeps_nothing_it_must_not() -> None:
    store = new_store()

    async def abort() -> None:
        appender = store.appender(ID, 0)
        await appender.write(b"abc")
        await appender.abort()

    asyncio.run(abort())
    assert append(store, ID, 0, [b"x"]) == 1


def test_concatenate_copies_sources_in_order_with_repeats() -> None:
    a, b = "a" * 16, "b" * 16
    store = new_store(a, b, ID)
    append(store, a, 0, [b"first-junk"])
    append(store, b, 0, [b"second-"])
    asyncio.run(store.concatenate(ID, [Source(b, 7), Source(a, 6), Source(b, 7)]))
    assert read_all(store, ID, 0, 100) == b"second-first-second-"


def test_concatenate_replaces_what_the_target_held() -> None:
    a = "a" * 16
    store = new_store(a, ID)
    append(store, a, 0, [b"xy"])
    append(store, ID, 0, [b"old"])
    asyncio.run(store.concatenate(ID, [Source(a, 2)]))
    assert bytes(store.blobs[ID]) == b"xy"


def test_concatenate_of_a_missing_source_raises_storage_error() -> None:
    store = new_store()
    with pytest.raises(StorageError):
        asyncio.run(store.concatenate(ID, [Source("missingmissingmi", 1)]))


def test_delete_is_idempotent() -> None:
    store = new_store()
    asyncio.run(store.delete(ID))
    asyncio.run(store.delete(ID))
    assert ID not in store.blobs


def test_read_of_a_missing_upload_raises_storage_error() -> None:
    with pytest.raises(StorageError):
        read_all(MemoryStore(), ID, 0, 1)


def test_appender_of_a_missing_upload_raises_storage_error() -> None:
    with pytest.raises(StorageError):
        MemoryStore().appender(ID, 0)


def test_finish_of_a_missing_upload_raises_storage_error() -> None:
    with pytest.raises(StorageError):
        asyncio.run(MemoryStore().finish(ID, 0))


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_round_trip_with_random_chunkings(data: bytes, cuts: list[int]) -> None:
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    store = new_store()
    # every other cut starts a new request at the committed offset
    offset = 0
    for index in range(len(points) - 1):
        chunk = data[points[index] : points[index + 1]]
        offset += append(store, ID, offset, [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]])
    assert offset == len(data)
    asyncio.run(store.finish(ID, len(data)))
    assert read_all(store, ID, 0, len(data)) == data
