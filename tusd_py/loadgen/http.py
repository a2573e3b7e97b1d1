"""A small HTTP/1.1 client on asyncio streams, for the load generator only.

A general client (httpx) spends milliseconds of CPU per request at a thousand concurrent
connections, which makes the generator, not the server, the bottleneck. A tus upload needs
little of HTTP: requests with a Content-Length body (or none), keep-alive, and responses
framed by Content-Length, `Transfer-Encoding: chunked`, the end of the connection, or
nothing at all (HEAD, 204, 304, 1xx). That is what this module does, and nothing else.

Request bodies are memoryviews of the caller's buffer, written in slices with flow control,
so that a request never copies its body into a new object of its own. While a body is
being sent the response is already being read: a server may answer before it has read
the body (a refusal, 413) and stop reading, and the answer must not wait behind a send
that will never finish. After such an early answer the connection is not reused.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

#: bytes handed to the transport at a time; drain() keeps its buffer near this size
WRITE_SLICE = 64 * 1024
#: a response head larger than this is not something a tus server sends
MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """The exchange failed without a complete response; `label` names how, for counting."""

    label = "error"


class ConnectionClosed(HttpError):
    label = "closed"


class BadResponse(HttpError):
    label = "bad response"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: scheme, host, port, and the path of the creation URL."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """`http(s)://host[:port]/path` -> Endpoint; ValueError with a sentence otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the endpoint must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the endpoint has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Endpoint(parts.scheme, parts.hostname, port, path)


def resolve(base: Endpoint, location: str) -> tuple[Endpoint, str]:
    """An upload's Location (absolute URL, absolute path or relative path) -> where its
    requests go and their request target."""
    if "://" in location:
        target = parse_endpoint(location)
        same = (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)
        return (base if same else target), target.path
    if location.startswith("/"):
        return base, location
    directory = base.path.split("?", 1)[0].rsplit("/", 1)[0]
    return base, f"{directory}/{location}"


@dataclass(slots=True)
class Response:
    status: int
    #: lower-case names; repeated fields joined with ", "
    headers: dict[str, str]
    body: bytes = b""
    #: the connection may carry the next request
    keep_alive: bool = True


def parse_head(block: bytes) -> tuple[int, str, dict[str, str]]:
    """A response head (status line and header fields, with or without the final empty
    line) -> (status, HTTP version, headers)."""
    lines = block.rstrip(b"\r\n").split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise BadResponse(f"not an HTTP status line: {status_line[:80]!r}")
    if len(parts[1]) != 3 or not parts[1].isdigit():
        raise BadResponse(f"not a status code: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadResponse(f"not a header field: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(parts[1]), parts[0].decode("ascii", "replace"), headers


def body_length(method: str, status: int, headers: dict[str, str]) -> int | None:
    """Bytes of body that follow the head; None for `chunked`, -1 for "until the end of the
    connection" (RFC 9112, 6.3)."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
            return None
        return -1
    length = headers.get("content-length")
    if length is None:
        return -1
    values = {value.strip() for value in length.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise BadResponse(f"bad Content-Length: {length!r}")
    return int(values.pop())


def keeps_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


class Connection:
    """One keep-alive connection; requests on it run one at a time.

    Open it with `connect()` (or let the first request do it); after a failed exchange it is
    aborted, and the next request opens a new one."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: connections this object has opened (1 per keep-alive run)
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        context = ssl.create_default_context() if self.endpoint.scheme == "https" else None
        self._reader, self._writer = await asyncio.open_connection(
            self.endpoint.host, self.endpoint.port, ssl=context, limit=MAX_HEAD
        )
        self.opened += 1

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def request(
        self, method: str, target: str, head: bytes = b"", body: memoryview | None = None
    ) -> Response:
        """Send `method target` with the header lines `head` (each ending in CRLF; Host and
        Content-Length are added) and `body`, and read the whole response.

        Raises HttpError (or OSError) when no complete response arrives; the connection is
        then aborted. Cancellation (a timeout around this call) aborts it too."""
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        reader, writer = self._reader, self._writer
        length = 0 if body is None else len(body)
        lines = f"{method} {target} HTTP/1.1\r\nHost: {self.endpoint.authority}\r\n"
        if length or method in ("POST", "PATCH", "PUT"):
            lines += f"Content-Length: {length}\r\n"
        writer.write(lines.encode("latin-1") + head + b"\r\n")
        sending: asyncio.Task[None] | None = None
        try:
            if body is not None and length:
                sending = asyncio.get_running_loop().create_task(_send(writer, body))
            response = await _read_response(reader, method)
            if sending is not None and not sending.done():
                response.keep_alive = False  # answered before the body was sent
        except BaseException:
            self.abort()
            raise
        finally:
            if sending is not None:
                if sending.done():
                    if not sending.cancelled():
                        sending.exception()  # retrieved: a broken pipe here is not news
                else:
                    sending.cancel()
        if not response.keep_alive:
            self.abort()
        return response


async def _send(writer: asyncio.StreamWriter, body: memoryview) -> None:
    for start in range(0, len(body), WRITE_SLICE):
        writer.write(body[start : start + WRITE_SLICE])
        await writer.drain()


async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
    while True:
        try:
            block = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ConnectionClosed("connection closed in the middle of a response") from None
            raise ConnectionClosed("connection closed without a response") from None
        except asyncio.LimitOverrunError:
            raise BadResponse(f"response head longer than {MAX_HEAD} bytes") from None
        except ConnectionResetError:
            raise ConnectionClosed("connection reset") from None
        status, version, headers = parse_head(block)
        if not 100 <= status < 200 or status == 101:
            break  # 1xx are interim: the real answer follows
    length = body_length(method, status, headers)
    alive = keeps_alive(version, headers)
    try:
        if length is None:
            body = await _read_chunked(reader)
        elif length > 0:
            body = await reader.readexactly(length)
        elif length < 0:
            body = await reader.read()
            alive = False
        else:
            body = b""
    except asyncio.IncompleteReadError:
        raise ConnectionClosed("connection closed in the middle of a response body") from None
    except ConnectionResetError:
        raise ConnectionClosed("connection reset") from None
    return Response(status, headers, body, alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    pieces: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadResponse(f"bad chunk size: {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailer fields
            return b"".join(pieces)
        pieces.append((await reader.readexactly(size + 2))[:-2])
