"""A leaner request-body path for uvicorn's httptools protocol.

Stock uvicorn (0.3x-0.5x) appends each body slice to a bytearray and copies that again into
the ASGI message, and pauses the socket whenever 64 KiB are waiting. For uploads that is
two extra copies of every byte and a pause/resume per slice. This protocol queues the
slices httptools hands us as they are (no copies), delivers one per ASGI message, and lets
up to QUEUE_LIMIT bytes wait before it pauses reading, so memory per request stays bounded.

Memory per process stays bounded too: all connections together may read ahead READ_AHEAD
bytes that no application has asked for yet. Past it, a connection pauses as soon as it
has anything queued, and reads again only when its own application has taken everything
(an application waiting for bytes always resumes its own connection, so no request can be
starved by the others). Without that, 1,000 uploads waiting for an S3 part buffer each
read ahead a full QUEUE_LIMIT: a GiB of body bytes that nobody was ready for.

A socket read takes whatever the kernel has, up to 256 KiB, and a request's head usually
comes with the first slice of its body. So while the process is past READ_AHEAD, a
connection that is between requests (or new) is parked: it stops reading before its next
head, and its keep-alive timer stops; while any connection is parked, others between
requests queue behind it. Parked connections read again, oldest first, as queued bytes are
taken: as many as the budget has room for a slice each, counting a slice for each
connection let go in the last RESERVED_FOR seconds that has not begun its request yet.
Without parking, each of 500 connections starting a request brought one slice (about
125 MiB per process) whatever READ_AHEAD said. (A first version let parked connections go
only below half of READ_AHEAD; under load the queue hovered above that, and connections
stayed parked for seconds: PATCH p99 8-11 s instead of 2 s.)

Every wait on the client has a deadline here, because uvicorn has none for them: a request
head that is not complete within HEADER_TIMEOUT gets 408 and the connection is closed (a
slow-loris client holds nothing for long), and a body that stops arriving for
BODY_IDLE_TIMEOUT (while we are ready to read it) ends as a dropped connection would: the
application keeps what arrived and the request ends. `configure()` sets both.

A response that is sent before the request's body has fully arrived (a refusal, a 409, a
handover) must not leave the connection ambiguous: the rest of that body would be read as
the next request on it, and a client that stopped sending the body and asked again on the
same connection would wait for an answer that never comes. So when more than
EARLY_DRAIN_BYTES of the body are still due (or the length is unknown) the answer says
`Connection: close` and the connection ends after it; otherwise the rest is read and
dropped, and the connection is closed if it has not arrived within EARLY_DRAIN_SECONDS.

It touches uvicorn internals (RequestResponseCycle.body/receive/send, _start_asgi_task), so
it lives alone in this module; `protocol_class()` falls back to uvicorn's own protocol when
those internals are not what we expect.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from typing import Any

log = logging.getLogger("tusd_py.fasthttp")

#: bytes of request body that may wait for the application before the socket is paused
QUEUE_LIMIT = 1024 * 1024
#: bytes of request body that may wait, in all connections of the process together, before
#: a connection with anything queued is paused (see the module's docstring)
READ_AHEAD = 16 * 1024 * 1024


#: what one socket read may bring (uvloop's and asyncio's read size): the room a parked
#: connection needs in the budget before it may read its next request
SLICE = 256 * 1024


class _Queued:
    """Body bytes queued in this process, and the connections that wait for room to start
    their next request (the event loop's thread only touches them)."""

    total = 0
    #: connections open in this process (tusd_connections_open)
    open = 0
    #: connections between requests that read: parked when the budget is passed
    idle: dict[Any, None] = {}
    #: connections between requests that do not read until there is room, oldest first
    parked: dict[Any, None] = {}
    #: connections let go from the parking with the room of one slice set aside for them,
    #: until their next request begins (or RESERVED_FOR seconds pass), by when they left
    reserved: dict[Any, float] = {}


#: a connection let go from the parking keeps the room of one slice this long at most (a
#: client that is not about to send must not hold room that others wait for)
RESERVED_FOR = 1.0


def _account(cycle: Any, size: int) -> None:
    cycle.queued += size
    _Queued.total += size
    if size > 0:
        if _Queued.total > READ_AHEAD and _Queued.idle:
            _park_idle_connections()
    elif _Queued.parked:
        _unpark_connections()


def _park_idle_connections() -> None:
    for protocol in list(_Queued.idle):
        protocol.park()


def _room(now: float) -> int:
    """Budget left for connections to start requests: what is queued, and a slice for each
    connection let go recently that has not begun its request yet, are taken."""
    reserved = _Queued.reserved
    while reserved:
        oldest, since = next(iter(reserved.items()))
        if now - since < RESERVED_FOR:
            break
        del reserved[oldest]
    return READ_AHEAD - _Queued.total - len(reserved) * SLICE


def _unpark_connections() -> None:
    """Let parked connections read, oldest first, while the budget has a slice of room for
    each (and at least one when nothing is queued, so that a budget smaller than a slice
    still moves)."""
    if not _Queued.parked:
        return
    now = asyncio.get_running_loop().time()
    while _Queued.parked and (_room(now) >= SLICE or (_Queued.total == 0 and not _Queued.reserved)):
        protocol = next(iter(_Queued.parked))
        protocol.unpark()
        _Queued.reserved[protocol] = now


def open_connections() -> int:
    """Connections open in this process now."""
    return _Queued.open


def parked_connections() -> int:
    return len(_Queued.parked)


def _forget_queue(cycle: Any) -> None:
    """The request's unread slices will never be read: they no longer count."""
    chunks: deque[bytes] | None = getattr(cycle, "chunks", None)
    if chunks:
        chunks.clear()
    queued = getattr(cycle, "queued", 0)
    if queued:
        _account(cycle, -queued)


def queued_total() -> int:
    """Body bytes waiting for applications in this process now."""
    return _Queued.total


#: request line + header block; httptools itself has no limit, so a client could make us
#: buffer headers without end
MAX_HEAD_BYTES = 64 * 1024


#: seconds a client may take to send a request head (request line and headers)
HEADER_TIMEOUT = 30.0
#: seconds a request body may stay silent while we wait for it
BODY_IDLE_TIMEOUT = 60.0


#: after an answer that came before the body: at most this much of the body is still read
#: (and dropped) to keep the connection, for at most this long
EARLY_DRAIN_BYTES = 64 * 1024
EARLY_DRAIN_SECONDS = 1.0
#: after an early answer on a connection that then closes: seconds the rest of the body is
#: still read and dropped, with our side already shut (see _LingeringClose)
LINGER_SECONDS = 2.0


class HeadTooLarge(Exception):
    pass


def configure(
    header_timeout: float, body_idle_timeout: float, read_ahead: int | None = None
) -> None:
    """Set the client deadlines of every connection opened from now on (0 = no deadline),
    and the process's read-ahead budget."""
    global HEADER_TIMEOUT, BODY_IDLE_TIMEOUT, READ_AHEAD
    HEADER_TIMEOUT = header_timeout
    BODY_IDLE_TIMEOUT = body_idle_timeout
    if read_ahead is not None:
        READ_AHEAD = read_ahead


def protocol_class() -> type[Any] | str:
    try:
        from uvicorn.protocols.http.httptools_impl import (
            HttpToolsProtocol,
            RequestResponseCycle,
        )
    except ImportError:  # httptools not installed: h11 it is
        return "auto"
    needed = (
        "_start_asgi_task",
        "on_body",
        "on_response_complete",
        "_unset_keepalive_if_required",
        "timeout_keep_alive_handler",
    )
    if not all(hasattr(HttpToolsProtocol, name) for name in needed) or not hasattr(
        RequestResponseCycle, "receive"
    ):
        log.warning("uvicorn internals changed; using its stock HTTP protocol")
        return "auto"

    class QueuedBodyProtocol(HttpToolsProtocol):  # type: ignore[misc]
        head_bytes = 0
        head_too_large = False
        #: a request head is being awaited (a new connection, or a message has begun)
        awaiting_head = True
        head_started = 0.0
        last_data = 0.0
        watchdog: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _Queued.open += 1
            self.head_started = self.last_data = self.loop.time()
            self._arm_watchdog()
            self._between_requests()

        def connection_lost(self, exc: Exception | None) -> None:
            _Queued.open -= 1
            if self.watchdog is not None:
                self.watchdog.cancel()
                self.watchdog = None
            _Queued.idle.pop(self, None)
            _Queued.parked.pop(self, None)
            if _Queued.reserved.pop(self, None) is not None:
                _unpark_connections()  # its room is free again
            super().connection_lost(exc)

        # --- parking (see the module's docstring) ------------------------------------

        def _between_requests(self) -> None:
            if _Queued.total > READ_AHEAD or _Queued.parked:
                self.park()  # behind those already waiting: first come, first served
                _unpark_connections()
            else:
                _Queued.idle[self] = None

        def park(self) -> None:
            _Queued.idle.pop(self, None)
            _Queued.reserved.pop(self, None)
            if self.transport.is_closing():
                return
            self.flow.pause_reading()
            # a parked client may have sent its next request already: closing it for
            # keep-alive silence would drop that request
            self._unset_keepalive_if_required()
            _Queued.parked[self] = None

        def unpark(self) -> None:
            _Queued.parked.pop(self, None)
            if self.transport.is_closing():
                return
            _Queued.idle[self] = None
            self.head_started = self.loop.time()  # its head deadline starts now
            self.flow.resume_reading()
            if self.cycle is not None and self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        lingering = False

        def on_response_complete(self) -> None:
            if self.lingering:
                return  # closing: nothing more is parsed or answered here
            super().on_response_complete()
            # between requests: nothing pipelined, and no next head begun
            if not self.transport.is_closing() and not self.pipeline and not self.awaiting_head:
                self._between_requests()

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return  # the rest of a body we answered early: dropped unread
            self.last_data = self.loop.time()
            super().data_received(data)

        def linger_and_close(self) -> None:
            """Our answer is out; shut our side (FIN after it), drop what the client still
            sends, and close after LINGER_SECONDS (or when the client closes first)."""
            transport = self.transport
            if transport.is_closing():
                return
            self.lingering = True
            _Queued.idle.pop(self, None)
            _Queued.parked.pop(self, None)
            self._unset_keepalive_if_required()
            if transport.can_write_eof():
                transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, transport.close)

        def on_message_begin(self) -> None:
            _Queued.idle.pop(self, None)
            _Queued.reserved.pop(self, None)  # its bytes count as they arrive now
            self.head_bytes = 0
            self.awaiting_head = True
            self.head_started = self.loop.time()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.awaiting_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            # uvicorn stops tracking the body once the response is out; we still need to
            # know whether it has all arrived (see _send_closing_early)
            cycle: Any = self.cycle
            if cycle is not None:
                cycle.body_done = True
            super().on_message_complete()

        def _arm_watchdog(self) -> None:
            timeouts = [t for t in (HEADER_TIMEOUT, BODY_IDLE_TIMEOUT) if t > 0]
            if timeouts:
                # look a few times per deadline: one timer per connection, not per read
                self.watchdog = self.loop.call_later(min(timeouts) / 4, self._watch)

        def _watch(self) -> None:
            self.watchdog = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            cycle: Any = self.cycle
            idle_head = self.awaiting_head and (cycle is None or cycle.response_complete)
            if self in _Queued.parked:
                idle_head = False  # its silence is ours: we are not reading
                _unpark_connections()  # room set aside for others may have lapsed
            if idle_head and HEADER_TIMEOUT > 0 and now - self.head_started > HEADER_TIMEOUT:
                self._send_408()
                return
            if (
                BODY_IDLE_TIMEOUT > 0
                and cycle is not None
                and not cycle.response_complete
                and cycle.more_body
                and not self.flow.read_paused  # we asked for a pause: silence is ours
                and not cycle.waiting_for_100_continue  # the client waits for our word
                and now - self.last_data > BODY_IDLE_TIMEOUT
            ):
                log.info(
                    "%s: no body bytes for %.0f s; ending the request with what arrived",
                    cycle.scope.get("path", "?"),
                    now - self.last_data,
                )
                self.transport.close()  # the application sees a disconnect and keeps the bytes
                return
            self._arm_watchdog()

        def _send_408(self) -> None:
            body = (
                f"ERR_REQUEST_TIMEOUT: The request head did not arrive within "
                f"{HEADER_TIMEOUT:g} s.\n"
            ).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"tus-resumable: 1.0.0\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count_head(self, size: int) -> None:
            self.head_bytes += size
            if self.head_bytes > MAX_HEAD_BYTES:
                self.head_too_large = True
                raise HeadTooLarge  # httptools reports it as a parser error

        def send_400_response(self, msg: str) -> None:
            if not self.head_too_large:
                super().send_400_response(msg)
                return
            body = (
                f"ERR_HEADER_TOO_LARGE: The request line and headers pass {MAX_HEAD_BYTES} bytes.\n"
            ).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"tus-resumable: 1.0.0\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            _ensure_queue(cycle)
            cycle.receive = types.MethodType(_receive, cycle)
            cycle.send = types.MethodType(_send_closing_early, cycle)
            cycle.run_asgi = types.MethodType(_run_asgi_then_forget, cycle)
            super()._start_asgi_task(cycle, app)

        def on_body(self, body: bytes) -> None:
            cycle: Any = self.cycle
            if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
                return
            # a pipelined request's body can arrive before its task starts
            _ensure_queue(cycle).append(body)
            _account(cycle, len(body))
            cycle.body_received = getattr(cycle, "body_received", 0) + len(body)
            if cycle.queued > QUEUE_LIMIT or _Queued.total > READ_AHEAD:
                self.flow.pause_reading()
            cycle.message_event.set()

    return QueuedBodyProtocol


