"""A leaner request-body path for uvicorn's httptools protocol.

Stock uvicorn (0.3x-0.5x) appends each body slice to a bytearray and copies that again into
the ASGI message, and pauses the socket whenever 64 KiB are waiting. For uploads that is
two extra copies of every byte and a pause/resume per slice. This protocol queues the
slices httptools hands us as they are (no copies), delivers one per ASGI message, and lets
up to QUEUE_LIMIT bytes wait before it pauses reading, so memory per request stays bounded.

It touches uvicorn internals (RequestResponseCycle.body/receive, _start_asgi_task), so it
lives alone in this module; `protocol_class()` falls back to uvicorn's own protocol when
those internals are not what we expect.
"""

from __future__ import annotations

import logging
import types
from collections import deque
from typing import Any

log = logging.getLogger("tusd_py.fasthttp")

#: bytes of request body that may wait for the application before the socket is paused
QUEUE_LIMIT = 1024 * 1024
#: request line + header block; httptools itself has no limit, so a client could make us
#: buffer headers without end
MAX_HEAD_BYTES = 64 * 1024


class HeadTooLarge(Exception):
    pass


def protocol_class() -> type[Any] | str:
    try:
        from uvicorn.protocols.http.httptools_impl import (
            HttpToolsProtocol,
            RequestResponseCycle,
        )
    except ImportError:  # httptools not installed: h11 it is
        return "auto"
    if not all(
        hasattr(HttpToolsProtocol, name) for name in ("_start_asgi_task", "on_body")
    ) or not hasattr(RequestResponseCycle, "receive"):
        log.warning("uvicorn internals changed; using its stock HTTP protocol")
        return "auto"

    class QueuedBodyProtocol(HttpToolsProtocol):  # type: ignore[misc]
        head_bytes = 0
        head_too_large = False

        def on_message_begin(self) -> None:
            self.head_bytes = 0
            super().on_message_begin()

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
            super()._start_asgi_task(cycle, app)

        def on_body(self, body: bytes) -> None:
            cycle: Any = self.cycle
            if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
                return
            # a pipelined request's body can arrive before its task starts
            _ensure_queue(cycle).append(body)
            cycle.queued += len(body)
            if cycle.queued > QUEUE_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

    return QueuedBodyProtocol


def _ensure_queue(cycle: Any) -> deque[bytes]:
    chunks: deque[bytes] | None = getattr(cycle, "chunks", None)
    if chunks is None:
        chunks = cycle.chunks = deque()
        cycle.queued = 0
        if cycle.body:  # anything the stock on_body collected before we saw the cycle
            chunks.append(bytes(cycle.body))
            cycle.queued = len(cycle.body)
            cycle.body = bytearray()
    return chunks


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
        self.queued -= len(body)
        if self.queued <= QUEUE_LIMIT // 2 and not self.disconnected:
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
