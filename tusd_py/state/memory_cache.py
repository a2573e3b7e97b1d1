"""The hot state of uploads (offset, length, status, expiry), kept beside the database.

Written after every commit; versioned so that an older writer can never replace a newer
record. StateCache is the in-process cache of a server without Redis (one process, or
the workers of one host, each with its own: an entry is believed only while no other
process has held the upload since, which HostLocks' tenure says); RedisStateCache
(redis_cache.py) is shared by every instance. Both implement core.ports.UploadCache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from tusd_protocol.state import Upload


class StateCache:
    #: every commit of this process goes through here, and an entry that another process's
    #: commit may have overtaken is not given out (`current`): a write may trust what it reads
    authoritative = True

    def __init__(
        self, max_entries: int = 100_000, current: Callable[[str], bool] | None = None
    ) -> None:
        self._entries: OrderedDict[str, Upload] = OrderedDict()
        self._max_entries = max_entries
        #: whether this process's memory of an upload is still the last word (no other
        #: process has held it since): HostLocks.is_tenured; None: always
        self.current = current
        self.hits = 0
        self.misses = 0

    def drop(self, upload_id: str) -> None:
        """Forget an upload now (another process has held it since we did)."""
        self._entries.pop(upload_id, None)

    async def get(self, upload_id: str) -> Upload | None:
        upload = self._entries.get(upload_id)
        if upload is not None and self.current is not None and not self.current(upload_id):
            del self._entries[upload_id]
            upload = None
        if upload is None:
            self.misses += 1
            return None
        self._entries.move_to_end(upload_id)
        self.hits += 1
        return upload

    async def put(self, upload: Upload) -> None:
        current = self._entries.get(upload.id)
        if current is not None and current.version > upload.version:
            return
        self._entries[upload.id] = upload
        self._entries.move_to_end(upload.id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def refresh(self, upload: Upload) -> None:
        self._entries.pop(upload.id, None)
        await self.put(upload)

    async def forget(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)
