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
A PATCH so costs two Redis commands (take, release), not four. The state is never
trusted the other way: a holder decides on what the database says, because a cache entry
can lie (a Redis or a database restored from an older snapshot).

Takes and releases of concurrent requests go to Redis together, one pipeline per batch
(batching.py), at most one batch of each in flight. At 1,000 concurrent uploads batches
held 11-15 commands, and the server did 25 % more uploads a second with 18 % less CPU than
with a round trip per command: on these machines a loopback write that wakes Redis costs
more CPU than the command.

Kept locks: when a request ends and its upload still expects bytes, the process keeps the
Redis lock for KEEP_SECONDS more (renewed with the rest), because the upload's next PATCH
usually follows at once, on the same connection, to the same process. That PATCH then takes
only the process's own lock: no Redis round trip to take, none to give back. At 1,000
concurrent uploads this took a POST and four PATCHes from ten Redis round trips to about
two. A kept lock is given back, with its state for the cache, when it has been idle for
KEEP_SECONDS, when another instance asks for the upload (at once: no request is holding
it), when the upload no longer expects bytes, when a renewal fails (Redis away: the next
request asks Redis, and answers 503 while it is away), and at shutdown. A request that
that takes a kept lock may start from the kept state (Holding.kept), and a HEAD in the
keeping process answers from it (kept_state): no other instance can have moved the upload,
since the lock is ours. Only a request that takes the lock from Redis reads the database.

Handover: a newcomer that finds the key taken publishes the upload id on one channel that
every instance listens to. The instance that holds the upload asks its holder to let go
(the same request_stop as in one process): the holder stops reading, saves what it
received, answers its client and releases. The newcomer polls the key meanwhile and
proceeds as soon as it is free; after the acquire timeout it answers 423.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload, UploadStatus

from ..core.ports import BackendUnavailable, Holding
from ..core.tasks import cancel_and_wait
from .batching import Batcher
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

#: how often a waiting newcomer looks at the lock: often while a handover is expected
#: (a kept lock is given back within a millisecond of the asking), less often once the
#: holder has had its time to let go
FIRST_POLL = 0.002
FAST_POLL = 0.01
SLOW_POLL = 0.1

#: how long a lock is kept after its request ended, waiting for the upload's next PATCH
KEEP_SECONDS = 2.0


@dataclass
class _Lease:
    """A lock this process holds: its token, its holder (None while it is kept with no
    request holding it), when Redis last confirmed it."""

    token: str
    holding: Holding | None
    renewed_at: float
    #: while kept: the state to leave in the cache when the lock is given back
    settled: Upload | None = None
    #: while kept: gives it back once idle for KEEP_SECONDS
    keep_timer: asyncio.TimerHandle | None = None


