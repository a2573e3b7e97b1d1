"""S3Store: an upload is one S3 multipart upload, cut into equal parts.

- One multipart upload per tus upload, created with the upload. Its part size is fixed
  when the upload is created (`part_size_for`): every part but the last has exactly that
  size, which stores that demand equal parts accept, and a known length never needs more
  than 10,000 parts.
- Each part is sent with Content-MD5 (every S3 implementation verifies it) and, where the
  endpoint verifies it, x-amz-checksum-sha256. The part's number, size, ETag and MD5 go
  back to the server, which records them in the same transaction that moves the offset;
  completion uses that record, never ListParts.
- Bytes that do not fill a part when a request ends are put as a fragment object under
  `<prefix>.fragments/<upload id>/`, recorded likewise, and folded into the next part.
  Nothing lives only in one server's memory or on its disk between requests.
- Memory: every part and fragment buffer comes from one budget per store
  (`max_buffer_memory`, see buffers.py); a request holds at most one part being filled and
  PARTS_IN_FLIGHT being sent, each sized to what the upload can still receive; part uploads
  are limited per process (`max_concurrent_parts`), whatever the upload size.

minio is synchronous: every S3 call runs in this store's own thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from . import s3api
from .base import (
    EMPTY_LAYOUT,
    Appender,
    Capability,
    Fragment,
    Layout,
    LiveUploads,
    Part,
    Source,
    StorageError,
    Store,
    Stored,
)
from .buffers import DEFAULT_WAIT_TIMEOUT, Buffer, BufferPool

log = logging.getLogger("tusd_storage.s3")

MiB = 1024 * 1024
#: S3's limits: parts but the last at least 5 MiB, at most 5 GiB, at most 10,000 of them
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB
DEFAULT_PART_SIZE = 8 * MiB
#: the bytes of all part and fragment buffers of one store (one process) together
DEFAULT_BUFFER_MEMORY = 256 * MiB
#: fragments an upload may collect before the next one is merged with them into one
MAX_FRAGMENTS = 8
#: parts one request may have in flight at once (the gateway's round trip per part is
#: what bounds a single upload's speed: 112 -> 148 MB/s from 1 to 4 on Ceph RGW)
PARTS_IN_FLIGHT = 4
#: what endpoints answer to a wrong x-amz-checksum-sha256 (AWS, MinIO and others)
CHECKSUM_REFUSALS = frozenset(
    {"BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch", "InvalidDigest"}
)
READ_BLOCK = 1024 * 1024
FRAGMENTS_DIR = ".fragments/"

T = TypeVar("T")


def part_size_for(length: int | None, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The part size of a new upload: the preferred size, grown (in whole MiB) until the
    known length fits in 10,000 parts."""
    size = max(preferred, MIN_PART_SIZE)
    if length is not None and -(-length // MAX_PARTS) > size:
        size = -(-length // MAX_PARTS)
        size = -(-size // MiB) * MiB
    return min(size, MAX_PART_SIZE)


def md5_base64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


@dataclass(frozen=True)
class S3Config:
    bucket: str
    #: key prefix for every object of ours ("" or ending in "/")
    prefix: str = ""
    #: host[:port] of the S3 endpoint
    endpoint: str = "s3.amazonaws.com"
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = True
    create_bucket: bool = False
    part_size: int = DEFAULT_PART_SIZE
    #: part uploads in flight at once in this process
    max_concurrent_parts: int = 16
    #: bytes of all the part and fragment buffers of this store together (see buffers.py)
    max_buffer_memory: int = DEFAULT_BUFFER_MEMORY
    #: seconds a request waits for a buffer before it answers 503
    buffer_wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("the S3 store needs a bucket")
        if self.part_size < MIN_PART_SIZE or self.part_size > MAX_PART_SIZE:
            raise ValueError(
                f"the S3 part size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes"
            )
        if self.max_concurrent_parts < 1:
            raise ValueError("at least one part upload must be allowed at a time")
        if self.max_buffer_memory < self.part_size:
            raise ValueError(
                f"the buffer memory ({self.max_buffer_memory} bytes) must hold at least one "
                f"part ({self.part_size} bytes)"
            )
        if self.buffer_wait_timeout < 0:
            raise ValueError("the buffer wait timeout must not be negative")
        prefix = self.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        object.__setattr__(self, "prefix", prefix)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Config:
        """`s3://BUCKET/PREFIX` plus the connection options."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
        return cls(bucket=parts.netloc, prefix=unquote(parts.path.lstrip("/")), **options)


class S3Store(Store):
    capabilities = frozenset(
        {Capability.CONCATENATION, Capability.RANGE_READS, Capability.DEFERRED_LENGTH}
    )
    uses_layout = True
    max_upload_size = MAX_OBJECT_SIZE

    def __init__(self, config: S3Config, client: Minio | None = None) -> None:
        self.config = config
        workers = config.max_concurrent_parts + 8
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tusd-s3")
        self.client = client or Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=urllib3.PoolManager(
                maxsize=workers,
                timeout=urllib3.Timeout(connect=10, read=300),
                retries=urllib3.Retry(
                    total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
                ),
            ),
        )
        self._part_slots = asyncio.Semaphore(config.max_concurrent_parts)
        #: every part and fragment buffer of this store comes from here
        self.buffers = BufferPool(config.max_buffer_memory, config.buffer_wait_timeout)
        #: whether the endpoint verifies x-amz-checksum-sha256 (found out by open())
        self.verifies_sha256 = False

    # --- plumbing ----------------------------------------------------------------------

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking S3 call in our pool; S3 failures become StorageError."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(function, *args))
        except S3_FAILURES as exc:
            raise _storage_error(function, exc) from exc

    def start(
        self, done: Callable[[], None], function: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Start a blocking S3 call that works on a buffer; `done` runs on the event loop
        once the worker thread has finished with it (also when the caller stopped waiting:
        the thread goes on), then the returned future gets the outcome, S3 failures as
        StorageError. Await it through asyncio.shield: the outcome is not the caller's to
        cancel."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()

        def settle(finished: concurrent.futures.Future[T]) -> None:
            try:
                done()
            finally:
                if finished.cancelled():
                    outcome.set_exception(StorageError("the S3 store was closed"))
                elif (exc := finished.exception()) is not None:
                    if isinstance(exc, S3_FAILURES):
                        error = _storage_error(function, exc)
                        error.__cause__ = exc
                        exc = error
                    outcome.set_exception(exc)
                else:
                    outcome.set_result(finished.result())

        def threadside(finished: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, finished)

        try:
            future = self._pool.submit(function, *args)
        except RuntimeError as exc:  # the pool is shut down
            done()
            raise StorageError("the S3 store was closed") from exc
        future.add_done_callback(threadside)
        return outcome

    def location(self, upload_id: str) -> dict[str, str]:
        scheme = "https" if self.config.secure else "http"
        return {
            "type": "s3",
            "endpoint": f"{scheme}://{self.config.endpoint}",
            "region": self.config.region,
            "bucket": self.config.bucket,
            "key": self.key(upload_id),
        }

    def key(self, upload_id: str) -> str:
        if not upload_id or "/" in upload_id:
            raise StorageError(f"invalid upload id {upload_id!r}")
        return self.config.prefix + upload_id

    def fragments_prefix(self, upload_id: str) -> str:
        return (
            f"{self.config.prefix}{FRAGMENTS_DIR}{self.key(upload_id)[len(self.config.prefix) :]}/"
        )

    def fragment_key(self, upload_id: str, offset: int, size: int) -> str:
        return f"{self.fragments_prefix(upload_id)}{offset:020d}-{size}"

    @property
    def bucket(self) -> str:
        return self.config.bucket

    async def open(self) -> None:
        """Check the bucket (create it when asked) and learn what the endpoint verifies."""
        exists = await self.run(self.client.bucket_exists, self.bucket)
        if not exists:
            if not self.config.create_bucket:
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist; create it or pass --s3-create-bucket"
                )
            await self.run(self.client.make_bucket, self.bucket)
        self.verifies_sha256 = await self.run(self._probe_sha256)
        log.info(
            "S3 store s3://%s/%s on %s: parts of %d bytes, Content-MD5%s",
            self.bucket,
            self.config.prefix,
            self.config.endpoint,
            self.config.part_size,
            " and x-amz-checksum-sha256" if self.verifies_sha256 else "",
        )

    def _probe_sha256(self) -> bool:
        """Put a tiny object with a wrong x-amz-checksum-sha256: an endpoint that refuses it
        checks the header (so we send it); one that takes it ignores it (so we do not)."""
        key = f"{self.config.prefix}{FRAGMENTS_DIR}.probe-checksum"
        wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
        try:
            s3api.put_object(
                self.client, self.bucket, key, b"probe", {"x-amz-checksum-sha256": wrong}
            )
        except S3Error as exc:
            if exc.code in CHECKSUM_REFUSALS:
                return True
            raise  # AccessDenied and the like: the operator must hear of it at start
        with contextlib.suppress(S3Error):
            self.client.remove_object(self.bucket, key)
        return False

    def checksum_headers(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[str, str | None, dict[str, str]]:
        """Content-MD5 (recorded) and, where verified, x-amz-checksum-sha256 (recorded too:
        completion must repeat it)."""
        md5 = md5_base64(data)
        headers = {"Content-MD5": md5}
        sha256 = None
        if self.verifies_sha256:
            sha256 = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
            headers["x-amz-checksum-sha256"] = sha256
        return md5, sha256, headers

    # --- the store interface -----------------------------------------------------------

    async def create(self, upload_id: str, length: int | None) -> Layout:
        key = self.key(upload_id)
        if length == 0:
            await self.run(self._put, key, b"")
            return Layout(key=key)
        headers = {"Content-Type": "application/octet-stream"}
        if self.verifies_sha256:
            headers["x-amz-checksum-algorithm"] = "SHA256"
        handle = await self.run(
            s3api.create_multipart_upload, self.client, self.bucket, key, headers
        )
        return Layout(
            key=key, handle=handle, part_size=part_size_for(length, self.config.part_size)
        )

    def appender(
        self,
        upload_id: str,
        offset: int,
        layout: Layout = EMPTY_LAYOUT,
        length: int | None = None,
    ) -> Appender:
        return S3Appender(self, upload_id, offset, layout, length)

    def room(self, layout: Layout, offset: int) -> int | None:
        if layout.part_size is None:
            return None
        return max(MAX_PARTS * layout.part_size - offset, 0)

    async def read(
        self, upload_id: str, start: int, end: int, layout: Layout = EMPTY_LAYOUT
    ) -> AsyncIterator[bytes]:
        if end <= start:
            return
        key = layout.key or self.key(upload_id)
        response = await self.run(
            functools.partial(self.client.get_object, offset=start, length=end - start),
            self.bucket,
            key,
        )
        try:
            position = start
            while position < end:
                block = await self.run(response.read, min(READ_BLOCK, end - position))
                if not block:
                    raise StorageError(f"object {key} ends at {position}, expected {end}")
                position += len(block)
                yield block
        finally:
            response.close()
            response.release_conn()

    async def concatenate(
        self, upload_id: str, sources: Sequence[Source], layout: Layout = EMPTY_LAYOUT
    ) -> Layout:
        """Assemble the final object in equal parts: a part inside one source is copied by
        the server (UploadPartCopy); a part that spans sources is streamed through us."""
        key = layout.key or self.key(upload_id)
        total = sum(source.length for source in sources)
        if layout.handle is None:
            return layout  # already assembled
        if total == 0:
            await self.run(self._put, key, b"")
            await self.abort_quietly(key, layout.handle)
            return replace(layout, handle=None)
        part_size = part_size_for(total, self.config.part_size)
        spans: list[tuple[str, int, int]] = []  # (source key, first byte, end) in order
        for source in sources:
            if source.length:
                spans.append((source.layout.key or self.key(source.upload_id), 0, source.length))

        async def one_part(number: int, pieces: list[tuple[str, int, int]]) -> Part:
            if len(pieces) > 1:  # the part spans sources: streamed through a buffer
                size = sum(end - first for _, first, end in pieces)
                return await self.send_from_buffer(
                    size, self._stream_part, key, layout.handle, number, pieces
                )
            source_key, first, end = pieces[0]
            async with self._part_slots:
                etag, sha256 = await self.run(
                    s3api.upload_part_copy,
                    self.client,
                    self.bucket,
                    key,
                    layout.handle,
                    number,
                    source_key,
                    first,
                    end - 1,
                )
            return Part(number, end - first, etag, "", sha256)

        jobs = []
        for number, pieces in enumerate(_cut(spans, part_size), start=1):
            jobs.append(one_part(number, pieces))
        parts = await asyncio.gather(*jobs)
        await self._complete(key, layout.handle, parts, total)
        return replace(layout, handle=None, part_size=part_size, fragments=())

    async def send_from_buffer(self, size: int, function: Callable[..., T], *args: Any) -> T:
        """function(*args, buffer) in a worker thread with a buffer of `size` bytes and a
        part slot: the buffer first (the caller holds none), then the slot; both go back
        when the thread is done."""
        buffer = await self.buffers.take(size)
        try:
            await self._part_slots.acquire()
        except BaseException:
            self.buffers.give(buffer)
            raise

        def done() -> None:
            self._part_slots.release()
            self.buffers.give(buffer)

        return await asyncio.shield(self.start(done, function, *args, buffer))

    def _stream_part(
        self,
        key: str,
        handle: str,
        number: int,
        pieces: list[tuple[str, int, int]],
        buffer: Buffer,
    ) -> Part:
        position = 0
        for source_key, first, end in pieces:
            self._get_into(source_key, first, end - first, buffer.view[position:])
            position += end - first
        return self._upload_part_from(key, handle, number, buffer.view, position)

    def _upload_part_from(
        self, key: str, handle: str, number: int, view: memoryview, size: int
    ) -> Part:
        """UploadPart of the first `size` bytes of `view`."""
        data = view[:size]
        md5, sha256, headers = self.checksum_headers(data)
        etag = s3api.upload_part(self.client, self.bucket, key, handle, number, data, headers)
        return Part(number, size, etag, md5, sha256)

    async def finish(
        self,
        upload_id: str,
        length: int,
        layout: Layout = EMPTY_LAYOUT,
        parts: Sequence[Part] = (),
    ) -> Layout:
        if layout.handle is None or layout.key is None:
            return layout  # whole already (zero length, concatenated, or finished before)
        if length == 0:
            # a deferred upload declared empty: S3 completes no multipart upload without parts
            await self.run(self._put, layout.key, b"")
            await self.abort_quietly(layout.key, layout.handle)
            return replace(layout, handle=None, fragments=())
        parts = list(parts)
        if layout.fragments:
            # the length was declared after the last bytes came: they are the last part
            parts.append(
                await self.send_from_buffer(
                    layout.fragments_size, self._fragments_as_part, layout, len(parts) + 1
                )
            )
        await self._complete(layout.key, layout.handle, parts, length)
        await self._remove_fragments(upload_id)
        return replace(layout, handle=None, fragments=())

    def _fragments_as_part(self, layout: Layout, number: int, buffer: Buffer) -> Part:
        assert layout.key is not None and layout.handle is not None
        self.fetch_fragments_into(layout.fragments, buffer.view)
        return self._upload_part_from(
            layout.key, layout.handle, number, buffer.view, layout.fragments_size
        )

    async def _complete(self, key: str, handle: str, parts: Sequence[Part], length: int) -> None:
        numbers = [part.number for part in parts]
        if numbers != list(range(1, len(parts) + 1)) or sum(p.size for p in parts) != length:
            raise StorageError(
                f"the recorded parts of {key} do not add up to {length} bytes in order"
            )
        completed = [s3api.CompletedPart(p.number, p.etag, p.sha256) for p in parts]
        try:
            await self.run(
                s3api.complete_multipart_upload, self.client, self.bucket, key, handle, completed
            )
        except StorageError as exc:
            # a completion that went through but whose answer was lost: the object is there
            if not await self._object_has_size(key, length):
                raise
            log.info("multipart upload of %s was already complete (%s)", key, exc)

    async def _object_has_size(self, key: str, length: int) -> bool:
        try:
            stat = await self.run(self.client.stat_object, self.bucket, key)
        except StorageError:
            return False
        return stat.size == length

    async def delete(self, upload_id: str, layout: Layout = EMPTY_LAYOUT) -> None:
        key = layout.key or self.key(upload_id)
        if layout.handle is not None:
            await self.abort_quietly(key, layout.handle)
        await self.run(self.client.remove_object, self.bucket, key)
        await self._remove_fragments(upload_id)

    async def abort_quietly(self, key: str, handle: str) -> None:
        """AbortMultipartUpload; one that is gone already is fine."""
        try:
            await self.run(s3api.abort_multipart_upload, self.client, self.bucket, key, handle)
        except StorageError as exc:
            if not _is_missing(exc):
                raise

    async def discard(self, keys: Sequence[str]) -> None:
        if keys:
            try:
                await self.run(self._remove_keys, list(keys))
            except StorageError as exc:  # harmless: completion and deletion sweep the prefix
                log.warning("could not remove %d obsolete fragment(s): %s", len(keys), exc)

    async def _remove_fragments(self, upload_id: str) -> None:
        prefix = self.fragments_prefix(upload_id)
        await self.run(self._remove_prefix, prefix)

    async def collect_garbage(self, live: LiveUploads, min_age: timedelta) -> int:
        """Abort multipart uploads under our prefix that no upload record names, remove the
        fragments of uploads that are no longer receiving bytes, and the objects of uploads
        that were terminated, expired or never recorded."""
        removed = 0
        cutoff = datetime.now(UTC) - min_age
        open_uploads = await self.run(
            lambda: list(s3api.list_multipart_uploads(self.client, self.bucket, self.config.prefix))
        )
        live_handles = await live.handles([u.upload_id for u in open_uploads])
        for upload in open_uploads:
            if upload.upload_id in live_handles:
                continue
            if upload.initiated is not None and upload.initiated > cutoff:
                continue  # perhaps an upload being created right now
            await self.abort_quietly(upload.key, upload.upload_id)
            log.info("aborted orphaned multipart upload %s of %s", upload.upload_id, upload.key)
            removed += 1
        owners = await self.run(self._fragment_owners, cutoff)
        still_receiving = await live.receiving(sorted(owners))
        for upload_id in sorted(owners - still_receiving):
            await self._remove_fragments(upload_id)
            removed += 1
        objects = await self.run(self._upload_objects, cutoff)
        kept = await live.kept(sorted(objects))
        stale = [self.key(upload_id) for upload_id in sorted(set(objects) - kept)]
        if stale:
            await self.run(self._remove_keys, stale)
            removed += len(stale)
        return removed

    def _upload_objects(self, cutoff: datetime) -> set[str]:
        """Upload ids that have a whole object under our prefix, older than `cutoff`."""
        prefix = self.config.prefix
        found = set()
        for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=False):
            rest = (item.object_name or "")[len(prefix) :]
            is_upload = bool(rest) and "/" not in rest and not rest.startswith(".")
            old_enough = item.last_modified is None or item.last_modified <= cutoff
            if is_upload and old_enough:
                found.add(rest)
        return found

    def _fragment_owners(self, cutoff: datetime) -> set[str]:
        """Upload ids with fragment objects older than `cutoff`."""
        prefix = self.config.prefix + FRAGMENTS_DIR
        found = set()
        for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            rest = (item.object_name or "")[len(prefix) :]
            modified = item.last_modified
            if "/" in rest and (modified is None or modified <= cutoff):
                found.add(rest.split("/", 1)[0])
        return found

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.buffers.clear()

    # --- blocking helpers (run in the pool) --------------------------------------------

    def _put(self, key: str, data: bytes | bytearray | memoryview) -> str:
        """PutObject with our checksum headers; returns the MD5 the endpoint verified."""
        md5, _, headers = self.checksum_headers(data)
        s3api.put_object(self.client, self.bucket, key, data, headers)
        return md5

    def _get_into(self, key: str, offset: int, length: int, view: memoryview) -> None:
        """Bytes offset..offset+length of an object into the start of `view`, read in
        blocks of READ_BLOCK (no copy of the whole range beside the buffer)."""
        response = self.client.get_object(self.bucket, key, offset=offset, length=length)
        got = 0
        try:
            while got < length:
                count = response.readinto(view[got : got + min(READ_BLOCK, length - got)])
                if not count:
                    break
                got += count
        finally:
            response.close()
            response.release_conn()
        if got != length:
            raise StorageError(f"object {key} gave {got} bytes, expected {length}")

    def fetch_fragments_into(self, fragments: Sequence[Fragment], view: memoryview) -> None:
        """The fragments' bytes, in order, at the start of `view`, each checked against
        its recorded MD5."""
        position = 0
        for fragment in fragments:
            self._get_into(fragment.key, 0, fragment.size, view[position:])
            if md5_base64(view[position : position + fragment.size]) != fragment.checksum:
                raise StorageError(f"fragment {fragment.key} does not match its recorded MD5")
            position += fragment.size

    def _remove_keys(self, keys: list[str]) -> None:
        from minio.deleteobjects import DeleteObject

        errors = list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
        if errors:
            raise StorageError(f"could not remove {len(errors)} object(s): {errors[0]}")

    def _remove_prefix(self, prefix: str) -> None:
        keys = [
            item.object_name
            for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if item.object_name
        ]
        if keys:
            self._remove_keys(keys)


S3_FAILURES = (S3Error, s3api.CompleteFailed, urllib3.exceptions.HTTPError, OSError)


def _storage_error(function: Callable[..., Any], exc: BaseException) -> StorageError:
    return StorageError(f"S3 {getattr(function, '__name__', 'call')}: {exc}")


def _is_missing(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code in ("NoSuchUpload", "NoSuchKey")


def _cut(spans: Sequence[tuple[str, int, int]], part_size: int) -> list[list[tuple[str, int, int]]]:
    """Cut the concatenation of `spans` into parts of `part_size` (the last may be shorter),
    each part a list of (key, first, end) pieces."""
    parts: list[list[tuple[str, int, int]]] = []
    current: list[tuple[str, int, int]] = []
    room = part_size
    for key, first, end in spans:
        position = first
        while position < end:
            take = min(room, end - position)
            current.append((key, position, position + take))
            position += take
            room -= take
            if room == 0:
                parts.append(current)
                current, room = [], part_size
    if current:
        parts.append(current)
    return parts


@dataclass(eq=False)
class _InFlight:
    """A part being sent in a worker thread, with the buffer it is sent from."""

    buffer: Buffer | None
    #: the request wants the buffer back for its next part once this one is sent
    recycle: bool = False
    #: the part, once S3 took it (or the failure)
    outcome: asyncio.Future[Part] = field(init=False, repr=False)


class S3Appender(Appender):
    """One request's bytes into an S3 upload: whole parts as they fill, the rest a fragment.

    While parts are being sent (in worker threads), the next one is being filled, so the
    client is read at full speed and the gateway's round trip per part is overlapped; at
    most PARTS_IN_FLIGHT parts per request are in flight, and the process-wide limit
    (max_concurrent_parts) holds across all requests.

    Memory: every part is filled in a buffer from the store's pool, sized to what the part
    can still receive (the upload's remaining length, at most a part). The request waits
    for the pool only while it holds no buffer; a further part in flight gets a buffer only
    if one is free at once (`try_take`), otherwise the request waits for its own oldest
    part to be sent and fills the next one in that part's buffer (see tusd_storage.buffers).
    """

    def __init__(
        self, store: S3Store, upload_id: str, offset: int, layout: Layout, length: int | None
    ) -> None:
        if layout.key is None or layout.part_size is None or layout.handle is None:
            raise StorageError(f"upload {upload_id} has no open multipart upload")
        self._store = store
        self._upload_id = upload_id
        self._layout = layout
        self._key = layout.key
        self._handle = layout.handle
        self._part_size = layout.part_size
        self._offset = offset
        self._length = length
        self._fragments = list(layout.fragments)
        self._fragments_size = layout.fragments_size
        parts_end = offset - self._fragments_size
        if parts_end < 0 or parts_end % self._part_size:
            raise StorageError(
                f"upload {upload_id}: offset {offset} does not match its recorded parts "
                f"and fragments"
            )
        self._next_number = parts_end // self._part_size + 1
        #: the part being filled: its new bytes at the start (the fragments' bytes go in
        #: front of them when it is sent); taken from the pool when the first byte comes
        self._buffer: Buffer | None = None
        self._filled = 0
        self._written = 0
        self._new_parts: list[Part] = []
        self._obsolete: list[str] = []
        self._inflight: deque[_InFlight] = deque()
        #: buffers of this request's sent parts, kept for its next part
        self._spare: list[Buffer] = []
        #: closed or aborted: buffers that come back from worker threads go to the pool
        self._ended = False

    # --- buffers -------------------------------------------------------------------------

    def _part_need(self) -> int:
        """What the buffer of the part being started must hold: the fragments' bytes in
        front, then as many new bytes as the part can take, or as the upload still lacks."""
        room = self._part_size - self._fragments_size
        if self._length is not None:
            room = min(room, self._length - self._offset - self._written)
        return self._fragments_size + max(room, 1)

    async def _next_buffer(self, need: int) -> Buffer:
        pool = self._store.buffers
        while True:
            for index, spare in enumerate(self._spare):
                if spare.size >= need:
                    return self._spare.pop(index)
            if not self._inflight:
                # nothing held of the pool (spares too small go back first): may wait
                while self._spare:
                    pool.give(self._spare.pop())
                return await pool.take(need)
            buffer = pool.try_take(need)
            if buffer is not None:
                return buffer
            # no buffer free: the next part is filled in the buffer of our oldest part once
            # it is sent (never wait for the pool while holding some of it: deadlock)
            await self._collect_oldest(recycle=True)

    async def _collect_oldest(self, recycle: bool = False) -> None:
        entry = self._inflight[0]
        entry.recycle = recycle
        part = await asyncio.shield(entry.outcome)
        self._inflight.popleft()
        self._new_parts.append(part)

    def _sent(self, entry: _InFlight) -> None:
        """A worker thread is done with a part (sent or failed): its slot and buffer are
        free. Runs on the event loop."""
        self._store._part_slots.release()
        buffer, entry.buffer = entry.buffer, None
        if buffer is not None:
            if entry.recycle and not self._ended:
                self._spare.append(buffer)
            else:
                self._store.buffers.give(buffer)

    def _give_back(self) -> None:
        """Every buffer this request holds (not those in flight) back to the pool."""
        pool = self._store.buffers
        if self._buffer is not None:
            pool.give(self._buffer)
            self._buffer, self._filled = None, 0
        while self._spare:
            pool.give(self._spare.pop())

    # --- the appender ----------------------------------------------------------------------

    async def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._buffer is None:
                self._buffer = await self._next_buffer(self._part_need())
            front = self._fragments_size
            room = min(self._part_size, self._buffer.size) - front - self._filled
            if room <= 0:
                # the buffer was sized to the upload's remaining length: more cannot come
                raise StorageError(f"upload {self._upload_id}: bytes past its length")
            taken = view[:room]
            self._buffer.view[self._filled : self._filled + len(taken)] = taken
            self._filled += len(taken)
            self._written += len(taken)
            view = view[len(taken) :]
            if self._filled + front == self._part_size:
                await self._send_part()

    async def _send_part(self) -> None:
        while len(self._inflight) >= PARTS_IN_FLIGHT:
            await self._collect_oldest(recycle=True)
        # a slot first, then the part leaves self: cancelled while it waits, it keeps all
        await self._store._part_slots.acquire()
        fragments, buffer, filled = tuple(self._fragments), self._buffer, self._filled
        self._fragments, self._fragments_size = [], 0
        self._buffer, self._filled = None, 0
        number = self._next_number
        self._next_number += 1
        self._obsolete.extend(f.key for f in fragments)
        entry = _InFlight(buffer)
        entry.outcome = self._store.start(
            functools.partial(self._sent, entry),
            self._upload_sync,
            number,
            fragments,
            buffer,
            filled,
        )
        self._inflight.append(entry)

    def _upload_sync(
        self,
        number: int,
        fragments: tuple[Fragment, ...],
        buffer: Buffer | None,
        filled: int,
    ) -> Part:
        assert buffer is not None
        view = buffer.view
        front = sum(fragment.size for fragment in fragments)
        if fragments:
            # the fragments' bytes come first: move the new bytes up, in place
            view[front : front + filled] = view[:filled]
            self._store.fetch_fragments_into(fragments, view)
        return self._store._upload_part_from(self._key, self._handle, number, view, front + filled)

    async def _settle(self) -> None:
        """Wait for every part in flight and record them."""
        while self._inflight:
            await self._collect_oldest()

    async def close(self) -> Stored:
        await self._settle()
        end = self._offset + self._written
        pending = self._fragments_size + self._filled
        if pending and self._length is not None and end == self._length:
            # the upload's last bytes: the (short) last part
            if self._buffer is None:  # fragments alone (the length came with no bytes)
                self._buffer = await self._next_buffer(self._fragments_size)
            await self._send_part()
            await self._settle()
        elif self._filled:
            await self._save_fragment(end)
        self._ended = True
        self._give_back()
        layout = replace(self._layout, fragments=tuple(self._fragments))
        parts = tuple(sorted(self._new_parts, key=lambda part: part.number))
        return Stored(self._written, layout, parts, tuple(self._obsolete))

    async def _save_fragment(self, end: int) -> None:
        """The bytes past the last whole part as one fragment object; with MAX_FRAGMENTS
        pending, merged with them into one (in the same buffer: it was sized to hold the
        fragments in front of the new bytes)."""
        merged: list[Fragment] = []
        if len(self._fragments) >= MAX_FRAGMENTS:
            merged = self._fragments
        start = merged[0].offset if merged else end - self._filled
        size = sum(f.size for f in merged) + self._filled
        key = self._store.fragment_key(self._upload_id, start, size)
        await self._store._part_slots.acquire()
        buffer, filled = self._buffer, self._filled
        self._buffer, self._filled = None, 0
        assert buffer is not None

        def written() -> None:
            self._store._part_slots.release()
            self._store.buffers.give(buffer)

        md5 = await asyncio.shield(
            self._store.start(written, self._put_fragment, key, merged, buffer, filled)
        )
        if merged:
            self._obsolete.extend(f.key for f in merged)
            self._fragments = []
        self._fragments.append(Fragment(start, size, key, md5))
        self._fragments_size = sum(f.size for f in self._fragments)

    def _put_fragment(self, key: str, merged: list[Fragment], buffer: Buffer, filled: int) -> str:
        view = buffer.view
        front = sum(fragment.size for fragment in merged)
        if merged:
            view[front : front + filled] = view[:filled]
            self._store.fetch_fragments_into(merged, view)
        return self._store._put(key, view[: front + filled])

    async def abort(self) -> None:
        self._ended = True
        for entry in self._inflight:
            entry.recycle = False
        try:
            # the parts in flight end first: no part of this request may reach S3 after
            # the upload's lock goes to the next request (which sends the same numbers)
            while self._inflight:
                outcome = self._inflight[0].outcome
                try:
                    await asyncio.shield(outcome)
                except BaseException:
                    if not outcome.done():
                        raise  # this request itself is cancelled: stop waiting
                self._inflight.popleft()
        finally:
            self._give_back()
