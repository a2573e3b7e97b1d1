"""RedisLocks: one holder per upload across every instance, with handover (PROTOCOL 23).

Within a process, LocalLocks queues requests and hands over as before. Across processes a
Redis key is the lock: SET NX with a lease, released only by its holder (compare the token,
then delete, in one script), so a holder whose lease ran out can never release its
successor's lock.

Leases are renewed by ONE task per process, every lease/3, for every lock the process holds,
in one pipelined round trip. A request never owns a renewal task: releasing a lock is
forgetting its lease and one script call, with nothing to cancel and wait for. (A task per
request once left a request waiting forever: redis-py turned the renewal task's
cancellation into a connection error, the task took it for a Redis hiccup, renewed on and
never ended, and the request awaited it.)

Releasing the lock also writes the upload's state to the shared cache (RELEASE_WITH, one
script, only while the lock is still the holder's): the state the holder read from the
database or committed, whatever version the entry has, which repairs an entry that lies.
A PATCH so costs two Redis round trips (take, release), not four. The state is never
trusted the other way: a holder decides on what the database says, because a cache entry
can lie (a Redis or a database restored from an older snapshot).

Handover: a newcomer that finds the key taken publishes the upload id on one channel that
every instance listens to. The instance that holds the upload asks its holder to let go
(the same request_stop as in one process): the holder stops reading, saves what it
received, answers its client and releases. The newcomer polls the key meanwhile and
proceeds as soon as it is free; after the acquire timeout it answers 423.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload

from ..core.ports import BackendUnavailable, Holding
from .local_locks import LocalLocks
from .redis_cache import RedisStateCache, encode_upload

log = logging.getLogger("tusd_py.redis_locks")

#: KEYS[1] lock; ARGV[1] token. Delete only our own lock.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS[1] lock, KEYS[2] cache entry; ARGV[1] token, ARGV[2] version, ARGV[3] state JSON,
#: ARGV[4] entry TTL in ms. Release our own lock, leaving the database's state in the cache.
RELEASE_WITH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], 'v', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[1])
return 1
"""

#: KEYS[1] lock; ARGV[1] token, ARGV[2] lease in ms. Extend only our own lock.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: how often a waiting newcomer looks at the lock: often while a handover is expected,
#: less often once the holder has had its time to let go
FAST_POLL = 0.01
SLOW_POLL = 0.1


@dataclass
class _Lease:
    """A lock this process holds: its token, its holder, when Redis last confirmed it."""

    token: str
    holding: Holding
    renewed_at: float


