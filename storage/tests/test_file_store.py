"""FileStore: bytes land where the offset says, nothing past the length survives, and memory
does not grow with the upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tusd_storage import (
    Capability,
    FileIoMode,
    FileStore,
    FsyncPolicy,
    LiveUploads,
    Source,
    StorageError,
)
from tusd_storage import file as file_module

ID = "abcdefghijklmnop"
MiB = 1024 * 1024


async def _read_all(store: FileStore, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([block async for block in store.read(upload_id, start, end)])


def read_all(store: FileStore, upload_id: str, start: int, end: int) -> bytes:
    return asyncio.run(_read_all(store, upload_id, start, end))


async def _append(store: FileStore, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
    appender = store.appender(upload_id, offset)
    for chunk in chunks:
        await appender.write(chunk)
    return (await appender.close()).size


def append(store: FileStore, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
    return asyncio.run(_append(store, upload_id, offset, chunks))


def create(store: FileStore, upload_id: str = ID, length: int | None = None) -> None:
    asyncio.run(store.create(upload_id, length))


@pytest.fixture(
    params=[
        (FsyncPolicy.ALWAYS, FileIoMode.INLINE),
        (FsyncPolicy.ALWAYS, FileIoMode.THREADS),
        (FsyncPolicy.NEVER, FileIoMode.INLINE),
        (FsyncPolicy.NEVER, FileIoMode.THREADS),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def store(tmp_path: Path, request: pytest.FixtureRequest) -> FileStore:
    fsync, file_io = request.param
    return FileStore(tmp_path / "uploads", fsync=fsync, file_io=file_io)


def test_declares_its_capabilities() -> None:
    assert FileStore.capabilities == {
        Capability.CONCATENATION,
        Capability.RANGE_READS,
        Capability.DEFERRED_LENGTH,
    }


def test_creates_its_directory(tmp_path: Path) -> None:
    FileStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_create_makes_an_empty_file(store: FileStore) -> None:
    create(store, ID, 10)
    assert store.path(ID).read_bytes() == b""


def test_create_twice_fails(store: FileStore) -> None:
    create(store)
    with pytest.raises(OSError):
        create(store)


def test_round_trip(store: FileStore) -> None:
    create(store, ID, 11)
    assert append(store, ID, 0, [b"hello", b" ", b"world"]) == 11
    asyncio.run(store.finish(ID, 11))
    assert read_all(store, ID, 0, 11) == b"hello world"


def test_empty_chunks_are_ignored(store: FileStore) -> None:
    create(store)
    assert append(store, ID, 0, [b"", b"ab", b"", b"c"]) == 3
    assert read_all(store, ID, 0, 3) == b"abc"


def test_an_appender_without_writes_stores_nothing(store: FileStore) -> None:
    create(store)
    assert append(store, ID, 0, []) == 0
    assert store.path(ID).stat().st_size == 0


def test_appends_continue_at_the_offset(store: FileStore) -> None:
    create(store)
    append(store, ID, 0, [b"abc"])
    append(store, ID, 3, [b"def"])
    assert read_all(store, ID, 0, 6) == b"abcdef"


def test_append_at_the_offset_overwrites_garbage_past_it(store: FileStore) -> None:
    create(store, ID, 8)
    append(store, ID, 0, [b"01234"])
    # a request that was discarded (checksum mismatch) left bytes past the committed offset
    append(store, ID, 5, [b"GARBAGE!"])
    assert append(store, ID, 5, [b"567"]) == 3
    assert read_all(store, ID, 0, 8) == b"01234567"
    asyncio.run(store.finish(ID, 8))
    assert store.path(ID).read_bytes() == b"01234567"


def test_finish_truncates_bytes_past_the_length(store: FileStore) -> None:
    create(store, ID, 4)
    append(store, ID, 0, [b"abcdEXTRA"])
    asyncio.run(store.finish(ID, 4))
    assert store.path(ID).stat().st_size == 4
    assert read_all(store, ID, 0, 4) == b"abcd"


def test_finish_of_an_exact_file_keeps_it(store: FileStore) -> None:
    create(store, ID, 4)
    append(store, ID, 0, [b"abcd"])
    asyncio.run(store.finish(ID, 4))
    assert store.path(ID).read_bytes() == b"abcd"


def test_finish_of_an_empty_upload(store: FileStore) -> None:
    create(store, ID, 0)
    asyncio.run(store.finish(ID, 0))
    assert store.path(ID).read_bytes() == b""
    assert read_all(store, ID, 0, 0) == b""


def test_range_reads(store: FileStore) -> None:
    data = bytes(range(256)) * 10
    create(store, ID, len(data))
    append(store, ID, 0, [data])
    assert read_all(store, ID, 10, 20) == data[10:20]
    assert read_all(store, ID, 2550, 2560) == data[2550:]
    assert read_all(store, ID, 5, 5) == b""


def test_reads_stream_in_blocks(store: FileStore) -> None:
    data = os.urandom(3 * file_module.READ_BLOCK + 17)
    create(store, ID, len(data))
    append(store, ID, 0, [data])

    async def blocks() -> list[bytes]:
        return [block async for block in store.read(ID, 0, len(data))]

    result = asyncio.run(blocks())
    assert b"".join(result) == data
    assert max(map(len, result)) <= file_module.READ_BLOCK


def test_read_of_a_missing_upload_raises_storage_error(store: FileStore) -> None:
    with pytest.raises(StorageError):
        read_all(store, "nosuchuploadxxxx", 0, 10)


def test_read_past_the_stored_bytes_raises_storage_error(store: FileStore) -> None:
    create(store)
    append(store, ID, 0, [b"abc"])
    with pytest.raises(StorageError):
        read_all(store, ID, 0, 10)


def test_append_to_a_missing_upload_raises_storage_error(store: FileStore) -> None:
    with pytest.raises(StorageError):
        append(store, "nosuchuploadxxxx", 0, [b"abc"])


@pytest.mark.parametrize("upload_id", ["", ".", "..", "a/b", "../escape"])
def test_invalid_ids_are_refused(store: FileStore, upload_id: str) -> None:
    with pytest.raises(StorageError):
        store.path(upload_id)


def test_concatenate_copies_sources_in_order(store: FileStore) -> None:
    for upload_id, data in [("aaaaaaaaaaaaaaaa", b"first-"), ("bbbbbbbbbbbbbbbb", b"second-")]:
        create(store, upload_id, len(data))
        append(store, upload_id, 0, [data])
    create(store, ID, None)
    sources = [
        Source("bbbbbbbbbbbbbbbb", 7),
        Source("aaaaaaaaaaaaaaaa", 6),
        Source("bbbbbbbbbbbbbbbb", 7),
    ]
    asyncio.run(store.concatenate(ID, sources))
    assert read_all(store, ID, 0, 20) == b"second-first-second-"
    assert store.path(ID).stat().st_size == 20


def test_concatenate_copies_only_the_recorded_length(store: FileStore) -> None:
    create(store, "aaaaaaaaaaaaaaaa")
    append(store, "aaaaaaaaaaaaaaaa", 0, [b"keepGARBAGE"])
    create(store, ID)
    asyncio.run(
        store.concatenate(ID, [Source("aaaaaaaaaaaaaaaa", 4), Source("aaaaaaaaaaaaaaaa", 4)])
    )
    assert store.path(ID).read_bytes() == b"keepkeep"


def test_concatenate_replaces_what_the_target_held(store: FileStore) -> None:
    create(store, "aaaaaaaaaaaaaaaa")
    append(store, "aaaaaaaaaaaaaaaa", 0, [b"xy"])
    create(store, ID)
    append(store, ID, 0, [b"old bytes of a failed attempt"])
    asyncio.run(store.concatenate(ID, [Source("aaaaaaaaaaaaaaaa", 2)]))
    assert store.path(ID).read_bytes() == b"xy"


def test_concatenate_of_large_sources(store: FileStore) -> None:
    one, two = os.urandom(3 * MiB + 1), os.urandom(MiB - 1)
    create(store, "aaaaaaaaaaaaaaaa")
    append(store, "aaaaaaaaaaaaaaaa", 0, [one])
    create(store, "bbbbbbbbbbbbbbbb")
    append(store, "bbbbbbbbbbbbbbbb", 0, [two])
    create(store, ID)
    asyncio.run(
        store.concatenate(
            ID, [Source("aaaaaaaaaaaaaaaa", len(one)), Source("bbbbbbbbbbbbbbbb", len(two))]
        )
    )
    assert store.path(ID).read_bytes() == one + two


def test_concatenate_of_a_short_source_raises_storage_error(store: FileStore) -> None:
    create(store, "aaaaaaaaaaaaaaaa")
    append(store, "aaaaaaaaaaaaaaaa", 0, [b"abc"])
    create(store, ID)
    with pytest.raises(StorageError):
        asyncio.run(store.concatenate(ID, [Source("aaaaaaaaaaaaaaaa", 10)]))


def test_delete_removes_the_file_and_is_idempotent(store: FileStore) -> None:
    create(store)
    append(store, ID, 0, [b"abc"])
    asyncio.run(store.delete(ID))
    assert not store.path(ID).exists()
    asyncio.run(store.delete(ID))
    asyncio.run(store.delete("neverexistedxxxx"))
    with pytest.raises(StorageError):
        read_all(store, ID, 0, 3)


# --- garbage collection ----------------------------------------------------------------


class FakeDatabase:
    """LiveUploads over a set of kept ids; records every question `kept` was asked."""

    def __init__(self, kept: set[str]) -> None:
        self.kept_ids = set(kept)
        self.questions: list[list[str]] = []

    async def kept(self, upload_ids: list[str]) -> set[str]:
        self.questions.append(list(upload_ids))
        return self.kept_ids & set(upload_ids)

    async def nothing(self, upload_ids: list[str]) -> set[str]:
        raise AssertionError("the file store asks only which uploads are kept")

    def live(self) -> LiveUploads:
        return LiveUploads(handles=self.nothing, receiving=self.nothing, kept=self.kept)


def age(path: Path, seconds: float) -> None:
    """Set the file's modification time `seconds` into the past."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def collect(store: FileStore, database: FakeDatabase, min_age: float = 60) -> int:
    return asyncio.run(store.collect_garbage(database.live(), timedelta(seconds=min_age)))


