"""Upload buffers drawn from one memory budget per store: memory bounded per process.

Every byte an S3 request holds between its client and the object store (the part being
filled, the parts being sent, a fragment being written, a part being streamed for a
concatenation) lives in a `Buffer` from the store's `BufferPool`. The pool hands out
buffers while the bytes of all the buffers it has made (in use, or kept idle for reuse)
stay within its budget. A request that finds the budget spent waits, first come first
served, up to a deadline:

- Waiting is the backpressure. A request that waits for a buffer stops taking body bytes
  from its connection, the HTTP protocol stops reading once its queue is full, and the
  client's TCP window closes. Nothing is spilled to a local disk: no byte of an upload lives
  only on one server between requests, which the S3 store promises.
- The deadline ends the wait with `BufferWaitTimeout`: `503` with `Retry-After`, and the
  upload's acknowledged offset does not move.

Deadlock: a request must never wait for the budget while it holds a buffer of it, or all of
the budget could be held by requests that each wait for more. The S3 appender therefore
waits (`take`) only while it holds no buffer; for more parts in flight it asks with
`try_take`, and when that fails it waits for its own part in flight to be sent and reuses
that part's buffer. Waits for a part-upload slot come after a buffer is held, and a holder
of a slot never waits for the budget, so every wait ends.

Buffers are anonymous memory maps rather than bytearrays: the memory of one that is freed
goes back to the operating system at once (glibc keeps freed bytearrays of a few MiB in its
heap, so RSS would not follow the budget down), pages that are never written cost no RSS,
and nothing is zero-filled in user space. Idle buffers are kept for reuse only while nobody
waits, and are unmapped whenever a request needs their room.

Used from one event loop; no method may be called from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
from collections import deque
from dataclasses import dataclass, field

from tusd_protocol.errors import ServiceUnavailable

from .base import StorageError

MiB = 1024 * 1024
#: buffer sizes are rounded up to this, so that buffers of nearly equal sizes can be reused
GRAIN = 64 * 1024
#: a request may be given an idle buffer up to this factor larger than what it asked for
REUSE_SLACK = 2
#: seconds a request may wait for a buffer before it answers 503
DEFAULT_WAIT_TIMEOUT = 60.0
#: seconds a client is asked to wait before it retries, after a buffer wait timed out
RETRY_AFTER = 5


class BufferWaitTimeout(ServiceUnavailable, StorageError):
    """No buffer came free within the deadline: 503 with Retry-After (ERR_UNAVAILABLE).

    A StorageError too, so that what catches the store's failures (the sweeper, gc) treats
    it as one; the HTTP layer answers it as the ServiceUnavailable it also is."""

    default_message = (
        "The server holds as many upload bytes in memory as it may, and none came free in "
        "time; nothing past the acknowledged offset was kept. Retry after the time in "
        "Retry-After."
    )


def wait_timed_out(budget: int, timeout: float) -> BufferWaitTimeout:
    return BufferWaitTimeout(
        f"The server holds as many upload bytes in memory as it may ({budget} bytes), and "
        f"none came free within {timeout:g} s; nothing past the acknowledged offset was "
        f"kept. Retry after the time in Retry-After.",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def rounded(size: int) -> int:
    """`size` rounded up to the buffer grain (at least one grain)."""
    return max(-(-size // GRAIN) * GRAIN, GRAIN)


class Buffer:
    """One buffer: `view` is a writable memoryview of `size` bytes."""

    __slots__ = ("_map", "charge", "size", "view")

    def __init__(self, size: int, charge: int) -> None:
        self._map = mmap.mmap(-1, size)
        self.view = memoryview(self._map)
        self.size = size
        #: the bytes of the budget this buffer counts for (its size, at most the budget)
        self.charge = charge

    def free(self) -> None:
        """Give the memory back to the operating system. A slice of `view` that is still
        alive somewhere (a traceback) keeps the map until it goes; that is fine."""
        with contextlib.suppress(BufferError):
            self.view.release()
            self._map.close()


@dataclass(eq=False)
class _Waiter:
    size: int
    future: asyncio.Future[Buffer] = field(repr=False)


class BufferPool:
    """Buffers whose sizes add up to at most `budget` bytes (see the module's docstring).

    A buffer larger than the whole budget (a part size above it) is still given, once the
    budget is entirely free, and counts as the whole budget while it lives.
    """

    def __init__(
        self,
        budget: int,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        keep_idle: int | None = None,
    ) -> None:
        if budget < GRAIN:
            raise ValueError(f"the buffer budget must be at least {GRAIN} bytes")
        self.budget = budget
        self.wait_timeout = wait_timeout
        #: bytes of idle buffers kept for reuse while nobody waits (counted in the budget)
        self.keep_idle = min(budget // 4, 64 * MiB) if keep_idle is None else keep_idle
        #: bytes of every live buffer, in use or idle
        self.used = 0
        #: the largest `used` seen: what the tests and the benchmark read
        self.peak = 0
        self._idle: dict[int, list[Buffer]] = {}
        self._idle_bytes = 0
        self._waiters: deque[_Waiter] = deque()

    # --- what callers use ----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for a buffer now."""
        return len(self._waiters)

    @property
    def idle(self) -> int:
        return self._idle_bytes

    def try_take(self, size: int) -> Buffer | None:
        """A buffer of at least `size` bytes now, or None: never waits, and never passes
        anyone who waits."""
        if self._waiters:
            return None
        return self._allocate(rounded(size))

    async def take(self, size: int, timeout: float | None = None) -> Buffer:
        """A buffer of at least `size` bytes; waits, in turn, up to `timeout` seconds
        (the pool's wait_timeout by default), then raises BufferWaitTimeout.

        Only a caller that holds no buffer of this pool may wait here (see the module's
        docstring). A caller cancelled while it waits takes nothing with it.
        """
        size = rounded(size)
        buffer = self.try_take(size)
        if buffer is not None:
            return buffer
        waiter = _Waiter(size, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        timeout = self.wait_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except BaseException as exc:
            self._leave(waiter)
            if isinstance(exc, TimeoutError):
                raise wait_timed_out(self.budget, timeout) from None
            raise

    def give(self, buffer: Buffer) -> None:
        """Take a buffer back: to the first waiter if it fits, idle, or unmapped."""
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # left already (cancelled): it takes nothing
                self._waiters.popleft()
                continue
            if head.size <= buffer.size <= head.size * REUSE_SLACK:
                self._waiters.popleft()
                head.future.set_result(buffer)  # handed over: no unmap, no new map
                return
            break
        if not self._waiters and self._idle_bytes + buffer.size <= self.keep_idle:
            self._idle.setdefault(buffer.size, []).append(buffer)
            self._idle_bytes += buffer.size
            return
        self._free(buffer)
        self._wake()

    def clear(self) -> None:
        """Unmap every idle buffer (at shutdown, or to give memory back)."""
        for buffers in self._idle.values():
            for buffer in buffers:
                self._free(buffer)
        self._idle.clear()
        self._idle_bytes = 0
        self._wake()

    # --- inside --------------------------------------------------------------------------

    def _allocate(self, size: int) -> Buffer | None:
        idle = self._reuse(size)
        if idle is not None:
            return idle
        charge = min(size, self.budget)
        while self.used + charge > self.budget and self._idle_bytes:
            self._evict_one()
        if self.used + charge > self.budget:
            return None
        buffer = Buffer(size, charge)  # the map first: if it fails, nothing is counted
        self.used += charge
        self.peak = max(self.peak, self.used)
        return buffer

    def _reuse(self, size: int) -> Buffer | None:
        """The smallest idle buffer that holds `size` bytes without wasting too many."""
        fitting = [s for s in self._idle if size <= s <= size * REUSE_SLACK]
        if not fitting:
            return None
        best = min(fitting)
        buffers = self._idle[best]
        buffer = buffers.pop()
        if not buffers:
            del self._idle[best]
        self._idle_bytes -= buffer.size
        return buffer

    def _evict_one(self) -> None:
        size = max(self._idle)  # the largest first: the fewest unmaps for the room
        buffers = self._idle[size]
        buffer = buffers.pop()
        if not buffers:
            del self._idle[size]
        self._idle_bytes -= buffer.size
        self._free(buffer)

    def _free(self, buffer: Buffer) -> None:
        self.used -= buffer.charge
        buffer.free()

    def _wake(self) -> None:
        """Serve the waiters in turn while the budget has room for the first one."""
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                self._waiters.popleft()
                continue
            buffer = self._allocate(head.size)
            if buffer is None:
                return
            self._waiters.popleft()
            head.future.set_result(buffer)

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gives up (deadline, cancellation): what it was given goes back."""
        future = waiter.future
        if future.done() and not future.cancelled():
            self.give(future.result())  # granted just as it gave up
            return
        future.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._wake()  # it may have been first in line, holding back the others


class ByteBudget:
    """Bytes that may be held at once by all holders together, counted rather than
    allocated: the file store's write batches (bytes objects received from clients and not
    yet written) draw from one per store. FIFO waits with a deadline, as BufferPool's, and
    the same rule against deadlock: a holder waits only after it has put everything it
    holds on its way out (a write in flight always ends, and gives its bytes back).

    A request larger than the whole budget counts as the whole budget."""

    def __init__(self, budget: int, wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> None:
        if budget < 1:
            raise ValueError("the byte budget must be positive")
        self.budget = budget
        self.wait_timeout = wait_timeout
        self.used = 0
        #: the largest `used` seen: what the tests read
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def charge(self, size: int) -> int:
        """What `size` bytes count for: give() takes the same."""
        return min(size, self.budget)

    def try_take(self, size: int) -> bool:
        """Count `size` bytes now if they fit and nobody waits; never waits."""
        size = self.charge(size)
        if self._waiters or self.used + size > self.budget:
            return False
        self._count(size)
        return True

    async def take(self, size: int, timeout: float | None = None) -> None:
        """Count `size` bytes, in turn; BufferWaitTimeout after `timeout` seconds."""
        if self.try_take(size):
            return
        waiter = (self.charge(size), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        timeout = self.wait_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                await waiter[1]
        except BaseException as exc:
            future = waiter[1]
            if future.done() and not future.cancelled():
                self.release(waiter[0])  # counted just as it gave up: not its to keep
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()  # the next one may fit now
            if isinstance(exc, TimeoutError):
                raise wait_timed_out(self.budget, timeout) from None
            raise

    def give(self, size: int) -> None:
        """Give back what taking `size` bytes counted."""
        self.release(self.charge(size))

    def release(self, charged: int) -> None:
        """Give back `charged`: a sum of what takes counted (charge())."""
        if charged:
            self.used -= charged
            self._wake()

    def _count(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + size > self.budget:
                return
            self._waiters.popleft()
            self._count(size)
            future.set_result(None)
