"""Where the file store's calls run: inline while the file system is fast, in threads while
it is slow, and back inline once it is fast again."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from tusd_storage import FileIoMode, FileStore, FsyncPolicy, file_calls
from tusd_storage import file as file_module
from tusd_storage.file_calls import (
    FLOOR,
    MAX_THREADS_FOR,
    RECENT_CALLS,
    SLOW_CALLS,
    STALL,
    THREADS_FOR,
    Lane,
)

MiB = 1024 * 1024
SLOW = FLOOR * 2  # slow for a call of no bytes, far below STALL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lane(mode: FileIoMode = FileIoMode.AUTO) -> tuple[Lane, Clock]:
    clock = Clock()
    return Lane("write", mode, clock), clock


def test_fast_calls_stay_inline() -> None:
    subject, _ = lane()
    for _ in range(100):
        subject.note(FLOOR / 2, 0)
        subject.note(0.004, MiB)  # 1 MiB in 4 ms: 260 MB/s, memory speed
    assert subject.inline()


def test_a_single_slow_call_is_forgiven_but_a_slow_spell_is_not() -> None:
    subject, _ = lane()
    for _ in range(SLOW_CALLS - 1):
        subject.note(SLOW, 0)
        for _ in range(3):
            subject.note(0.0, 0)
    assert subject.inline()  # scheduler noise: under SLOW_CALLS in the last RECENT_CALLS
    subject.note(SLOW, 0)
    assert not subject.inline()


def test_slow_calls_out_of_the_recent_window_do_not_add_up() -> None:
    subject, _ = lane()
    for _ in range(10):
        subject.note(SLOW, 0)
        for _ in range(RECENT_CALLS):
            subject.note(0.0, 0)
    assert subject.inline()


def test_one_stall_sends_the_lane_to_threads_at_once() -> None:
    subject, _ = lane()
    subject.note(STALL, 0)
    assert not subject.inline()


def test_the_lane_tries_inline_again_later_and_backs_off_while_still_slow() -> None:
    subject, clock = lane()
    subject.note(STALL, 0)
    clock.now += THREADS_FOR - 1
    assert not subject.inline()
    clock.now += 1
    assert subject.inline()  # a probe
    subject.note(STALL, 0)  # still slow: twice as long in threads
    clock.now += 2 * THREADS_FOR - 1
    assert not subject.inline()
    clock.now += 1
    assert subject.inline()
    # fast for a whole window: the next slow spell starts over at THREADS_FOR
    for _ in range(RECENT_CALLS):
        subject.note(0.0, 0)
    subject.note(STALL, 0)
    clock.now += THREADS_FOR
    assert subject.inline()


def test_the_time_in_threads_is_bounded() -> None:
    subject, clock = lane()
    for _ in range(20):
        subject.note(STALL, 0)
        clock.now += MAX_THREADS_FOR
        assert subject.inline()


@pytest.mark.parametrize("mode", [FileIoMode.INLINE, FileIoMode.THREADS])
def test_a_fixed_mode_does_not_change_with_timings(mode: FileIoMode) -> None:
    subject, _ = lane(mode)
    for _ in range(RECENT_CALLS):
        subject.note(STALL, 0)
    assert subject.inline() is (mode is FileIoMode.INLINE)


def test_run_says_where_the_call_ran() -> None:
    async def main() -> tuple[str, str]:
        inline, _ = lane(FileIoMode.INLINE)
        threads, _ = lane(FileIoMode.THREADS)
        here = await inline.run(0, lambda: threading.current_thread().name)
        there = await threads.run(0, lambda: threading.current_thread().name)
        assert (inline.inline_calls, inline.thread_calls) == (1, 0)
        assert (threads.inline_calls, threads.thread_calls) == (0, 1)
        return here, there

    here, there = asyncio.run(main())
    assert here == threading.main_thread().name
    assert there != here


# --- the store ------------------------------------------------------------------------------


def upload(store: FileStore, upload_id: str, body: bytes, chunk: int, request: int = 0) -> int:
    """Create the upload, then send `body` in PATCHes of `request` bytes (default: one),
    each in slices of `chunk` bytes; the stored size."""
    request = request or len(body)

    async def main() -> int:
        await store.create(upload_id, len(body))
        for offset in range(0, len(body), request):
            appender = store.appender(upload_id, offset)
            for start in range(offset, min(offset + request, len(body)), chunk):
                await appender.write(body[start : min(start + chunk, offset + request)])
            await appender.close()
        return store.path(upload_id).stat().st_size

    return asyncio.run(main())


@pytest.fixture
def generous(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Fast" made generous: a loaded machine must not make the test's disk look slow."""
    monkeypatch.setattr(file_calls, "FLOOR", 1.0)
    monkeypatch.setattr(file_calls, "STALL", 10.0)