async def _run_asgi_then_forget(self: Any, app: Any) -> None:
    """RequestResponseCycle.run_asgi; then whatever of the body was never read stops
    counting against READ_AHEAD, however the application ended."""
    try:
        await type(self).run_asgi(self, app)
    finally:
        _forget_queue(self)


def _ensure_queue(cycle: Any) -> deque[bytes]:
    chunks: deque[bytes] | None = getattr(cycle, "chunks", None)
    if chunks is None:
        chunks = cycle.chunks = deque()
        cycle.queued = 0
        if cycle.body:  # anything the stock on_body collected before we saw the cycle
            chunks.append(bytes(cycle.body))
            _account(cycle, len(cycle.body))
            cycle.body = bytearray()
    return chunks


async def _send_closing_early(self: Any, message: dict[str, Any]) -> None:
    """RequestResponseCycle.send, for a response that comes before the request body has
    fully arrived: the connection closes after it, or once the small rest of the body has
    not arrived in time (the connection's byte stream must stay in step)."""
    if message["type"] == "http.response.start" and not getattr(self, "body_done", False):
        remaining = _body_still_due(self)
        if remaining is None or remaining > EARLY_DRAIN_BYTES:
            self.keep_alive = False
            self.transport = _LingeringClose(self.transport, self.on_response)
        else:
            cycle, transport = self, self.transport

            def close_unless_drained() -> None:
                if not getattr(cycle, "body_done", False) and not transport.is_closing():
                    transport.close()

            asyncio.get_running_loop().call_later(EARLY_DRAIN_SECONDS, close_unless_drained)
    await type(self).send(self, message)
    if self.response_complete:
        _forget_queue(self)  # answered: it reads no more of this body


