"""Where the file store's system calls run: on the event loop while the file system answers
at memory speed, in worker threads while it does not.

A write into the page cache (or tmpfs) is a memory copy: 256 KiB take tens of
microseconds. Handing it to a worker thread costs more than the copy itself: a queue, a
future, two wake-ups and the GIL passed back and forth with the event loop. Measured at
1,000 concurrent uploads (2 workers, PostgreSQL + Redis), the thread pool took about 185
futex calls per upload and the server used 10-15 % more CPU than with the same calls made
inline. nginx writes request bodies to its temporary files the same way, inline.

A call that blocks stops every request of the process, though: a disk under writeback
pressure, a network file system, an fsync on a real disk (milliseconds). So each lane
(writes; calls that flush or change the directory) is timed. A call is slow when it takes
longer than memory speed allows (FLOOR seconds plus its bytes at FAST_BYTES_PER_S). The lane
goes to worker threads for a while (THREADS_FOR seconds, doubling each time it comes back
and finds the file system still slow, up to MAX_THREADS_FOR) when SLOW_CALLS of its last
RECENT_CALLS inline calls were slow, or at once when one took STALL seconds or more: a
single slow call is more often the scheduler (two cores, a dozen runnable threads) than the
disk, and the disk that is slow is slow every time. Calls that run in threads are not
timed: their time includes waiting for the GIL, which says nothing about the disk. On a disk
whose fsync takes milliseconds, the sync lane so blocks the loop for SLOW_CALLS fsyncs once
per period.

`mode` fixes the choice instead: INLINE (tmpfs, or a benchmark of the inline path),
THREADS (a file system known to stall: NFS, a shared disk).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("tusd_storage.file")

T = TypeVar("T")

#: a call may take this long, plus its bytes at FAST_BYTES_PER_S, and still count as
#: memory speed
FLOOR = 0.001
FAST_BYTES_PER_S = 200_000_000
#: this many slow calls among the last RECENT_CALLS inline ones send the lane to threads
SLOW_CALLS = 3
RECENT_CALLS = 16
#: one call this slow sends the lane to threads at once
STALL = 0.1
#: after a slow call, the lane's calls go to threads for this long (doubling with every
#: slow probe, up to MAX_THREADS_FOR)
THREADS_FOR = 30.0
MAX_THREADS_FOR = 600.0


class FileIoMode(enum.StrEnum):
    #: inline while calls are fast, in threads while they are not (see the module)
    AUTO = "auto"
    #: always on the event loop
    INLINE = "inline"
    #: always in worker threads
    THREADS = "threads"


class Lane:
    """One kind of call (writes, flushes) and where its calls run now."""

    def __init__(self, name: str, mode: FileIoMode, clock: Callable[[], float]) -> None:
        self.name = name
        self.mode = mode
        self._clock = clock
        #: monotonic time until which calls go to threads (AUTO)
        self._threads_until = 0.0
        self._threads_for = THREADS_FOR
        #: whether each of the last RECENT_CALLS inline calls was slow
        self._recent: deque[bool] = deque(maxlen=RECENT_CALLS)
        #: how many calls ran inline and how many in threads (for tests, notes)
        self.inline_calls = 0
        self.thread_calls = 0

    def inline(self) -> bool:
        if self.mode is FileIoMode.AUTO:
            return self._clock() >= self._threads_until
        return self.mode is FileIoMode.INLINE

    def note(self, seconds: float, size: int) -> None:
        """An inline call took `seconds` for `size` bytes."""
        if self.mode is not FileIoMode.AUTO:
            return
        recent = self._recent
        recent.append(seconds > FLOOR + size / FAST_BYTES_PER_S)
        if seconds < STALL and sum(recent) < SLOW_CALLS:
            if len(recent) == RECENT_CALLS and not any(recent):
                self._threads_for = THREADS_FOR  # fast again: the next slow spell starts over
            return
        log.info(
            "file %s calls are slow (the last took %.1f ms for %d bytes): they run in worker "
            "threads for %.0f s",
            self.name,
            seconds * 1000,
            size,
            self._threads_for,
        )
        self._threads_until = self._clock() + self._threads_for
        self._threads_for = min(self._threads_for * 2, MAX_THREADS_FOR)
        recent.clear()

    async def run(self, size: int, call: Callable[..., T], *args: object) -> T:
        """`call(*args)`, which moves `size` bytes, inline or in a worker thread."""
        if not self.inline():
            return await self.in_thread(call, *args)
        self.inline_calls += 1
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.note(time.perf_counter() - started, size)

    async def in_thread(self, call: Callable[..., T], *args: object) -> T:
        self.thread_calls += 1
        return await asyncio.to_thread(call, *args)


class FileCalls:
    """The lanes of one file store."""

    def __init__(
        self, mode: FileIoMode = FileIoMode.AUTO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.mode = mode
        #: pwritev of a batch
        self.write = Lane("write", mode, clock)
        #: fsync, and what creates, truncates or removes a file
        self.sync = Lane("sync", mode, clock)
