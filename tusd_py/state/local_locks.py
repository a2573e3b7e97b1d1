"""LocalLocks: one holder per upload within one process, with handover (PROTOCOL 23).

A request that finds its upload held asks the holder to let go. A holder that is waiting
for body bytes is interrupted at once (its task is cancelled with a handover marker, which
the body pump recognises); a holder that is busy elsewhere notices the request when it next
looks. Either way it saves what it received, answers its own client, and releases. If it
does not let go within the acquire timeout, the newcomer answers 423.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload

from ..core.ports import Holding


class _Entry:
    __slots__ = ("holder", "lock", "waiters")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holder: Holding | None = None
        self.waiters = 0


class LocalLocks:
    """Locks for one process."""

    def __init__(self, acquire_timeout: float = 20.0) -> None:
        self.acquire_timeout = acquire_timeout
        self._entries: dict[str, _Entry] = {}
        #: shutting down: every holder, present and future, is asked to let go at once
        self.stopping = False

    def is_held(self, upload_id: str) -> bool:
        entry = self._entries.get(upload_id)
        return entry is not None and entry.lock.locked()

    def kept_state(self, upload_id: str) -> Upload | None:
        return None  # a lock here lasts as long as its request

    async def held_anywhere(self, upload_id: str) -> bool:
        """Held by any request that could write this upload (here: this process)."""
        return self.is_held(upload_id)

    def request_stop(self, upload_id: str) -> None:
        """Someone elsewhere (another process of this host) wants the upload: if a request
        here holds it, ask it to let go, as a newcomer here would."""
        entry = self._entries.get(upload_id)
        if entry is not None and entry.holder is not None:
            entry.holder.request_stop()

    async def start(self) -> None:
        pass

    def stop_all(self) -> None:
        """Shutdown: every request holding an upload stops reading, saves what it received
        and answers; requests that take an upload from now on do so at once."""
        self.stopping = True
        for entry in self._entries.values():
            if entry.holder is not None:
                entry.holder.request_stop()

    async def stop(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str, *, wait: bool = True) -> AsyncIterator[Holding]:
        entry = self._entries.get(upload_id)
        if entry is None:
            entry = self._entries[upload_id] = _Entry()
        entry.waiters += 1
        try:
            if entry.lock.locked():
                if not wait:
                    raise UploadLocked(headers={"Retry-After": "1"})
                if entry.holder is not None:
                    entry.holder.request_stop()
                try:
                    async with asyncio.timeout(self.acquire_timeout):
                        await entry.lock.acquire()
                except TimeoutError:
                    raise UploadLocked(
                        "Another request holds this upload and did not let go; retry shortly.",
                        headers={"Retry-After": "2"},
                    ) from None
            else:
                await entry.lock.acquire()
        finally:
            entry.waiters -= 1
        holding = Holding(upload_id)
        entry.holder = holding
        if self.stopping:
            holding.request_stop()
        try:
            yield holding
        finally:
            entry.holder = None
            entry.lock.release()
            if entry.waiters == 0 and not entry.lock.locked():
                self._entries.pop(upload_id, None)