def test_gc_removes_old_files_the_database_does_not_keep(store: FileStore) -> None:
    kept, orphan, young = "keptkeptkeptkept", "orphanorphan0000", "youngyoungyoung0"
    for upload_id in (kept, orphan, young):
        create(store, upload_id)
    append(store, kept, 0, [b"abc"])
    age(store.path(kept), 3600)
    age(store.path(orphan), 3600)
    age(store.path(young), 10)  # perhaps a creation whose row is being written right now
    database = FakeDatabase({kept})

    assert collect(store, database) == 1

    assert not store.path(orphan).exists()
    assert store.path(kept).read_bytes() == b"abc"
    assert store.path(young).exists()
    assert sorted(id for question in database.questions for id in question) == [kept, orphan]


def test_gc_leaves_names_that_are_not_upload_ids(store: FileStore) -> None:
    strangers = [".hiddenhiddenhidden", "short", "has.a.dot.in.the.name", "x" * 65]
    for name in strangers:
        (store.directory / name).write_bytes(b"not ours")
    (store.directory / "directorydirectory").mkdir()
    target = store.directory.parent / "target"
    target.write_bytes(b"elsewhere")
    (store.directory / "symlinksymlinksym").symlink_to(target)
    for path in store.directory.iterdir():
        age(path, 3600)
    database = FakeDatabase(set())

    assert collect(store, database) == 0

    assert all((store.directory / name).exists() for name in strangers)
    assert (store.directory / "directorydirectory").is_dir()
    assert target.read_bytes() == b"elsewhere"
    assert database.questions in ([], [[]])


