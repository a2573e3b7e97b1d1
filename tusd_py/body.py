"""Moving a request body into a store: the PATCH hot path.

Chunks go from the ASGI receive channel to the store's appender by reference (no copies,
no joins), hashed on the way when a checksum was asked for. Nothing here touches the
database or the cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import Receive

from tusd_protocol.checksums import Hasher
from tusd_storage import Appender

from .locks import Holding


@dataclass(frozen=True, slots=True)
class BodyResult:
    #: bytes handed to the appender
    received: int
    #: the client sent its whole body
    complete: bool
    #: the body went on past the allowed size (nothing past it was stored)
    overrun: bool = False


async def pump_body(
    receive: Receive,
    appender: Appender,
    max_bytes: int | None,
    hasher: Hasher | None,
    holding: Holding,
) -> BodyResult:
    received = 0
    while True:
        if holding.stop_requested:
            return BodyResult(received, complete=False)
        holding.receiving = True
        try:
            message = await receive()
        except asyncio.CancelledError as exc:
            if holding.is_handover(exc):
                return BodyResult(received, complete=False)
            raise
        finally:
            holding.receiving = False
        if message["type"] == "http.disconnect":
            return BodyResult(received, complete=False)
        chunk: bytes = message.get("body", b"")
        if chunk:
            if max_bytes is not None and received + len(chunk) > max_bytes:
                return BodyResult(received, complete=False, overrun=True)
            if hasher is not None:
                hasher.update(chunk)
            await appender.write(chunk)
            received += len(chunk)
        if not message.get("more_body", False):
            return BodyResult(received, complete=True)
