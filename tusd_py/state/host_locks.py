"""HostLocks: one holder per upload among the processes of one host, with handover.

`serve --workers N` without Redis runs N processes on one port, and any of them may get any
request of an upload. Each upload's lock is a POSIX record lock (fcntl) on one byte of one
shared file, `<data-dir>/locks/uploads.lock`, at an offset derived from the upload's id: the
kernel grants it to one process at a time and takes it back when that process exits, however
it exits, so a crashed worker never leaves an upload locked. Within a process a LocalLocks
keeps one holder per upload (record locks belong to the process, not to a task).

Handover (PROTOCOL 23) crosses processes through Unix datagram sockets beside the lock
file, one per process (`<pid>.sock`): a newcomer that finds the upload held elsewhere sends
"stop <id>" to every other process; the one holding the upload asks its holder to let go
(as a local newcomer would), and the newcomer takes the record lock once it is free. The
kernel offers no wait on a record lock that an event loop can await with a deadline, so the
newcomer polls for it, from a millisecond apart up to POLL_MAX apart, until acquire_timeout
(then 423, as LocalLocks answers). Uncontended, a lock costs two fcntl calls.

Tenure: which process held an upload last. A process may answer from its memory of an
upload (the state cache) only while no other process has held the upload since it last did:
every other writer (another worker, `tusd-py gc`) holds the lock to write. A shared table
of TENURE_SLOTS words (`tenure`, mapped by every process) keeps, per slot of upload ids,
a mark of the process and upload that took the lock last. Taking the lock, a process that
finds another's mark there forgets what it remembers of the upload (`forget`), then writes
its own; `is_tenured` says whether the mark is still its own, which is when a cached state
may be believed. Two uploads on one slot only make each other's entries forgotten more
often; a mark is a keyed hash of the upload's id with a key of the process's own, so no
other process or upload can write it.

Without the Redis cache, every server uses these locks, one process or N: so `gc` (run
with the same --data-dir) can see and take the uploads a running server holds, and the
server forgets what gc changed. Where record locks do not work (some network file systems)
a single process falls back to locks of its own, and says so; several refuse to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload

from ..core.ports import Holding
from .local_locks import LocalLocks

log = logging.getLogger("tusd_py.locks")

#: longest wait between two attempts on a record lock held by another process
POLL_MAX = 0.02
#: a newcomer repeats its "stop" this often while it waits (a holder that took the lock
#: just after the first message went out hears the second)
RESEND_EVERY = 0.25
#: Unix socket paths longer than this do not fit in sockaddr_un on every platform
SOCKET_PATH_MAX = 100

_RANGE_BITS = 62
#: slots of the tenure table (8 bytes each: a 512 KiB file)
TENURE_SLOTS = 1 << 16


def lock_offset(upload_id: str) -> int:
    """Where in the lock file an upload's byte is: distinct ids practically never share one
    (if two did, they would only wait for each other)."""
    digest = hashlib.blake2b(upload_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _RANGE_BITS)


class HostLocks:
    """Locks for the processes of one host that share a lock directory."""

    def __init__(
        self,
        directory: Path,
        acquire_timeout: float = 20.0,
        *,
        forget: Callable[[str], None] | None = None,
        shared_required: bool = True,
    ) -> None:
        self.directory = directory
        self.acquire_timeout = acquire_timeout
        #: called with an upload's id when another process has held it since this one did
        self.forget = forget
        #: False: a process alone may fall back to local locks where record locks fail
        self.shared_required = shared_required
        #: whether locks are shared with other processes (False: fallen back)
        self.shared = True
        self._local = LocalLocks(acquire_timeout)
        self._fd: int | None = None
        self._inbox: socket.socket | None = None
        self._inbox_path = directory / f"{os.getpid()}.sock"
        #: record locks this process holds, by offset: two ids on one offset share it
        self._ranges: dict[int, int] = {}
        self._tenure_map: mmap.mmap | None = None
        self._tenure: memoryview | None = None
        self._key = os.urandom(16)

    def is_held(self, upload_id: str) -> bool:
        return self._local.is_held(upload_id)

    def kept_state(self, upload_id: str) -> Upload | None:
        return None  # a lock here lasts as long as its request

    async def held_anywhere(self, upload_id: str) -> bool:
        if self._local.is_held(upload_id):
            return True
        if not self.shared:
            return False
        offset = lock_offset(upload_id)
        if offset in self._ranges:
            return True  # another id on the same byte: it would wait for that one
        if not self._try_range(offset):
            return True
        self._release_range(offset)
        return False

    def is_tenured(self, upload_id: str) -> bool:
        """No other process has held the upload since this one last took it."""
        if not self.shared:
            return True  # alone: every write is ours
        tenure = self._tenure
        return tenure is not None and tenure[self._slot(upload_id)] == self._mark(upload_id)

    async def start(self) -> None:
        try:
            self._open_shared()
        except OSError as exc:
            self._close_shared()
            if self.shared_required:
                raise OSError(
                    f"{self.directory}: the worker processes cannot share upload locks here "
                    f"({exc}); use a local --data-dir, or --redis-url"
                ) from exc
            log.warning(
                "%s: record locks do not work here (%s); locks stay within this process, so "
                "run gc only while the server is stopped",
                self.directory,
                exc,
            )
            self.shared = False
            return
        self._open_inbox()

    def _open_shared(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.directory / "uploads.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)  # do record locks work?
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
        size = TENURE_SLOTS * 8
        fd = os.open(self.directory / "tenure", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zeros: no process's mark
            self._tenure_map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._tenure = memoryview(self._tenure_map).cast("Q")

    def _open_inbox(self) -> None:
        if len(str(self._inbox_path)) > SOCKET_PATH_MAX:
            if self.shared_required:
                raise ValueError(
                    f"{self.directory}: too long a path for the workers' handover sockets "
                    f"(at most {SOCKET_PATH_MAX - 12} characters); use a shorter --data-dir"
                )
            # alone, only gc comes from outside, and it never waits for a holder
            log.info("%s: too long a path for a handover socket; none opened", self.directory)
            return
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self._inbox_path.unlink()  # a process with our pid that died before us
        inbox.bind(str(self._inbox_path))
        inbox.setblocking(False)
        self._inbox = inbox
        asyncio.get_running_loop().add_reader(inbox.fileno(), self._read_inbox)

    async def stop(self) -> None:
        if self._inbox is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
            with contextlib.suppress(FileNotFoundError):
                self._inbox_path.unlink()
        self._close_shared()

    def _close_shared(self) -> None:
        if self._tenure is not None:
            self._tenure.release()
            self._tenure = None
        if self._tenure_map is not None:
            self._tenure_map.close()
            self._tenure_map = None
        if self._fd is not None:
            os.close(self._fd)  # gives back every record lock this process still has
            self._fd = None
            self._ranges.clear()

    def stop_all(self) -> None:
        self._local.stop_all()

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str, *, wait: bool = True) -> AsyncIterator[Holding]:
        deadline = asyncio.get_running_loop().time() + self.acquire_timeout
        async with self._local.hold(upload_id, wait=wait) as holding:
            if not self.shared:
                yield holding
                return
            offset = lock_offset(upload_id)
            await self._take_range(upload_id, offset, wait, deadline)
            try:
                self._take_tenure(upload_id)
                yield holding
            finally:
                self._release_range(offset)

    # --- tenure -------------------------------------------------------------------------

    def _slot(self, upload_id: str) -> int:
        return lock_offset(upload_id) % TENURE_SLOTS

    def _mark(self, upload_id: str) -> int:
        digest = hashlib.blake2b(upload_id.encode(), key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "little") or 1  # 0 is nobody's

    def _take_tenure(self, upload_id: str) -> None:
        """Under the upload's record lock: the mark becomes ours; if it was not, what we
        remember of the upload may be older than another process's writes."""
        tenure = self._tenure
        assert tenure is not None
        slot, mark = self._slot(upload_id), self._mark(upload_id)
        if tenure[slot] != mark:
            if self.forget is not None:
                self.forget(upload_id)
            tenure[slot] = mark

    # --- the record locks ---------------------------------------------------------------

    def _try_range(self, offset: int) -> bool:
        held = self._ranges.get(offset, 0)
        if held == 0:
            assert self._fd is not None, "HostLocks.start() was not awaited"
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
        self._ranges[offset] = held + 1
        return True

    def _release_range(self, offset: int) -> None:
        held = self._ranges.pop(offset, 0) - 1
        if held > 0:
            self._ranges[offset] = held
        elif self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    async def _take_range(self, upload_id: str, offset: int, wait: bool, deadline: float) -> None:
        if self._try_range(offset):
            return
        if not wait:
            raise UploadLocked(headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        pause = 0.001
        next_ask = loop.time()
        while True:
            now = loop.time()
            if now >= next_ask:
                self._ask_others_to_stop(upload_id)
                next_ask = now + RESEND_EVERY
            if now >= deadline:
                raise UploadLocked(
                    "Another request holds this upload and did not let go; retry shortly.",
                    headers={"Retry-After": "2"},
                )
            await asyncio.sleep(min(pause, max(deadline - now, 0.0)))
            pause = min(pause * 2, POLL_MAX)
            if self._try_range(offset):
                return

    # --- handover between processes -----------------------------------------------------

    def _ask_others_to_stop(self, upload_id: str) -> None:
        message = f"stop {upload_id}".encode()
        sender = self._inbox
        if sender is None:
            return
        for path in self.directory.glob("*.sock"):
            if path == self._inbox_path:
                continue
            try:
                sender.sendto(message, str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                # nobody reads there: the process died without cleaning up
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            except BlockingIOError:
                pass  # its inbox is full; the next resend gets through
            except OSError as exc:
                log.warning("could not ask %s to let go of %s: %s", path.name, upload_id, exc)

    def _read_inbox(self) -> None:
        inbox = self._inbox
        while inbox is not None:
            try:
                message = inbox.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            verb, _, upload_id = message.decode("ascii", "replace").partition(" ")
            if verb == "stop" and upload_id:
                self._local.request_stop(upload_id)
