"""The store interface: where an upload's bytes live, and what a store can do.

Stores declare capabilities; the server advertises and offers only what the configured
store declares (tusd's composable stores, in Python).

A store that spreads an upload over several objects (S3: parts and fragments) describes
where the bytes are with a `Layout`. The store never writes that record itself: it hands
back what changed (`Stored`), and the server commits it in the same database transaction
that moves the upload's offset, so the record and the offset can never disagree.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

#: given some ids, answers which of them the state database still needs
LiveFilter = Callable[[list[str]], Awaitable[set[str]]]


@dataclass(frozen=True)
class LiveUploads:
    """What the state database still needs, asked by garbage collection."""

    #: multipart upload ids that belong to an upload we keep
    handles: LiveFilter
    #: upload ids still receiving bytes (they may own fragments)
    receiving: LiveFilter
    #: upload ids whose bytes we keep (receiving, concatenating or finished)
    kept: LiveFilter


class Capability(enum.StrEnum):
    #: can build one upload from others (tus concatenation)
    CONCATENATION = "concatenation"
    #: can serve a byte range of a finished upload
    RANGE_READS = "range-reads"
    #: can take bytes for an upload whose length is not known yet
    DEFERRED_LENGTH = "deferred-length"


class StorageError(Exception):
    """The store failed; nothing the client sent was wrong."""


@dataclass(frozen=True, slots=True)
class Part:
    """One uploaded part of a multipart object, as recorded in the state database."""

    number: int
    size: int
    etag: str
    #: base64 MD5 of the part's bytes: the Content-MD5 the object store verified
    checksum: str
    #: base64 SHA-256, sent (and repeated at completion) where the store verifies it
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Fragment:
    """Bytes that did not fill a part when their request ended, kept as a small object."""

    #: the upload offset of the fragment's first byte
    offset: int
    size: int
    key: str
    #: base64 MD5 of the fragment's bytes
    checksum: str

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a store keeps one upload's bytes, beyond what the upload record says.

    FileStore and MemoryStore need none of it (the empty layout). For S3: the object key,
    the multipart upload id while the object is being assembled (None once it is whole),
    the fixed part size, and the pending fragments in offset order.
    """

    key: str | None = None
    handle: str | None = None
    part_size: int | None = None
    fragments: tuple[Fragment, ...] = field(default=())

    @property
    def fragments_size(self) -> int:
        return sum(fragment.size for fragment in self.fragments)


EMPTY_LAYOUT = Layout()


@dataclass(frozen=True, slots=True)
class Stored:
    """What one appender stored; committed together with the upload's new offset."""

    #: bytes stored at the appender's offset
    size: int
    #: the upload's layout with these bytes in it
    layout: Layout = EMPTY_LAYOUT
    #: parts uploaded by this request, to record
    new_parts: tuple[Part, ...] = ()
    #: objects that the new layout no longer needs, to remove once the commit is done
    obsolete: tuple[str, ...] = ()


class Appender(abc.ABC):
    """One request's writes to one upload, starting at a fixed offset.

    `write` may buffer; `close` makes every written byte durable and reports what it stored.
    After an error nothing past the last durable byte may be counted.
    """

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> Stored:
        """Flush and persist; says how many bytes this appender stored, and where."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Give up: release resources; written bytes need not be kept."""


@dataclass(frozen=True, slots=True)
class Source:
    """A finished upload that a concatenation reads from."""

    upload_id: str
    length: int
    layout: Layout = EMPTY_LAYOUT


class Store(abc.ABC):
    capabilities: frozenset[Capability] = frozenset()
    #: True when the store keeps a Layout per upload that the server must record and load
    uses_layout: bool = False
    #: the largest upload the store can hold (None: no limit of its own)
    max_upload_size: int | None = None

    @abc.abstractmethod
    async def create(self, upload_id: str, length: int | None) -> Layout:
        """Prepare room for a new upload (length None when deferred)."""

    @abc.abstractmethod
    def appender(
        self,
        upload_id: str,
        offset: int,
        layout: Layout = EMPTY_LAYOUT,
        length: int | None = None,
    ) -> Appender:
        """Writes that start at `offset`, the upload's current committed offset.

        `length` is the upload's length when known (or declared by this request), so that
        a store can tell the last bytes from the others.
        """

    def room(self, layout: Layout, offset: int) -> int | None:
        """How many more bytes an upload of unknown length can take (None: unbounded)."""
        return None

    @abc.abstractmethod
    def read(
        self, upload_id: str, start: int, end: int, layout: Layout = EMPTY_LAYOUT
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a finished upload without holding them all."""

    @abc.abstractmethod
    async def concatenate(
        self, upload_id: str, sources: Sequence[Source], layout: Layout = EMPTY_LAYOUT
    ) -> Layout:
        """Fill `upload_id` with the bytes of each source in order; returns its layout."""

    @abc.abstractmethod
    async def finish(
        self,
        upload_id: str,
        length: int,
        layout: Layout = EMPTY_LAYOUT,
        parts: Sequence[Part] = (),
    ) -> Layout:
        """Every byte has arrived (and is recorded): make the upload whole and durable.

        Runs after the finished state is committed, and may run again if it failed, so it
        must be idempotent. `parts` are the recorded parts, in order.
        """

    @abc.abstractmethod
    async def delete(self, upload_id: str, layout: Layout = EMPTY_LAYOUT) -> None:
        """Free the upload's storage; deleting what is not there is not an error."""

    @abc.abstractmethod
    def location(self, upload_id: str) -> dict[str, str]:
        """Where the upload's bytes are, for a program that reads them without the server
        (a hook's event carries it): `type` and what that type needs to find them."""

    async def discard(self, keys: Sequence[str]) -> None:
        """Remove objects a committed layout no longer needs (best effort)."""

    async def open(self) -> None:
        """Check the store is usable before the first request (bucket, credentials)."""

    async def collect_garbage(self, live: LiveUploads, min_age: timedelta) -> int:
        """Remove what the store holds for uploads the database no longer knows (or no
        longer needs), left at least `min_age` ago; returns how many things were removed."""
        return 0

    async def close(self) -> None:
        """Release the store's own resources at shutdown."""
