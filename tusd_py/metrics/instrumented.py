"""Timing wrappers that wiring puts around the real store and locks when a Meter is given.

They delegate every call unchanged and report how long it took, so neither the core nor
the backends carry timing code. MeteredStore times each store call by operation (an
appender's writes are summed and reported once per request, as `append`; a read is timed
to its first chunk, since the rest goes at the client's pace). MeteredLocks times each
lock acquisition and counts a handover when the holder it handed out was asked to let go.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from datetime import timedelta
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload
from tusd_storage import EMPTY_LAYOUT, Appender, Layout, LiveUploads, Part, Source, Store, Stored

from ..core.hooks import Caller, HookAnswer, HookPoint, HookRejected, Hooks, HookUpload
from ..core.ports import Holding, Meter, UploadLocks

T = TypeVar("T")


class MeteredAppender(Appender):
    """One request's writes: their summed time is reported once, at close or abort."""

    __slots__ = ("inner", "meter", "reported", "seconds")

    def __init__(self, inner: Appender, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter
        self.seconds = 0.0
        self.reported = False

    async def write(self, chunk: bytes) -> None:
        started = perf_counter()
        try:
            await self.inner.write(chunk)
        finally:
            self.seconds += perf_counter() - started

    def _report_writes(self, ok: bool) -> None:
        if not self.reported:
            self.reported = True
            self.meter.storage_call("append", self.seconds, ok)

    async def close(self) -> Stored:
        self._report_writes(True)
        started = perf_counter()
        ok = False
        try:
            stored = await self.inner.close()
            ok = True
            return stored
        finally:
            self.meter.storage_call("close", perf_counter() - started, ok)

    async def abort(self) -> None:
        self._report_writes(False)
        await self.inner.abort()


class MeteredStore(Store):
    """The configured store, each call timed (tusdpy_storage_call_seconds)."""

    def __init__(self, inner: Store, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter
        # what the server reads on every request: copied once, not looked up through us
        self.capabilities = inner.capabilities
        self.uses_layout = inner.uses_layout
        self.max_upload_size = inner.max_upload_size

    def __getattr__(self, name: str) -> Any:
        # anything a particular store offers beyond the interface (only called for names
        # this wrapper does not have)
        return getattr(self.inner, name)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = perf_counter()
        ok = False
        try:
            result = await call
            ok = True
            return result
        finally:
            self.meter.storage_call(operation, perf_counter() - started, ok)

    async def create(self, upload_id: str, length: int | None) -> Layout:
        return await self._timed("create", self.inner.create(upload_id, length))

    def appender(
        self,
        upload_id: str,
        offset: int,
        layout: Layout = EMPTY_LAYOUT,
        length: int | None = None,
    ) -> Appender:
        return MeteredAppender(self.inner.appender(upload_id, offset, layout, length), self.meter)

    def room(self, layout: Layout, offset: int) -> int | None:
        return self.inner.room(layout, offset)

    def location(self, upload_id: str) -> dict[str, str]:
        return self.inner.location(upload_id)

    def read(
        self, upload_id: str, start: int, end: int, layout: Layout = EMPTY_LAYOUT
    ) -> AsyncIterator[bytes]:
        return self._timed_read(self.inner.read(upload_id, start, end, layout))

    async def _timed_read(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        started = perf_counter()
        reported = False
        try:
            async for chunk in chunks:
                if not reported:
                    reported = True
                    self.meter.storage_call("read", perf_counter() - started, True)
                yield chunk
        except Exception:
            if not reported:
                reported = True
                self.meter.storage_call("read", perf_counter() - started, False)
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if not reported:  # nothing to read (an empty range)
            self.meter.storage_call("read", perf_counter() - started, True)

    async def concatenate(
        self, upload_id: str, sources: Sequence[Source], layout: Layout = EMPTY_LAYOUT
    ) -> Layout:
        return await self._timed("concatenate", self.inner.concatenate(upload_id, sources, layout))

    async def finish(
        self,
        upload_id: str,
        length: int,
        layout: Layout = EMPTY_LAYOUT,
        parts: Sequence[Part] = (),
    ) -> Layout:
        return await self._timed("finish", self.inner.finish(upload_id, length, layout, parts))

    async def delete(self, upload_id: str, layout: Layout = EMPTY_LAYOUT) -> None:
        await self._timed("delete", self.inner.delete(upload_id, layout))

    async def discard(self, keys: Sequence[str]) -> None:
        if keys:
            await self._timed("discard", self.inner.discard(keys))

    async def open(self) -> None:
        await self.inner.open()

    async def collect_garbage(self, live: LiveUploads, min_age: timedelta) -> int:
        return await self.inner.collect_garbage(live, min_age)

    async def close(self) -> None:
        await self.inner.close()


class _MeteredHold(contextlib.AbstractAsyncContextManager[Holding]):
    __slots__ = ("holding", "inner", "meter", "wait")

    def __init__(
        self, inner: contextlib.AbstractAsyncContextManager[Holding], meter: Meter, wait: bool
    ) -> None:
        self.inner = inner
        self.meter = meter
        self.wait = wait
        self.holding: Holding | None = None

    async def __aenter__(self) -> Holding:
        started = perf_counter()
        try:
            holding = await self.inner.__aenter__()
        except UploadLocked:
            self.meter.lock_waited(perf_counter() - started, "timeout" if self.wait else "busy")
            raise
        except Exception:
            self.meter.lock_waited(perf_counter() - started, "error")
            raise
        self.meter.lock_waited(perf_counter() - started, "acquired")
        self.holding = holding
        return holding

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return await self.inner.__aexit__(exc_type, exc, traceback)
        finally:
            if self.holding is not None and self.holding.stop_requested:
                self.meter.lock_handover()


class MeteredLocks:
    """The configured locks (UploadLocks), each acquisition timed, handovers counted."""

    def __init__(self, inner: UploadLocks, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def is_held(self, upload_id: str) -> bool:
        return self.inner.is_held(upload_id)

    async def held_anywhere(self, upload_id: str) -> bool:
        return await self.inner.held_anywhere(upload_id)

    def kept_state(self, upload_id: str) -> Upload | None:
        return self.inner.kept_state(upload_id)

    def hold(
        self, upload_id: str, *, wait: bool = True
    ) -> contextlib.AbstractAsyncContextManager[Holding]:
        return _MeteredHold(self.inner.hold(upload_id, wait=wait), self.meter, wait)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()


class MeteredHooks:
    """The configured hooks, each call and delivery timed with its outcome
    (tusdpy_hook_seconds)."""

    def __init__(self, inner: Hooks, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    def enabled(self, point: HookPoint) -> bool:
        return self.inner.enabled(point)

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        started = perf_counter()
        outcome = "failed"
        try:
            answer = await self.inner.call(point, upload, caller)
            outcome = "accepted"
            return answer
        except HookRejected:
            outcome = "rejected"
            raise
        finally:
            self.meter.hook_called(point.value, outcome, perf_counter() - started)

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        started = perf_counter()
        outcome = "failed"
        try:
            await self.inner.deliver(point, event)
            outcome = "delivered"
        finally:
            self.meter.hook_called(point.value, outcome, perf_counter() - started)

    async def close(self) -> None:
        await self.inner.close()
