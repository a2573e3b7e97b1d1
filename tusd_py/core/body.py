"""Moving a request body into a store: the PATCH hot path.

Chunks go from the ASGI receive channel to the store's appender by reference (no copies,
no joins), hashed on the way when a checksum was asked for. Nothing here touches the
database or the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tusd_protocol.checksums import Hasher
from tusd_storage import Appender, Stored

from .ports import NULL_METER, Holding, Meter, Receive


@dataclass(frozen=True, slots=True)
class BodyResult:
    #: bytes handed to the appender
    received: int
    #: the client sent its whole body
    complete: bool
    #: the body went on past the allowed size (nothing past it was stored)
    overrun: bool = False


class _NoBytes(Appender):
    """The appender of a request that may store nothing (an empty PATCH at the end of a
    finished upload): pump_body refuses any byte before it would reach `write`."""

    async def write(self, chunk: bytes) -> None:
        raise AssertionError("no byte may be stored here")

    async def close(self) -> Stored:
        return Stored(0)

    async def abort(self) -> None:
        pass


NO_BYTES: Appender = _NoBytes()

#: after a handover request, bytes that already reached us are still taken (PROTOCOL 7):
#: the holder reads on while the next chunk is there within DRAIN_IDLE, for DRAIN_MAX at most
DRAIN_IDLE = 0.02
DRAIN_MAX = 0.2
#: bytes received are told to the meter in steps of at least this many, and at the end: a
#: counter update per chunk (in multiprocess mode each a write to a file shared by the
#: workers, after a getpid) was most of the metric updates a request made
METER_STEP = 1024 * 1024


async def pump_body(
    receive: Receive,
    appender: Appender,
    max_bytes: int | None,
    hasher: Hasher | None,
    holding: Holding,
    meter: Meter = NULL_METER,
    progress: Callable[[int], None] | None = None,
) -> BodyResult:
    """Stream the body into the appender; `progress(received)` after each chunk written."""
    received = 0
    metered = 0  # of `received`, what the meter was told
    loop = asyncio.get_running_loop()
    drain_until: float | None = None
    try:
        while True:
            if holding.stop_requested and drain_until is None:
                drain_until = loop.time() + DRAIN_MAX
            try:
                if drain_until is None:
                    holding.receiving = True
                    message = await receive()
                else:
                    # handing over: keep what is already here, wait for nothing more
                    wait = min(DRAIN_IDLE, drain_until - loop.time())
                    if wait <= 0:
                        return BodyResult(received, complete=False)
                    message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                return BodyResult(received, complete=False)
            except asyncio.CancelledError as exc:
                if holding.is_handover(exc):
                    continue
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
                if received - metered >= METER_STEP:
                    meter.bytes_received(received - metered)
                    metered = received
                if progress is not None:
                    progress(received)
            if not message.get("more_body", False):
                return BodyResult(received, complete=True)
    finally:
        if received > metered:
            meter.bytes_received(received - metered)
