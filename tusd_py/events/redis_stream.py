"""A Redis Streams sink for notifying events: `--events-redis-stream NAME` appends each event
to the stream NAME (XADD) on the server's Redis (`--redis-url`), so that workers on other
machines take them with consumer groups (XREADGROUP, XACK).

Each entry has three fields: `id` (the event's id), `type` (post-finish, ...) and `event`
(the event as JSON). The relay appends an entry and only then marks the event delivered, so
an entry may be appended twice (a process killed in between); a consumer drops the second by
its `id`. The stream is trimmed to about `maxlen` entries (XADD MAXLEN ~): consumers that
fall further behind than that lose the oldest entries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.hooks import NOTIFYING, Caller, HookAnswer, HookFailed, HookPoint, HookUpload

if TYPE_CHECKING:
    from redis.asyncio import Redis


class RedisStream:
    def __init__(self, redis: Redis, stream: str, timeout: float, maxlen: int = 1_000_000) -> None:
        self.redis = redis
        self.stream = stream
        self.timeout = timeout
        self.maxlen = maxlen

    def points(self) -> frozenset[HookPoint]:
        return NOTIFYING  # a stream cannot answer: it takes no blocking hook

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        raise AssertionError("a stream takes notifying events only")  # points() says so

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        from redis.exceptions import RedisError

        fields = {
            "id": str(event["id"]),
            "type": point.value,
            "event": json.dumps(event, separators=(",", ":")),
        }
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.xadd(
                    self.stream,
                    fields,  # type: ignore[arg-type]  # redis-py's types are narrower than it takes
                    maxlen=self.maxlen,
                    approximate=True,
                )
        except (RedisError, TimeoutError) as exc:
            raise HookFailed(
                f"The {point.value} event could not be added to the Redis stream "
                f"{self.stream}: {exc or 'no answer in time'}"
            ) from exc
