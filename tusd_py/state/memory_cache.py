"""The hot state of uploads (offset, length, status, expiry), kept beside the database.

Written after every commit; versioned so that an older writer can never replace a newer
record. StateCache is the in-process cache of a single server process; RedisStateCache
(redis_cache.py) is shared by every instance; NoCache stands in when several processes
share the database without Redis. All implement core.ports.UploadCache.
"""

from __future__ import annotations

from collections import OrderedDict

from tusd_protocol.state import Upload


class StateCache:
    #: every commit of the only process goes through here: a write may trust what it reads
    authoritative = True

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, Upload] = OrderedDict()
        self._max_entries = max_entries
        self.hits = 0
        self.misses = 0

    async def get(self, upload_id: str) -> Upload | None:
        upload = self._entries.get(upload_id)
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


class NoCache:
    """For processes that share a database without a shared cache (`serve --workers N`
    without Redis): any of them may have committed last, so none may answer from memory;
    every read goes to the database."""

    authoritative = False

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    async def get(self, upload_id: str) -> Upload | None:
        self.misses += 1
        return None

    async def put(self, upload: Upload) -> None:
        pass

    async def refresh(self, upload: Upload) -> None:
        pass

    async def forget(self, upload_id: str) -> None:
        pass
