"""The store interface: where an upload's bytes live, and what a store can do.

Stores declare capabilities; the server advertises and offers only what the configured
store declares (tusd's composable stores, in Python).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence


class Capability(enum.StrEnum):
    #: can build one upload from others (tus concatenation)
    CONCATENATION = "concatenation"
    #: can serve a byte range of a finished upload
    RANGE_READS = "range-reads"
    #: can take bytes for an upload whose length is not known yet
    DEFERRED_LENGTH = "deferred-length"


class StorageError(Exception):
    """The store failed; nothing the client sent was wrong."""


class Appender(abc.ABC):
    """One request's writes to one upload, starting at a fixed offset.

    `write` may buffer; `close` makes every written byte durable and returns how many bytes
    were stored. After an error nothing past the last durable byte may be counted.
    """

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> int:
        """Flush and persist; returns the number of bytes this appender stored."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Give up: release resources; written bytes need not be kept."""


class Store(abc.ABC):
    capabilities: frozenset[Capability] = frozenset()

    @abc.abstractmethod
    async def create(self, upload_id: str, length: int | None) -> None:
        """Prepare room for a new upload (length None when deferred)."""

    @abc.abstractmethod
    def appender(self, upload_id: str, offset: int) -> Appender:
        """Writes that start at `offset`, the upload's current committed offset."""

    @abc.abstractmethod
    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a finished upload without holding them all."""

    @abc.abstractmethod
    async def concatenate(self, upload_id: str, sources: Sequence[tuple[str, int]]) -> None:
        """Fill `upload_id` with the bytes of each (source id, length) in order."""

    @abc.abstractmethod
    async def finish(self, upload_id: str, length: int) -> None:
        """Every byte has arrived: make the upload whole and durable."""

    @abc.abstractmethod
    async def delete(self, upload_id: str) -> None:
        """Free the upload's storage; deleting what is not there is not an error."""

    async def close(self) -> None:
        """Release the store's own resources at shutdown."""