@pytest.mark.usefixtures("generous")
def test_on_a_fast_file_system_patches_of_one_batch_never_leave_the_event_loop(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path, FsyncPolicy.ALWAYS)  # auto
    body = bytes(range(256)) * 16 * 1024  # 4 MiB in four PATCHes of 1 MiB
    assert upload(store, "fastfastfastfast", body, 64 * 1024, request=MiB) == len(body)
    assert (tmp_path / "fastfastfastfast").read_bytes() == body
    assert store.calls.write.thread_calls == 0 and store.calls.write.inline_calls == 4
    # the create's directory flush and one flush per PATCH
    assert store.calls.sync.thread_calls == 0 and store.calls.sync.inline_calls == 5


@pytest.mark.usefixtures("generous")
def test_a_long_body_is_a_stream_whose_writes_overlap_with_reading(tmp_path: Path) -> None:
    """Batches after a body's first go to a worker thread while the next one fills (one
    1 GiB PATCH ran at half the speed with every batch inline); the last is written inline."""
    store = FileStore(tmp_path, FsyncPolicy.ALWAYS)
    body = bytes(range(256)) * (18 * 1024)  # 4.5 MiB in one PATCH: 5 batches
    assert upload(store, "streamstreamstre", body, 64 * 1024) == len(body)
    assert (tmp_path / "streamstreamstre").read_bytes() == body
    assert store.calls.write.inline_calls == 2  # the first and the last
    assert store.calls.write.thread_calls == 3


@pytest.mark.usefixtures("generous")
def test_a_slow_clients_small_batches_are_written_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that trickles in is written as its batches age (BATCH_MAX_AGE): each is small,
    nothing overlaps with reading worth a thread hop, so every one is written inline."""
    monkeypatch.setattr(file_module, "BATCH_MAX_AGE", 0.01)
    store = FileStore(tmp_path, FsyncPolicy.NEVER)

    async def main() -> None:
        await store.create("trickletrickletr", None)
        appender = store.appender("trickletrickletr", 0)
        for n in range(6):
            await appender.write(bytes([n]) * 1024)
            await asyncio.sleep(0.02)
        assert (await appender.close()).size == 6 * 1024

    asyncio.run(main())
    assert store.calls.write.inline_calls >= 3 and store.calls.write.thread_calls == 0
    assert (tmp_path / "trickletrickletr").read_bytes() == b"".join(
        bytes([n]) * 1024 for n in range(6)
    )


def test_slow_writes_move_to_threads_and_every_byte_still_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that takes 50 ms per 64 KiB write (1.3 MB/s): after SLOW_CALLS inline writes
    the rest run in worker threads, each at its offset."""
    pwrite_all = file_module._pwrite_all
    threads: set[str] = set()

    def slow_pwrite_all(fd: int, buffers: list[bytes], position: int) -> None:
        time.sleep(0.05)
        threads.add(threading.current_thread().name)
        pwrite_all(fd, buffers, position)

    monkeypatch.setattr(file_module, "_pwrite_all", slow_pwrite_all)
    store = FileStore(tmp_path, FsyncPolicy.NEVER)
    body = bytes(range(256)) * 4 * 1024  # 1 MiB in 16 PATCHes of 64 KiB
    assert upload(store, "slowslowslowslow", body, 16 * 1024, request=64 * 1024) == len(body)
    assert (tmp_path / "slowslowslowslow").read_bytes() == body
    lane_ = store.calls.write
    assert lane_.inline_calls == SLOW_CALLS
    assert lane_.thread_calls == 16 - SLOW_CALLS
    assert threading.main_thread().name in threads and len(threads) >= 2
    assert not lane_.inline()


def test_the_switch_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(file_calls, "THREADS_FOR", 5.0)
    subject = Lane("sync", FileIoMode.AUTO, Clock())
    with caplog.at_level("INFO", logger="tusd_storage.file"):
        subject.note(STALL, 0)
    assert "file sync calls are slow" in caplog.text and "for 5 s" in caplog.text
