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
    MAX_THREADS_FOR,
    STALL,
    THREADS_FOR,
    FileCalls,
    Lane,
    file_system_type,
)

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lane(mode: FileIoMode = FileIoMode.AUTO) -> tuple[Lane, Clock]:
    clock = Clock()
    return Lane("write", mode, clock), clock


# --- which file system, and where each lane starts -----------------------------------------

MOUNTS = """\
proc /proc proc rw 0 0
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
server:/export /srv/nfs nfs4 rw 0 0
tmpfs /srv/nfs/cache tmpfs rw 0 0
/dev/vdb /mnt/my\\040disk xfs rw 0 0
overlay /var/lib/tusd overlay rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/dev/shm/tusd/uploads", "tmpfs"),
        ("/dev/shm", "tmpfs"),
        ("/dev/shmx/uploads", "ext4"),  # a sibling whose name begins alike is not inside
        ("/srv/nfs/uploads", "nfs4"),
        ("/srv/nfs/cache/uploads", "tmpfs"),  # the longest mount point that holds it
        ("/mnt/my disk/uploads", "xfs"),  # an escaped space in the mount point
        ("/var/lib/tusd/uploads", "overlay"),
        ("/home/u/uploads", "ext4"),
    ],
)
def test_the_file_system_is_the_longest_mount_point_that_holds_the_path(
    tmp_path: Path, path: str, kind: str
) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert file_system_type(path, str(mounts)) == kind


def test_an_unreadable_mount_table_tells_nothing(tmp_path: Path) -> None:
    assert file_system_type("/anywhere", str(tmp_path / "none")) is None


@pytest.mark.parametrize(
    ("kind", "write_inline", "sync_inline"),
    [
        ("tmpfs", True, True),  # memory: writes and flushes are copies
        ("ext4", True, False),  # a disk: writes into the page cache, flushes wait
        ("overlay", True, False),
        ("nfs4", False, False),  # over a network: nothing on the loop
        ("fuse.sshfs", False, False),
        (None, False, False),  # not known: nothing on the loop
    ],
)
def test_each_lane_starts_where_the_file_system_says(
    monkeypatch: pytest.MonkeyPatch, kind: str | None, write_inline: bool, sync_inline: bool
) -> None:
    monkeypatch.setattr(file_calls, "file_system_type", lambda path: kind)
    calls = FileCalls(FileIoMode.AUTO, "/uploads")
    assert calls.file_system == kind
    assert calls.write.inline() is write_inline
    assert calls.sync.inline() is sync_inline
    for fixed in (FileIoMode.INLINE, FileIoMode.THREADS):
        calls = FileCalls(fixed, "/uploads")
        assert calls.write.inline() is calls.sync.inline() is (fixed is FileIoMode.INLINE)


def test_the_mount_table_of_the_running_system_is_read() -> None:
    if not Path("/proc/self/mounts").exists():
        pytest.skip("no /proc/self/mounts: not Linux")
    assert FileCalls(FileIoMode.AUTO, "/proc/self").file_system == "proc"


# --- stalls ------------------------------------------------------------------------------------


def test_calls_short_of_a_stall_stay_inline_whatever_they_take() -> None:
    """Under full load the scheduler alone makes tmpfs calls take milliseconds."""
    subject, _ = lane()
    for _ in range(1000):
        subject.note(STALL * 0.9)
    assert subject.inline()


def test_a_stall_sends_the_lane_to_threads_then_it_tries_inline_again() -> None:
    subject, clock = lane()
    subject.note(STALL)
    assert not subject.inline()
    clock.now += THREADS_FOR - 1
    assert not subject.inline()
    clock.now += 1
    assert subject.inline()  # a probe
    subject.note(STALL)  # still stalls: twice as long in threads
    clock.now += 2 * THREADS_FOR - 1
    assert not subject.inline()
    clock.now += 1
    assert subject.inline()
    subject.note(0.0)  # the probe went well: the next stall starts over at THREADS_FOR
    subject.note(STALL)
    clock.now += THREADS_FOR
    assert subject.inline()


def test_the_time_in_threads_is_bounded() -> None:
    subject, clock = lane()
    for _ in range(20):
        subject.note(STALL)
        clock.now += MAX_THREADS_FOR
        assert subject.inline()


@pytest.mark.parametrize("mode", [FileIoMode.INLINE, FileIoMode.THREADS])
def test_a_fixed_mode_does_not_change_with_timings(mode: FileIoMode) -> None:
    subject, _ = lane(mode)
    for _ in range(10):
        subject.note(STALL * 10)
    assert subject.inline() is (mode is FileIoMode.INLINE)


def test_run_says_where_the_call_ran() -> None:
    async def main() -> tuple[str, str]:
        inline, _ = lane(FileIoMode.INLINE)
        threads, _ = lane(FileIoMode.THREADS)
        here = await inline.run(lambda: threading.current_thread().name)
        there = await threads.run(lambda: threading.current_thread().name)
        assert (inline.inline_calls, inline.thread_calls) == (1, 0)
        assert (threads.inline_calls, threads.thread_calls) == (0, 1)
        return here, there

    here, there = asyncio.run(main())
    assert here == threading.main_thread().name
    assert there != here


def test_the_switch_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    subject = Lane("sync", FileIoMode.AUTO, Clock())
    with caplog.at_level("INFO", logger="tusd_storage.file"):
        subject.note(STALL * 2)
    assert "a file sync call took 200 ms on the event loop" in caplog.text
    assert f"run in worker threads for {THREADS_FOR:.0f} s" in caplog.text


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
def memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's directory counts as tmpfs, whatever the test machine's /tmp is."""
    monkeypatch.setattr(file_calls, "file_system_type", lambda path: "tmpfs")


