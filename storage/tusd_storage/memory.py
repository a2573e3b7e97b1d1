"""MemoryStore: bytes in a dict. For unit tests only; it holds everything in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from .base import (
    EMPTY_LAYOUT,
    Appender,
    Capability,
    Layout,
    Part,
    Source,
    StorageError,
    Store,
    Stored,
)


class MemoryStore(Store):
    capabilities = frozenset(
        {Capability.CONCATENATION, Capability.RANGE_READS, Capability.DEFERRED_LENGTH}
    )

    def __init__(self) -> None:
        self.blobs: dict[str, bytearray] = {}

    def location(self, upload_id: str) -> dict[str, str]:
        return {"type": "memory", "id": upload_id}

    async def create(self, upload_id: str, length: int | None) -> Layout:
        if upload_id in self.blobs:
            raise StorageError(f"upload {upload_id} exists")
        self.blobs[upload_id] = bytearray()
        return EMPTY_LAYOUT

    def appender(
        self,
        upload_id: str,
        offset: int,
        layout: Layout = EMPTY_LAYOUT,
        length: int | None = None,
    ) -> Appender:
        return _MemoryAppender(self._blob(upload_id), offset)

    async def read(
        self, upload_id: str, start: int, end: int, layout: Layout = EMPTY_LAYOUT
    ) -> AsyncIterator[bytes]:
        yield bytes(self._blob(upload_id)[start:end])

    async def concatenate(
        self, upload_id: str, sources: Sequence[Source], layout: Layout = EMPTY_LAYOUT
    ) -> Layout:
        target = self._blob(upload_id)
        target.clear()
        for source in sources:
            target += self._blob(source.upload_id)[: source.length]
        return layout

    async def finish(
        self,
        upload_id: str,
        length: int,
        layout: Layout = EMPTY_LAYOUT,
        parts: Sequence[Part] = (),
    ) -> Layout:
        del self._blob(upload_id)[length:]
        return layout

    async def delete(self, upload_id: str, layout: Layout = EMPTY_LAYOUT) -> None:
        self.blobs.pop(upload_id, None)

    def _blob(self, upload_id: str) -> bytearray:
        try:
            return self.blobs[upload_id]
        except KeyError:
            raise StorageError(f"upload {upload_id} is missing") from None


class _MemoryAppender(Appender):
    def __init__(self, blob: bytearray, offset: int) -> None:
        self._blob = blob
        self._start = self._position = offset

    async def write(self, chunk: bytes) -> None:
        self._blob[self._position : self._position + len(chunk)] = chunk
        self._position += len(chunk)

    async def close(self) -> Stored:
        return Stored(self._position - self._start)

    async def abort(self) -> None:
        pass