class RedisLocks:
    def __init__(
        self,
        redis: Redis,
        acquire_timeout: float = 20.0,
        handover_timeout: float = 3.0,
        lease_seconds: float = 10.0,
        prefix: str = "tusd:",
        cache: RedisStateCache | None = None,
        keep_seconds: float = KEEP_SECONDS,
    ) -> None:
        self.redis = redis
        self.keep_seconds = keep_seconds
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
        #: lock tokens: the instance name and a counter (unique, and no system call each)
        self._tokens = itertools.count()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        #: kept locks being given back
        self._letting_go: set[asyncio.Task[None]] = set()
        #: how many holds took a kept lock instead of a Redis round trip (for tests, notes)
        self.reused = 0
        #: takes and give-backs of concurrent requests go to Redis together, one pipeline
        #: (one round trip) per batch: at most one batch of each in flight
        self._takes: Batcher[tuple[str, str], bool] = Batcher(
            self._take_batch, key=_first, max_in_flight=1
        )
        self._gives: Batcher[tuple[str, str, Upload | None], None] = Batcher(
            self._give_batch, key=_first, max_in_flight=1
        )

    def key(self, upload_id: str) -> str:
        return f"{self.prefix}lock:{upload_id}"

    def is_held(self, upload_id: str) -> bool:
        """Held by a request of this process."""
        return self.local.is_held(upload_id)

    def kept_state(self, upload_id: str) -> Upload | None:
        lease = self._leases.get(upload_id)
        if lease is None or lease.holding is not None:
            return None
        if asyncio.get_running_loop().time() - lease.renewed_at > self.lease_ms / 2000:
            return None  # not confirmed lately: ask the database
        return lease.settled

    async def held_anywhere(self, upload_id: str) -> bool:
        if self.local.is_held(upload_id) or upload_id in self._leases:
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
        # kept locks go back now, with their states, so that no other instance waits for
        # their leases to run out
        for upload_id, lease in list(self._leases.items()):
            if lease.holding is None:
                self._let_go(upload_id, lease)
        if self._letting_go:
            await asyncio.wait(self._letting_go, timeout=5)
        for task in (self._listener, self._renewer):
            await cancel_and_wait(task)
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
                        if lease is None or sender == self.instance:
                            continue
                        if lease.holding is None:
                            self._let_go(upload_id, lease)  # kept, idle: at once
                        else:
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
            # no other request of this process holds the upload now: a lease found here is
            # kept, idle
            lease = await self._reuse(upload_id)
            if lease is None:
                token = f"{self.instance}.{next(self._tokens):x}"
                await self._acquire(upload_id, token, holding, wait, deadline)
                lease = _Lease(token, holding, loop.time())
                self._leases[upload_id] = lease
            else:
                # kept since its last holder read or committed it, and no other instance
                # can have written it meanwhile (every writer holds the lock): the
                # database's record, without asking the database
                holding.kept = lease.settled
            lease.holding = holding
            holding.keeps_state = self.cache is not None
            self._start_renewer()  # normally running since start(); never two
            try:
                yield holding
            finally:
                lease.holding = None
                if self._leases.get(upload_id) is not lease:
                    pass  # lost while held (renewals said so): nothing of ours to give back
                elif self._may_keep(holding):
                    lease.settled = holding.settled
                    lease.keep_timer = loop.call_later(
                        self.keep_seconds, self._let_go, upload_id, lease
                    )
                else:
                    del self._leases[upload_id]
                    try:
                        await self._give_back(upload_id, lease.token, holding.settled)
                    except RedisError as exc:  # the lease ends by itself
                        log.warning("could not release the lock of %s: %s", upload_id, exc)

    def _may_keep(self, holding: Holding) -> bool:
        """Keep the lock for the upload's next request: only while more bytes are expected,
        its state is known, and no one (another request, a shutdown) asked for it."""
        settled = holding.settled
        return (
            self.keep_seconds > 0
            and not holding.stop_requested
            and not self.local.stopping
            and settled is not None
            and settled.id == holding.upload_id
            and settled.status is UploadStatus.RECEIVING
        )

    async def _reuse(self, upload_id: str) -> _Lease | None:
        """The kept lease of this upload, if this process still has it."""
        lease = self._leases.get(upload_id)
        if lease is None:
            return None
        if lease.keep_timer is not None:
            lease.keep_timer.cancel()
            lease.keep_timer = None
        loop = asyncio.get_running_loop()
        if loop.time() - lease.renewed_at > self.lease_ms / 2000:
            # not confirmed lately (Redis was slow or away): ask before relying on it
            del self._leases[upload_id]
            try:
                still_ours = await self._renew(
                    keys=[self.key(upload_id)], args=[lease.token, self.lease_ms]
                )
            except RedisError as exc:
                raise BackendUnavailable(f"the lock service cannot be asked: {exc}") from exc
            if not still_ours:
                return None
            lease.renewed_at = loop.time()
            self._leases[upload_id] = lease
        self.reused += 1
        return lease

    def _let_go(self, upload_id: str, lease: _Lease) -> None:
        """Give a kept lock back (idle too long, asked for elsewhere, shutting down)."""
        if lease.keep_timer is not None:
            lease.keep_timer.cancel()
            lease.keep_timer = None
        if self._leases.get(upload_id) is not lease or lease.holding is not None:
            return  # given back already, or a request took it again
        del self._leases[upload_id]
        task = asyncio.get_running_loop().create_task(self._give_back_kept(upload_id, lease))
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    def _forget_kept(self, upload_id: str, lease: _Lease) -> None:
        if lease.keep_timer is not None:
            lease.keep_timer.cancel()
            lease.keep_timer = None
        if self._leases.get(upload_id) is lease and lease.holding is None:
            del self._leases[upload_id]

    async def _give_back_kept(self, upload_id: str, lease: _Lease) -> None:
        try:
            async with asyncio.timeout(self.lease_ms / 1000):
                await self._give_back(upload_id, lease.token, lease.settled)
        except (RedisError, TimeoutError) as exc:  # the lease ends by itself
            log.warning("could not release the lock of %s: %s", upload_id, exc)

    async def _give_back(self, upload_id: str, token: str, settled: Upload | None) -> None:
        await self._gives.submit((upload_id, token, settled))

    async def _give_batch(
        self, calls: list[tuple[str, str, Upload | None]]
    ) -> list[BaseException | None]:
        pipe = self.redis.pipeline(transaction=False)
        for upload_id, token, settled in calls:
            if self.cache is None or settled is None or settled.id != upload_id:
                await self._release(keys=[self.key(upload_id)], args=[token], client=pipe)
            else:
                await self._release_with(
                    keys=[self.key(upload_id), self.cache.key(upload_id)],
                    args=[token, settled.version, encode_upload(settled), self.cache.ttl_ms],
                    client=pipe,
                )
        results = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def _take(self, upload_id: str, token: str) -> bool:
        return await self._takes.submit((upload_id, token))

    async def _take_batch(self, calls: list[tuple[str, str]]) -> list[bool | BaseException]:
        pipe = self.redis.pipeline(transaction=False)
        for upload_id, token in calls:
            pipe.set(self.key(upload_id), token, nx=True, px=self.lease_ms)
        results = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else bool(r) for r in results]

    async def _acquire(
        self, upload_id: str, token: str, holding: Holding, wait: bool, deadline: float
    ) -> None:
        if await self._take(upload_id, token):
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
            waited = now - started
            if waited < FAST_POLL:
                poll = FIRST_POLL
            else:
                poll = FAST_POLL if waited < self.handover_timeout else SLOW_POLL
            await asyncio.sleep(poll)
            if await self._take(upload_id, token):
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
            for upload_id, lease in leases:
                if lease.holding is None:
                    # kept: no longer relied on (its lease ends by itself); the next request
                    # for the upload asks Redis, and answers 503 while Redis is away
                    self._forget_kept(upload_id, lease)
                elif loop.time() - lease.renewed_at > self.lease_ms / 2000:
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
            elif lease.holding is None:  # kept, and lost: nothing to give back
                log.warning("the kept lock of %s was lost", upload_id)
                self._forget_kept(upload_id, lease)
            else:
                log.warning("the lock of %s was lost; its request stops", upload_id)
                lease.holding.request_stop()


def _first(call: tuple[str, str] | tuple[str, str, Upload | None]) -> str:
    """The upload a take or a give-back is for (two never share a pipeline)."""
    return call[0]