@pytest.mark.usefixtures("memory")
def test_on_tmpfs_patches_of_one_batch_never_leave_the_event_loop(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path, FsyncPolicy.ALWAYS)  # auto
    body = bytes(range(256)) * 16 * 1024  # 4 MiB in four PATCHes of 1 MiB
    assert upload(store, "fastfastfastfast", body, 64 * 1024, request=MiB) == len(body)
    assert (tmp_path / "fastfastfastfast").read_bytes() == body
    assert store.calls.write.thread_calls == 0 and store.calls.write.inline_calls == 4
    # the create's directory flush and one flush per PATCH
    assert store.calls.sync.thread_calls == 0 and store.calls.sync.inline_calls == 5


@pytest.mark.usefixtures("memory")
def test_a_long_body_is_a_stream_whose_writes_overlap_with_reading(tmp_path: Path) -> None:
    """Batches after a body's first go to a worker thread while the next one fills (one
    1 GiB PATCH ran at half the speed with every batch inline); the last is written inline."""
    store = FileStore(tmp_path, FsyncPolicy.ALWAYS)
    body = bytes(range(256)) * (18 * 1024)  # 4.5 MiB in one PATCH: 5 batches
    assert upload(store, "streamstreamstre", body, 64 * 1024) == len(body)
    assert (tmp_path / "streamstreamstre").read_bytes() == body
    assert store.calls.write.inline_calls == 2  # the first and the last
    assert store.calls.write.thread_calls == 3


@pytest.mark.usefixtures("memory")
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


@pytest.mark.usefixtures("memory")
def test_a_write_that_stalls_moves_the_writes_to_threads_and_every_byte_still_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that takes STALL (writeback throttling): the next PATCHes' writes run in
    worker threads, each at its offset."""
    monkeypatch.setattr(file_calls, "STALL", 0.05)
    pwrite_all = file_module._pwrite_all
    threads: list[str] = []

    def stalling_pwrite_all(fd: int, buffers: list[bytes], position: int) -> None:
        if not threads:
            time.sleep(0.06)
        threads.append(threading.current_thread().name)
        pwrite_all(fd, buffers, position)

    monkeypatch.setattr(file_module, "_pwrite_all", stalling_pwrite_all)
    store = FileStore(tmp_path, FsyncPolicy.NEVER)
    body = bytes(range(256)) * 4 * 1024  # 1 MiB in 16 PATCHes of 64 KiB
    assert upload(store, "slowslowslowslow", body, 16 * 1024, request=64 * 1024) == len(body)
    assert (tmp_path / "slowslowslowslow").read_bytes() == body
    lane_ = store.calls.write
    assert (lane_.inline_calls, lane_.thread_calls) == (1, 15)
    assert threads[0] == threading.main_thread().name
    assert threading.main_thread().name not in threads[1:]
    assert not lane_.inline()
    assert store.calls.sync.inline()  # the other lane did not stall