def test_gc_asks_the_database_in_batches(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_module, "GC_BATCH", 3)
    ids = [f"upload{index:010d}" for index in range(8)]
    for upload_id in ids:
        create(store, upload_id)
        age(store.path(upload_id), 3600)
    database = FakeDatabase({ids[1], ids[6]})

    assert collect(store, database) == 6

    assert [len(question) for question in database.questions] == [3, 3, 2]
    assert sorted(id for question in database.questions for id in question) == ids
    assert sorted(path.name for path in store.directory.iterdir()) == [ids[1], ids[6]]


def test_gc_does_not_count_a_file_removed_meanwhile(store: FileStore) -> None:
    gone, orphan = "deletedmeanwhile", "orphanorphan0000"
    for upload_id in (gone, orphan):
        create(store, upload_id)
        age(store.path(upload_id), 3600)

    class DeletingDatabase(FakeDatabase):
        async def kept(self, upload_ids: list[str]) -> set[str]:
            await store.delete(gone)  # a DELETE or the expiry sweeper, while gc asks
            return await super().kept(upload_ids)

    assert collect(store, DeletingDatabase(set())) == 1
    assert list(store.directory.iterdir()) == []


def test_gc_of_an_empty_directory(store: FileStore) -> None:
    assert collect(store, FakeDatabase(set())) == 0


