"""HookDispatcher: the Hooks port over the configured deliveries (a Python module, a webhook),
called in that order at each enabled point. The first rejection ends the call; later
answers change what earlier ones left unchanged (the webhook sees none of the module's
changes: each is told about the request as the client sent it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..core.hooks import ACCEPTED, Caller, HookAnswer, HookPoint, HookUpload


class Delivery(Protocol):
    def points(self) -> frozenset[HookPoint]: ...

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer: ...

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None: ...


class HookDispatcher:
    def __init__(
        self, deliveries: Sequence[Delivery], enabled: frozenset[HookPoint] | None = None
    ) -> None:
        self.deliveries = tuple(deliveries)
        #: the deliveries of each enabled point that has any
        self._by_point: dict[HookPoint, tuple[Delivery, ...]] = {}
        for point in enabled if enabled is not None else HookPoint:
            listening = tuple(d for d in self.deliveries if point in d.points())
            if listening:
                self._by_point[point] = listening

    def enabled(self, point: HookPoint) -> bool:
        return point in self._by_point

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        answer = ACCEPTED
        for delivery in self._by_point.get(point, ()):
            given = await delivery.call(point, upload, caller)
            answer = HookAnswer(
                subject=given.subject if given.subject is not None else answer.subject,
                metadata=given.metadata if given.metadata is not None else answer.metadata,
                upload_id=given.upload_id if given.upload_id is not None else answer.upload_id,
            )
        return answer

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        """Every delivery at this point takes the event, or HookFailed (then all are tried
        again later: a consumer that took it already gets it twice, and can tell by its id)."""
        for delivery in self._by_point.get(point, ()):
            await delivery.deliver(point, event)

    async def close(self) -> None:
        for delivery in self.deliveries:
            close = getattr(delivery, "close", None)
            if close is not None:
                await close()
