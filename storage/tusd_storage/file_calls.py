"""Where the file store's system calls run: on the event loop when they are memory copies,
in worker threads when they wait for a device.

A write into the page cache (or tmpfs) is a memory copy: 256 KiB take tens of
microseconds. Handing it to a worker thread costs more than the copy itself: a queue, a
future, two wake-ups and the GIL passed back and forth with the event loop. Measured at
1,000 concurrent uploads (2 workers, PostgreSQL + Redis), the thread pool took about 185
futex calls per upload and the server used 10-15 % more CPU than with the same calls made
inline. nginx writes request bodies to its temporary files the same way, inline.

A call that waits for a device stops every request of the process, though, so the calls
are in two lanes, and each lane starts where the file system under the directory says
(read once from /proc/self/mounts):

- memory (tmpfs, ramfs): writes and flushes inline (an fsync there takes microseconds);
- a local disk (ext4, xfs, btrfs, ... and overlay, which writes to one): writes inline, into
  the page cache; flushes (fsync, and creating, truncating, removing files) in threads,
  where they wait for the device (0.3 ms on this machine's virtual disk) without stopping
  the loop, and where the kernel can serve concurrent ones with one journal commit;
- anything else (NFS, CIFS, FUSE, 9p, or not known): both lanes in threads.

An inline call that still takes STALL seconds (a write throttled by writeback, a disk gone
slow) sends its lane to threads for THREADS_FOR seconds, doubling each time it comes back
and stalls again, up to MAX_THREADS_FOR; a line at INFO says so. Timing is used only for
stalls that long: a first version judged every call against memory speed (1 ms), and under
full load on 2 cores the scheduler alone made tmpfs writes and flushes take 3-6 ms now and
then, which sent both lanes to threads within seconds.

`mode` fixes the choice instead: INLINE (every call on the loop), THREADS (none).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("tusd_storage.file")

T = TypeVar("T")

#: an inline call this slow sends its lane to threads
STALL = 0.1
#: ...for this long, doubling with every stall after a return, up to MAX_THREADS_FOR
THREADS_FOR = 30.0
MAX_THREADS_FOR = 600.0

#: file systems whose writes and flushes are memory copies
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
#: file systems on a local device: writes go to the page cache, flushes wait for the device
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "jfs", "bcachefs", "overlay"}
)


class FileIoMode(enum.StrEnum):
    #: by the file system, and inline calls that stall move to threads (see the module)
    AUTO = "auto"
    #: always on the event loop
    INLINE = "inline"
    #: always in worker threads
    THREADS = "threads"


def file_system_type(path: Path | str, mounts: str = "/proc/self/mounts") -> str | None:
    """The type of the file system `path` is on (the last mount of the longest mount
    point that holds it), or None when it cannot be told."""
    target = os.path.realpath(path)
    found: tuple[int, str] | None = None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = _unescape(fields[1])
                inside = (
                    target == point or point == "/" or target.startswith(point.rstrip("/") + "/")
                )
                if inside and (found is None or len(point) >= found[0]):
                    found = (len(point), fields[2])
    except OSError:
        return None
    return found[1] if found else None


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


class Lane:
    """One kind of call (writes, flushes) and where its calls run now."""

    def __init__(
        self,
        name: str,
        mode: FileIoMode,
        clock: Callable[[], float],
        inline_when_auto: bool = True,
    ) -> None:
        self.name = name
        self.mode = mode
        self._clock = clock
        #: AUTO: whether this lane's calls start inline (by the file system)
        self.inline_when_auto = inline_when_auto
        #: monotonic time until which calls go to threads after a stall (AUTO)
        self._threads_until = 0.0
        self._threads_for = THREADS_FOR
        #: the lane came back from a stall and has not had a call since
        self._probing = False
        #: how many calls ran inline and how many in threads (for tests, notes)
        self.inline_calls = 0
        self.thread_calls = 0

    def inline(self) -> bool:
        if self.mode is FileIoMode.AUTO:
            return self.inline_when_auto and self._clock() >= self._threads_until
        return self.mode is FileIoMode.INLINE

    def note(self, seconds: float) -> None:
        """An inline call took `seconds`."""
        if self.mode is not FileIoMode.AUTO:
            return
        probing, self._probing = self._probing, False
        if seconds < STALL:
            if probing:
                self._threads_for = THREADS_FOR  # back to normal: the next stall starts over
            return
        if not probing:
            self._threads_for = THREADS_FOR
        log.info(
            "a file %s call took %.0f ms on the event loop: %s calls run in worker threads "
            "for %.0f s",
            self.name,
            seconds * 1000,
            self.name,
            self._threads_for,
        )
        self._threads_until = self._clock() + self._threads_for
        self._threads_for = min(self._threads_for * 2, MAX_THREADS_FOR)
        self._probing = True

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """`call(*args)`, inline or in a worker thread."""
        if not self.inline():
            return await self.in_thread(call, *args)
        self.inline_calls += 1
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.note(time.perf_counter() - started)

    async def in_thread(self, call: Callable[..., T], *args: object) -> T:
        self.thread_calls += 1
        return await asyncio.to_thread(call, *args)


class FileCalls:
    """The lanes of one file store, for files under `directory`."""

    def __init__(
        self,
        mode: FileIoMode = FileIoMode.AUTO,
        directory: Path | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = mode
        self.file_system = file_system_type(directory) if directory is not None else None
        memory = self.file_system in MEMORY_FILE_SYSTEMS
        local = memory or self.file_system in LOCAL_FILE_SYSTEMS
        #: pwritev of a batch
        self.write = Lane("write", mode, clock, inline_when_auto=local)
        #: fsync, and what creates, truncates or removes a file
        self.sync = Lane("sync", mode, clock, inline_when_auto=memory)