def test_abort_releases_the_file(store: FileStore) -> None:
    create(store)

    async def write_and_abort() -> None:
        appender = store.appender(ID, 0)
        await appender.write(b"x" * (file_module.BATCH_BYTES + 1))  # submits a batch
        await appender.write(b"tail")
        await appender.abort()

    asyncio.run(write_and_abort())
    # whatever was written is past the committed offset (0): the next append overwrites it
    append(store, ID, 0, [b"fresh"])
    asyncio.run(store.finish(ID, 5))
    assert store.path(ID).read_bytes() == b"fresh"


def test_many_small_chunks_cross_the_iovec_limit(store: FileStore) -> None:
    chunks = [bytes([i % 256]) * 3 for i in range(3 * file_module.MAX_IOVECS + 5)]
    create(store)
    assert append(store, ID, 0, chunks) == 3 * len(chunks)
    assert store.path(ID).read_bytes() == b"".join(chunks)


def test_short_writes_resume_where_they_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_pwritev = os.pwritev

    def short_pwritev(fd: int, buffers: Sequence[memoryview], position: int) -> int:
        # write at most 5 bytes per call, splitting buffers in the middle
        first = bytes(buffers[0])[:5]
        return real_pwritev(fd, [first], position)

    monkeypatch.setattr(file_module.os, "pwritev", short_pwritev)
    store = FileStore(tmp_path, fsync=FsyncPolicy.NEVER)
    create(store)
    chunks = [b"abcdefghijkl", b"mn", b"opqrstuvwxyz0123"]
    assert append(store, ID, 0, chunks) == 30
    assert store.path(ID).read_bytes() == b"".join(chunks)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    size=st.integers(min_value=0, max_value=3 * MiB),
    seed=st.integers(min_value=0, max_value=2**32),
    requests=st.lists(
        st.lists(st.integers(min_value=0, max_value=MiB + 7), max_size=6), max_size=5
    ),
)
def test_round_trip_with_random_chunkings(size: int, seed: int, requests: list[list[int]]) -> None:
    """Any split of the bytes into requests and chunks stores exactly the bytes."""
    data = random.Random(seed).randbytes(size)
    # each request carries the chunk sizes it writes; the last request takes what is left
    with tempfile.TemporaryDirectory() as directory:
        store = FileStore(directory, fsync=FsyncPolicy.NEVER)
        create(store, ID, len(data))
        offset = 0
        for sizes in [*requests, [len(data)]]:
            chunks = []
            position = offset
            for size in sizes:
                chunk = data[position : position + size]
                chunks.append(chunk)
                position += len(chunk)
            stored = append(store, ID, offset, chunks)
            assert stored == position - offset
            offset = position
        assert offset == len(data)
        asyncio.run(store.finish(ID, len(data)))
        assert read_all(store, ID, 0, len(data)) == data
        if data:
            start = len(data) // 3
            assert read_all(store, ID, start, len(data)) == data[start:]