class _LingeringClose:
    """The transport of a cycle that answers before its request's body has arrived and then
    ends the connection. Closing a socket with unread bytes makes the kernel send a reset,
    and a reset can reach the client before it has read our answer, which it then never
    sees (measured: 22 of 1,798 early 503s of a concurrency cap, with 256 KiB bodies). So
    `close()` shuts our side only after the answer and drops the rest of the body for a
    while, as web servers' "lingering close" does; everything else is the transport's."""

    def __init__(self, transport: Any, on_response: Any) -> None:
        self._transport = transport
        self._protocol = getattr(on_response, "__self__", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        linger = getattr(self._protocol, "linger_and_close", None)
        if linger is None:
            self._transport.close()
        else:
            linger()


def _body_still_due(cycle: Any) -> int | None:
    """Bytes of the request body not received yet; None when the length is unknown."""
    for name, value in cycle.scope["headers"]:
        if name == b"content-length":
            try:
                return int(value) - getattr(cycle, "body_received", 0)
            except ValueError:
                return None
    return None


async def _receive(self: Any) -> dict[str, Any]:
    """RequestResponseCycle.receive, delivering queued slices one at a time.

    Unlike the stock receive, slices that arrived before the client disconnected are still
    delivered (then the disconnect): an interrupted upload keeps every byte that reached us.
    """
    if self.waiting_for_100_continue and not self.transport.is_closing():
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.waiting_for_100_continue = False
    if self.response_complete:
        return {"type": "http.disconnect"}
    if not self.chunks and not self.disconnected:
        self.flow.resume_reading()
        await self.message_event.wait()
        self.message_event.clear()
    if self.chunks:
        body = self.chunks.popleft()
        _account(self, -len(body))
        if (
            self.queued <= QUEUE_LIMIT // 2
            and (_Queued.total <= READ_AHEAD or not self.queued)
            and not self.disconnected
        ):
            self.flow.resume_reading()
        more_body = bool(self.chunks) or self.more_body
        return {"type": "http.request", "body": body, "more_body": more_body}
    if self.disconnected or self.response_complete:
        return {"type": "http.disconnect"}
    return {"type": "http.request", "body": b"", "more_body": self.more_body}


#: the protocol for uvicorn as an import string ("tusd_py.http.fasthttp:QUEUED_PROTOCOL"), which
#: worker processes can import; "auto" when uvicorn's internals are not what we expect
QUEUED_PROTOCOL: type[Any] | str = protocol_class()


def protocol_import_string() -> str:
    if isinstance(QUEUED_PROTOCOL, str):
        return QUEUED_PROTOCOL
    return f"{__name__}:QUEUED_PROTOCOL"