class RedisLocks:
    def __init__(
        self,
        redis: Redis,
        acquire_timeout: float = 20.0,
        handover_timeout: float = 3.0,
        lease_seconds: float = 10.0,
        prefix: str = "tusd:",
        cache: RedisStateCache | None = None,
    ) -> None:
        self.redis = redis
        self.acquire_timeout = acquire_timeout
        self.handover_timeout = handover_timeout
        self.lease_ms = int(lease_seconds * 1000)
        self.prefix = prefix
        self.channel = f"{prefix}handover"
        self.local = LocalLocks(acquire_timeout)
        #: the cache that releases write to, when it caches (TTL above 0)
        self.cache = cache if cache is not None and cache.ttl_ms > 0 else None
        self._release_with = redis.register_script(RELEASE_WITH)
        self._release = redis.register_script(RELEASE)
        self._renew = redis.register_script(RENEW)
        #: the locks this process holds, by upload id: renewed together, and found by
        #: handover requests from other instances
        self._leases: dict[str, _Lease] = {}
        self._renewer: asyncio.Task[None] | None = None
        #: names this process on the handover channel: its own requests are handed over
        #: by LocalLocks, so it ignores what it published itself
        self.instance = secrets.token_hex(8)
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def key(self, upload_id: str) -> str:
        return f"{self.prefix}lock:{upload_id}"

    def is_held(self, upload_id: str) -> bool:
        """Held by a request of this process."""
        return self.local.is_held(upload_id)

    async def held_anywhere(self, upload_id: str) -> bool:
        if self.local.is_held(upload_id):
            return True
        try:
            return bool(await self.redis.exists(self.key(upload_id)))
        except RedisError as exc:
            raise BackendUnavailable(f"the lock service cannot be asked: {exc}") from exc

    def stop_all(self) -> None:
        self.local.stop_all()  # every holding of this process is made by self.local

    # --- handover requests from other instances ---------------------------------------

    async def start(self) -> None:
        self._start_renewer()
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._listening.wait()

    async def stop(self) -> None:
        for task in (self._listener, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._renewer = None

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while True:
                        # a bounded wait, so that a socket timeout never looks like a fault
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        if message.get("type") == "subscribe":
                            self._listening.set()  # Redis confirmed: nothing is missed now
                            continue
                        if message.get("type") != "message":
                            continue
                        data = message.get("data")
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        sender, _, upload_id = text.partition(" ")
                        lease = self._leases.get(upload_id)
                        if lease is not None and sender != self.instance:
                            lease.holding.request_stop()
            except RedisError as exc:
                self._listening.clear()
                log.warning("handover channel lost (%s); listening again in 1 s", exc)
                await asyncio.sleep(1)

    # --- holding ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str, *, wait: bool = True) -> AsyncIterator[Holding]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.acquire_timeout  # one deadline, local wait included
        async with self.local.hold(upload_id, wait=wait) as holding:
            token = secrets.token_hex(16)
            await self._acquire(upload_id, token, holding, wait, deadline)
            self._leases[upload_id] = _Lease(token, holding, loop.time())
            self._start_renewer()  # normally running since start(); never two
            try:
                yield holding
            finally:
                self._leases.pop(upload_id, None)
                try:
                    await self._give_back(upload_id, token, holding.settled)
                except RedisError as exc:  # the lease ends by itself
                    log.warning("could not release the lock of %s: %s", upload_id, exc)

    async def _give_back(self, upload_id: str, token: str, settled: Upload | None) -> None:
        if self.cache is None or settled is None or settled.id != upload_id:
            await self._release(keys=[self.key(upload_id)], args=[token])
            return
        await self._release_with(
            keys=[self.key(upload_id), self.cache.key(upload_id)],
            args=[token, settled.version, encode_upload(settled), self.cache.ttl_ms],
        )

    async def _take(self, upload_id: str, token: str, holding: Holding) -> bool:
        if not await self.redis.set(self.key(upload_id), token, nx=True, px=self.lease_ms):
            return False
        holding.keeps_state = self.cache is not None
        return True

    async def _acquire(
        self, upload_id: str, token: str, holding: Holding, wait: bool, deadline: float
    ) -> None:
        if await self._take(upload_id, token, holding):
            return
        if not wait:
            raise UploadLocked(headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_ask = started
        while True:
            now = loop.time()
            if now >= next_ask:
                # whoever holds it, on whichever instance: let go
                await self.redis.publish(self.channel, f"{self.instance} {upload_id}")
                next_ask = now + self.handover_timeout
            fast = now - started < self.handover_timeout
            await asyncio.sleep(FAST_POLL if fast else SLOW_POLL)
            if await self._take(upload_id, token, holding):
                return
            if loop.time() >= deadline:
                raise UploadLocked(
                    "Another request holds this upload and did not let go; retry shortly.",
                    headers={"Retry-After": "2"},
                )

    async def _renew_forever(self) -> None:
        """Every lease/3: renew every lock this process holds, in one round trip. A lock
        found lost, or not renewed before half of its lease is gone, asks its holder to stop
        (and save what it has) before another instance may take the upload."""
        interval = self.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_all()
            except Exception:  # never end the renewals of every other lock...
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    return  # ...unless stop() cancelled us and the client said otherwise
                log.exception("lock renewal failed")

    async def _renew_all(self) -> None:
        leases = list(self._leases.items())
        if not leases:
            return
        loop = asyncio.get_running_loop()
        pipe = self.redis.pipeline(transaction=False)
        for upload_id, lease in leases:
            await self._renew(
                keys=[self.key(upload_id)], args=[lease.token, self.lease_ms], client=pipe
            )
        try:
            async with asyncio.timeout(self.lease_ms / 3000):
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, TimeoutError) as exc:
            log.warning("could not renew %d lock(s): %s", len(leases), exc)
            for _, lease in leases:
                if loop.time() - lease.renewed_at > self.lease_ms / 2000:
                    lease.holding.request_stop()
            return
        renewed_at = loop.time()
        for (upload_id, lease), result in zip(leases, results, strict=True):
            if self._leases.get(upload_id) is not lease:
                continue  # released meanwhile
            if isinstance(result, Exception):
                log.warning("could not renew the lock of %s: %s", upload_id, result)
            elif result:
                lease.renewed_at = renewed_at
            else:
                log.warning("the lock of %s was lost; its request stops", upload_id)
                lease.holding.request_stop()