def test_memory_does_not_grow_with_upload_size(tmp_path: Path) -> None:
    """64 MiB in 64 KiB chunks: peak Python allocations stay far below the upload size."""
    store = FileStore(tmp_path, fsync=FsyncPolicy.NEVER)
    size, chunk_size = 64 * MiB, 64 * 1024
    create(store, ID, size)
    expected = hashlib.sha256()

    async def upload() -> int:
        appender = store.appender(ID, 0)
        for index in range(size // chunk_size):
            # a fresh chunk each time, as from the network: nothing may keep them alive
            chunk = index.to_bytes(4, "big") * (chunk_size // 4)
            expected.update(chunk)
            await appender.write(chunk)
        return (await appender.close()).size

    tracemalloc.start()
    try:
        stored = asyncio.run(upload())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored == size
    assert peak < 8 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB for a 64 MiB upload"

    async def digest_of_stored() -> bytes:
        actual = hashlib.sha256()
        async for block in store.read(ID, 0, size):
            actual.update(block)
        return actual.digest()

    assert asyncio.run(digest_of_stored()) == expected.digest()
    assert store.path(ID).stat().st_size == size


# --- the write budget: bytes received and not yet written, per store ----------------------


def test_many_appenders_together_hold_at_most_the_write_budget(tmp_path: Path) -> None:
    """40 requests of 1 MiB in 64 KiB slices, each alone in the 1 MiB batch limit: without
    the budget they would hold 40 MiB at once; with 512 KiB, every byte still lands."""
    budget = 512 * 1024
    store = FileStore(tmp_path, FsyncPolicy.NEVER, write_memory=budget)
    bodies = {f"upload{n:012d}": random.Random(n).randbytes(MiB) for n in range(40)}

    async def main() -> None:
        for upload_id in bodies:
            await store.create(upload_id, MiB)

        async def send(upload_id: str) -> None:
            appender = store.appender(upload_id, 0)
            body = bodies[upload_id]
            for start in range(0, MiB, 64 * 1024):
                await appender.write(body[start : start + 64 * 1024])
                await asyncio.sleep(0)  # the other requests take their turns
            assert (await appender.close()).size == MiB

        await asyncio.wait_for(asyncio.gather(*(send(upload_id) for upload_id in bodies)), 60)

    asyncio.run(main())
    assert 0 < store.write_budget.peak <= budget
    assert store.write_budget.used == 0 and store.write_budget.waiting == 0
    for upload_id, body in bodies.items():
        assert (tmp_path / upload_id).read_bytes() == body


def test_an_aborted_appender_gives_its_batch_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path, FsyncPolicy.NEVER, write_memory=MiB)

    async def main() -> None:
        await store.create(ID, None)
        appender = store.appender(ID, 0)
        await appender.write(b"x" * 1000)
        assert store.write_budget.used == 1000
        await appender.abort()

    asyncio.run(main())
    assert store.write_budget.used == 0


def test_a_wait_for_the_write_budget_ends_with_503_at_its_deadline() -> None:
    from tusd_storage.buffers import BufferWaitTimeout, ByteBudget

    async def main() -> None:
        budget = ByteBudget(1000, wait_timeout=0.05)
        assert budget.try_take(800)
        with pytest.raises(BufferWaitTimeout) as refused:
            await budget.take(500)
        assert refused.value.headers["Retry-After"]
        assert budget.used == 800 and budget.waiting == 0
        budget.give(800)
        await budget.take(5000)  # more than the whole budget counts as all of it
        assert budget.used == 1000

    asyncio.run(main())


def test_a_slow_clients_bytes_reach_the_file_without_waiting_for_a_full_batch(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 1 KiB a second a 1 MiB batch would hold bytes in memory for 17 minutes; a batch
    whose first chunk is older than BATCH_MAX_AGE is written when the next chunk comes."""
    monkeypatch.setattr(file_module, "BATCH_MAX_AGE", 0.05)

    async def main() -> None:
        await store.create(ID, None)
        appender = store.appender(ID, 0)
        await appender.write(b"a" * 1024)
        await asyncio.sleep(0.06)
        await appender.write(b"b" * 1024)
        await asyncio.sleep(0.05)  # time for a write in a worker thread
        assert (store.directory / ID).read_bytes() == b"a" * 1024 + b"b" * 1024
        assert store.write_budget.used == 0  # nothing of it is held any more
        await appender.write(b"c" * 1024)  # young: it waits for more, or for close
        assert store.write_budget.used == 1024
        assert (await appender.close()).size == 3 * 1024

    asyncio.run(main())
