"""Progress feeds: how far uploads got, for people watching (`GET <upload>/progress`).

The service publishes a note while an upload's bytes arrive (at most once per
--hooks-progress-interval per upload) and at each commit; a watcher gets the notes of its
upload. Best effort by design: a note lost on the way costs a watcher nothing but a moment,
because the stream also reads the upload's state every POLL_SECONDS (see
UploadService.watch), and that is what ends it when the upload finishes.

- LocalProgressFeed: the watchers of this process.
- RedisProgressFeed (with --redis-url): the watchers of every instance. Each process holds
  one subscription connection. A watcher announces its upload on `<prefix>progress-watch`
  (at once, then every ANNOUNCE_SECONDS); every instance then PUBLISHes that upload's notes
  on `<prefix>progress:<id>` for WANTED_SECONDS, and the watcher's process subscribes to
  that channel. An upload no one watches costs nothing: no note is published for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..core.ports import ProgressNote
from ..core.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("tusd_py.progress")

#: notes a slow watcher may fall behind by before the oldest are dropped
QUEUE_NOTES = 16
#: a watcher says again that it watches, this often; instances publish an upload's notes for
#: WANTED_SECONDS after they last heard it
ANNOUNCE_SECONDS = 20.0
WANTED_SECONDS = 60.0


def _offer(queue: asyncio.Queue[ProgressNote], note: ProgressNote) -> None:
    """Queue the note; a watcher that fell behind loses its oldest note, never blocks us."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(note)


class LocalProgressFeed:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[ProgressNote]]] = {}

    def watched(self, upload_id: str) -> bool:
        return upload_id in self._watchers

    def wanted(self, upload_id: str) -> bool:
        """Whether anyone watches the upload (only then are notes worth making)."""
        return upload_id in self._watchers

    def publish(self, note: ProgressNote) -> None:
        for queue in self._watchers.get(note.upload_id, ()):
            _offer(queue, note)

    @contextlib.asynccontextmanager
    async def watch(self, upload_id: str) -> AsyncIterator[asyncio.Queue[ProgressNote]]:
        queue: asyncio.Queue[ProgressNote] = asyncio.Queue(QUEUE_NOTES)
        self._watchers.setdefault(upload_id, set()).add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(upload_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[upload_id]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class RedisProgressFeed:
    def __init__(self, redis: Redis, prefix: str = "tusd:") -> None:
        self.redis = redis
        self.prefix = prefix
        self.announcements = f"{prefix}progress-watch"
        self.local = LocalProgressFeed()
        #: uploads someone watches somewhere, until when (loop time)
        self._wanted: dict[str, float] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    def channel(self, upload_id: str) -> str:
        return f"{self.prefix}progress:{upload_id}"

    def wanted(self, upload_id: str) -> bool:
        until = self._wanted.get(upload_id)
        if until is None:
            return False
        if asyncio.get_running_loop().time() > until:
            del self._wanted[upload_id]
            return False
        return True

    def publish(self, note: ProgressNote) -> None:
        if not self.wanted(note.upload_id):
            return
        self._spawn(self._send(self.channel(note.upload_id), _note_text(note)))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, channel: str, text: str) -> None:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(2):
                await self.redis.publish(channel, text)
        except (RedisError, TimeoutError) as exc:  # the watcher's polling still follows it
            log.debug("progress note on %s not published: %s", channel, exc)

    @contextlib.asynccontextmanager
    async def watch(self, upload_id: str) -> AsyncIterator[asyncio.Queue[ProgressNote]]:
        async with self.local.watch(upload_id) as queue:
            await self._subscribe(self.channel(upload_id))
            announcing = asyncio.create_task(self._announce(upload_id))
            try:
                yield queue
            finally:
                await cancel_and_wait(announcing)
                if not self.local.watched(upload_id):
                    await self._unsubscribe(self.channel(upload_id))

    async def _announce(self, upload_id: str) -> None:
        while True:
            await self._send(self.announcements, upload_id)
            await asyncio.sleep(ANNOUNCE_SECONDS)

    async def _subscribe(self, channel: str) -> None:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(2):
                await self._pubsub.subscribe(channel)
        except (RedisError, TimeoutError, AttributeError) as exc:
            log.warning("progress: no subscription to %s (%s)", channel, exc)

    async def _unsubscribe(self, channel: str) -> None:
        from redis.exceptions import RedisError

        with contextlib.suppress(RedisError, TimeoutError, AttributeError):
            async with asyncio.timeout(2):
                await self._pubsub.unsubscribe(channel)

    async def start(self) -> None:
        if self._pubsub is None:
            self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            await self._subscribe(self.announcements)
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from redis.exceptions import RedisError

        prefix = self.channel("")
        loop = asyncio.get_running_loop()
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, RuntimeError) as exc:
                log.debug("progress subscription: %s", exc)
                await asyncio.sleep(1)
                with contextlib.suppress(RedisError, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._pubsub.subscribe(self.announcements)
                continue
            if not message or message.get("type") != "message":
                continue
            channel = _text(message["channel"])
            if channel == self.announcements:
                if len(self._wanted) > 10_000:
                    self._wanted.clear()  # a watcher says it again within 20 s
                self._wanted[_text(message["data"])] = loop.time() + WANTED_SECONDS
                continue
            data = json.loads(message["data"])
            self.local.publish(
                ProgressNote(
                    upload_id=channel[len(prefix) :],
                    offset=data["offset"],
                    length=data["length"],
                    status=data["status"],
                )
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        for task in list(self._sending):
            task.cancel()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _note_text(note: ProgressNote) -> str:
    return json.dumps(
        {"offset": note.offset, "length": note.length, "status": note.status},
        separators=(",", ":"),
    )
