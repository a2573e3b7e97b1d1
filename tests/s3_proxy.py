"""A TCP proxy in front of an S3 server that can damage part uploads on request.

Why: a storage layer that sends parts to S3 must notice when the bytes the server received are
not the bytes it meant to send. A real network rarely flips a bit on demand, so this proxy does:
armed with `corrupt_next_part_upload()`, it flips one byte in the middle of the next UploadPart
body (headers and length untouched), and a server that checks Content-MD5 or the signed payload
hash (see `S3Endpoint.verifies_checksums`) must refuse it. `cut_next_part_upload()` instead
drops both connections halfway through the next part's body, like a crash or network cut.

It speaks just enough HTTP/1.1 to find request boundaries on keep-alive connections
(Content-Length and chunked bodies); responses go back byte for byte. It counts requests by
(method, kind) so tests can assert what the client actually sent. Plain HTTP upstreams only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from tests.s3_servers import S3Endpoint

_PIECE = 64 * 1024
_MAX_HEAD = 1024 * 1024


def classify(method: str, target: str) -> str:
    """The S3 operation family of a path-style request: "part", "put", "get", "list", ..."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    has_key = bool(parts.path.lstrip("/").partition("/")[2])  # path style: /bucket/key
    if method == "PUT" and "partNumber" in query:
        return "part"
    if method == "POST" and "uploads" in query:
        return "create-multipart"
    if method == "POST" and "uploadId" in query:
        return "complete"
    if method == "DELETE" and "uploadId" in query:
        return "abort"
    if method == "GET" and "uploadId" in query:
        return "list-parts"
    if method in ("GET", "HEAD") and has_key:
        return "get"
    if method == "GET" and (
        "uploads" in query
        or "list-type" in query
        or not query
        or {"prefix", "marker", "delimiter"} & query.keys()
    ):
        return "list"
    if method == "PUT" and has_key:
        return "put"
    if (method == "DELETE" and has_key) or (method == "POST" and "delete" in query):
        return "delete"
    return "other"


class TamperProxy:
    """Forwards 127.0.0.1:<free port> to `upstream`, in a background thread with its own loop.

    Use as `with TamperProxy(endpoint) as proxy:` or start()/stop(). `proxy.s3` is the
    upstream's S3Endpoint with the proxy's address, for clients.
    """

    def __init__(self, upstream: S3Endpoint) -> None:
        if upstream.secure:
            raise ValueError("TamperProxy forwards plain HTTP only")
        self.upstream = upstream
        host, _, port = upstream.endpoint.rpartition(":")
        self._upstream_addr = (host or "127.0.0.1", int(port or 80))
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._requests: list[tuple[str, str]] = []
        self._corrupt_armed = 0
        self._cut_armed = 0
        self.corrupted = 0
        self.cut = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # --- what tests use ---------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def s3(self) -> S3Endpoint:
        return dataclasses.replace(
            self.upstream, name=f"{self.upstream.name}-proxy", endpoint=self.endpoint
        )

    def corrupt_next_part_upload(self, times: int = 1) -> None:
        """Flip a byte mid-body in each of the next `times` UploadPart requests with a body.

        Clients retry failed requests (minio's urllib3 does, 5 times, on 5xx and dropped
        connections), so a test wanting a retry to fail too arms more than once.
        """
        with self._lock:
            self._corrupt_armed = times

    def cut_next_part_upload(self, times: int = 1) -> None:
        """Close both sockets after forwarding half of each of the next `times` part bodies."""
        with self._lock:
            self._cut_armed = times

    def disarm(self) -> None:
        with self._lock:
            self._corrupt_armed = self._cut_armed = 0

    @property
    def counts(self) -> Counter[tuple[str, str]]:
        """Requests seen so far by (method, kind), e.g. counts["PUT", "part"]."""
        with self._lock:
            return Counter(self._counts)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request seen, in order."""
        with self._lock:
            return list(self._requests)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._requests.clear()
            self.corrupted = self.cut = 0

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> TamperProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_MAX_HEAD)
                )
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"s3-proxy-{id(self)}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> TamperProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the proxy --------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        back: asyncio.Task[None] | None = None
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream_addr)
            back = asyncio.create_task(self._pipe(upstream_r, client_w))
            if await self._forward_requests(client_r, upstream_w):
                # the client finished sending: let the last responses come back
                if upstream_w.can_write_eof():
                    upstream_w.write_eof()
                await back
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio logs a traceback for a cancelled handler)
        finally:
            if back is not None:
                back.cancel()
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()
            self._connections.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while piece := await reader.read(_PIECE):
                writer.write(piece)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _forward_requests(
        self, client: asyncio.StreamReader, upstream: asyncio.StreamWriter
    ) -> bool:
        """Forward requests until the client's EOF (True) or a cut (False)."""
        while True:
            try:
                head = await client.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                upstream.write(exc.partial)
                await upstream.drain()
                return True
            method, target, headers = _parse_head(head)
            kind = classify(method, target)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = 0 if chunked else int(headers.get("content-length", "0") or 0)
            corrupt = cut = False
            with self._lock:
                self._counts[method, kind] += 1
                self._requests.append((method, target))
                # a part with a body of its own (not chunked, not an UploadPartCopy)
                if kind == "part" and length > 0:
                    if self._cut_armed:
                        self._cut_armed -= 1
                        self.cut += 1
                        cut = True
                    elif self._corrupt_armed:
                        self._corrupt_armed -= 1
                        self.corrupted += 1
                        corrupt = True
            upstream.write(head)
            if chunked:
                await _forward_chunked(client, upstream)
                continue
            if cut:
                await _forward_exactly(client, upstream, length // 2)
                return False
            await _forward_exactly(client, upstream, length, flip_at=length // 2 if corrupt else -1)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _forward_exactly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int, flip_at: int = -1
) -> None:
    """Copy `length` body bytes, inverting the byte at offset `flip_at` (if >= 0)."""
    offset = 0
    while offset < length:
        piece = await reader.read(min(_PIECE, length - offset))
        if not piece:
            raise asyncio.IncompleteReadError(b"", length - offset)
        if offset <= flip_at < offset + len(piece):
            i = flip_at - offset
            piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
        writer.write(piece)
        await writer.drain()
        offset += len(piece)


async def _forward_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy a chunked body untouched, reading its framing only to find where it ends."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            await writer.drain()
            return
        await _forward_exactly(reader, writer, size + 2)  # the data and its CRLF
