"""The composition root: settings in, a running service out.

Builds the store, the state database and repository, the cache and the locks (this host's, or
Redis), the upload service and its maintenance, and the Runtime that starts and stops them.
Nothing else in tusd-py chooses an implementation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from tusd_protocol.rules import Feature, Limits
from tusd_storage import Capability, FileStore, Store

from .admission.fallback import FallbackRateLimiter
from .admission.policy import (
    AdmissionPolicy,
    ConcurrencyCap,
    DiskGuard,
    LocalRateLimiter,
    MemoryGuard,
    RateLimiter,
)
from .admission.system import free_bytes, resident_bytes
from .config import Settings
from .core.hooks import NO_HOOKS, NOTIFYING, HookPoint, Hooks
from .core.maintenance import Maintenance
from .core.ports import NULL_METER, Meter, UploadCache, UploadLocks
from .core.service import UploadService
from .core.tasks import cancel_and_wait
from .metrics.instrumented import MeteredHooks, MeteredLocks, MeteredStore
from .state import migrations
from .state.database import Database
from .state.host_locks import HostLocks
from .state.memory_cache import StateCache
from .state.sql import Repository

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .events.relay import EventRelay

# redis and the Redis implementations are imported where Redis is configured: a server
# without it does not carry them (about 22 MiB per process)

log = logging.getLogger("tusd_py")


class SchemaNotMigrated(RuntimeError):
    pass


async def prepare_database(settings: Settings) -> None:
    """SQLite (embedded) migrates itself; a shared database is migrated by an operator."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrations.upgrade_if_needed, url)
        return
    if not await asyncio.to_thread(migrations.is_current, url):
        raise SchemaNotMigrated(
            "The database schema is not up to date; run `tusd-py migrate --database-url ...`"
            " before starting the server."
        )


class Runtime:
    """What one application instance runs beside its requests: database check, sweeper.

    Started by the ASGI lifespan, or by the first request when the application is mounted
    inside another one that does not forward lifespan events (Starlette's Mount does not).
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        service: UploadService,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.service = service
        self.redis = redis
        self.maintenance = Maintenance(service)
        self.started = False
        #: shutting down: uploads in flight save and answer, new writes are refused
        self.draining = False
        self._starting = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        #: delivers the outbox's events, when a notifying hook listens
        self.relay: EventRelay | None = None
        #: more questions /ready asks (each None when fine, else what is wrong)
        self.readiness_checks: list[Callable[[], str | None]] = []

    async def start(self) -> None:
        async with self._starting:
            if self.started:
                return
            await prepare_database(self.settings)
            await self.service.store.open()
            await self.service.locks.start()
            await self.service.progress_feed.start()
            # the sweeper also finishes assemblies that failed (a store that keeps layouts)
            if self.settings.limits.expiration is not None or self.service.store.uses_layout:
                self._sweeper = asyncio.create_task(
                    self.maintenance.sweep_forever(self.settings.sweep_interval)
                )
            hooks = self.service.hooks
            if any(hooks.enabled(point) for point in NOTIFYING):
                from .events.relay import EventRelay

                # a claim outlasts a delivery to each of the two deliveries, retries included
                lease = 2 * self.settings.hooks_timeout + 30
                self.relay = EventRelay(
                    self.service.repository,
                    hooks,
                    lease,
                    ensure_whole=self.service.ensure_whole,
                    meter=self.service.meter,
                    keep_delivered=self.settings.events_keep_delivered,
                )
                self.service.on_events = self.relay.nudge
                self.relay.start()
            self.started = True

    def begin_drain(self) -> None:
        """Shutdown has begun: report not ready, and let every upload in flight stop
        reading, save what it received and answer (new writes are refused meanwhile)."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: uploads in flight save what they received and answer")
        self.service.locks.stop_all()

    async def readiness(self) -> str | None:
        """None when the backing services answer, else what does not."""
        if self.draining:
            return "shutting down"
        try:
            await self.database.ping()
        except Exception as exc:
            return f"database: {exc}"
        if self.redis is not None:
            try:
                await self.redis.ping()
            except Exception as exc:
                return f"redis: {exc}"
        for check in self.readiness_checks:
            problem = check()
            if problem is not None:
                return problem
        return None

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()  # a delivery cut short stays claimed, then due again
            self.relay = None
        await cancel_and_wait(self._sweeper)
        await self.service.progress_feed.stop()
        await self.service.locks.stop()
        await self.service.store.close()
        await self.database.close()
        if self.redis is not None:
            await self.redis.aclose()
        self.started = False


def build_store(settings: Settings) -> Store:
    if not settings.uses_s3:
        return FileStore(
            settings.uploads_dir,
            settings.fsync,
            write_memory=settings.read_ahead_per_process,
            file_io=settings.file_io,
        )
    from tusd_storage.s3 import S3Config, S3Store

    return S3Store(
        S3Config.from_url(
            settings.storage,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            create_bucket=settings.s3_create_bucket,
            part_size=settings.s3_part_size,
            max_concurrent_parts=settings.s3_max_concurrent_parts,
            max_buffer_memory=settings.max_buffer_memory,
            buffer_wait_timeout=settings.buffer_wait_timeout,
        )
    )


def store_features(store: Store, limits: Limits) -> frozenset[Feature]:
    """What this server can offer, from the store's declared capabilities and the settings:
    every dialect advertises exactly these, and the rules refuse the rest."""
    features = {Feature.CREATION_WITH_UPLOAD, Feature.CHECKSUM, Feature.TERMINATION}
    for capability, feature in (
        (Capability.CONCATENATION, Feature.CONCATENATION),
        (Capability.DEFERRED_LENGTH, Feature.DEFERRED_LENGTH),
        (Capability.RANGE_READS, Feature.RANGE_READS),
    ):
        if capability in store.capabilities:
            features.add(feature)
    if limits.expiration is not None:
        features.add(Feature.EXPIRATION)
    return frozenset(features)


def build_service(
    settings: Settings,
    database: Database,
    redis: Redis | None = None,
    store: Store | None = None,
    meter: Meter = NULL_METER,
) -> UploadService:
    """With a meter, the store's calls and the lock waits are timed too (metrics/)."""
    store = store or build_store(settings)
    limits = settings.limits
    if store.max_upload_size is not None and (
        limits.max_size is None or limits.max_size > store.max_upload_size
    ):
        limits = replace(limits, max_size=store.max_upload_size)
    limits = replace(limits, features=store_features(store, limits))
    cache: UploadCache
    locks: UploadLocks
    if redis is not None:
        from .state.redis_cache import RedisStateCache
        from .state.redis_locks import RedisLocks

        redis_cache = RedisStateCache(redis, settings.cache_ttl)
        cache = redis_cache
        # releasing a lock also writes the holder's state to the cache, in one round trip
        locks = RedisLocks(
            redis,
            settings.lock_acquire_timeout,
            settings.lock_handover_timeout,
            cache=redis_cache,
        )
    else:
        # the processes of this host (the workers, gc) share the locks; each process's
        # memory of an upload lasts while no other process has held the upload since
        state_cache = StateCache(settings.cache_entries)
        host_locks = HostLocks(
            settings.host_locks_dir,
            settings.lock_acquire_timeout,
            forget=state_cache.drop,
            shared_required=settings.workers > 1,
        )
        state_cache.current = host_locks.is_tenured
        cache, locks = state_cache, host_locks
    if meter is not NULL_METER:
        store = MeteredStore(store, meter)
        locks = MeteredLocks(locks, meter)
    hooks = build_hooks(settings, redis)
    if meter is not NULL_METER and hooks is not NO_HOOKS:
        hooks = MeteredHooks(hooks, meter)
    service = UploadService(
        store, Repository(database), limits, cache, locks, meter=meter, hooks=hooks
    )
    service.progress_interval = settings.hooks_progress_interval
    from .events.progress import LocalProgressFeed, RedisProgressFeed

    service.progress_feed = RedisProgressFeed(redis) if redis is not None else LocalProgressFeed()
    return service


def build_hooks(settings: Settings, redis: Redis | None = None) -> Hooks:
    """The hooks the settings name (docs/hooks.md), or none."""
    if (
        settings.hooks_module is None
        and settings.hooks_url is None
        and settings.events_redis_stream is None
    ):
        return NO_HOOKS
    from .events.dispatch import Delivery, HookDispatcher
    from .events.python_hooks import PythonHooks
    from .events.webhook import Webhook

    enabled = frozenset(HookPoint(p) for p in settings.hooks_enabled) or None
    deliveries: list[Delivery] = []
    if settings.hooks_module is not None:
        deliveries.append(PythonHooks(settings.hooks_module, settings.hooks_timeout))
    if settings.hooks_url is not None:
        deliveries.append(
            Webhook(
                settings.hooks_url,
                settings.hooks_timeout,
                settings.hooks_retries,
                settings.hooks_forward_headers,
                # pre-access runs before every request: a webhook gets it only when named
                points=enabled or frozenset(HookPoint) - {HookPoint.PRE_ACCESS},
            )
        )
    if settings.events_redis_stream is not None:
        from .events.redis_stream import RedisStream

        if redis is None:
            raise ValueError("--events-redis-stream needs --redis-url")
        deliveries.append(RedisStream(redis, settings.events_redis_stream, settings.hooks_timeout))
    return HookDispatcher(deliveries, enabled)


def make_redis(settings: Settings) -> Redis:
    """A pool that makes a request wait at most db_pool_timeout for a connection, and
    sockets that give up on an unreachable Redis in seconds, not minutes."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.driver_info import DriverInfo

    assert settings.redis_url is not None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.db_pool_timeout,
        socket_connect_timeout=2,
        socket_timeout=5,
        # resolved once: left to redis-py, every new connection asks importlib.metadata for
        # its version (1 % of a worker's time while a burst of requests fills the pool)
        driver_info=DriverInfo(),
    )
    return Redis(connection_pool=pool)


def make_database(settings: Settings) -> Database:
    """The state database; its workers wait at most db_pool_timeout for their turn."""
    return Database(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        queue_timeout=settings.db_pool_timeout,
    )


class Admission:
    """The admission limits of one process (see tusd_py.admission)."""

    def __init__(self, policy: AdmissionPolicy, limiter: RateLimiter | None) -> None:
        self.policy = policy
        self.limiter = limiter

    @property
    def active(self) -> bool:
        return self.policy.guards_requests or self.limiter is not None

    def disk_problem(self) -> str | None:
        """/ready's question: is the upload store's disk above its reserve?"""
        disk = self.policy.disk
        problem = disk.problem() if disk is not None else None
        return None if problem is None else f"disk: {problem}"


def build_admission(settings: Settings, redis: Redis | None = None) -> Admission:
    clock = time.monotonic
    policy = AdmissionPolicy(
        cap=ConcurrencyCap(settings.max_concurrent_uploads)
        if settings.max_concurrent_uploads
        else None,
        memory=MemoryGuard(settings.max_memory, resident_bytes, clock)
        if settings.max_memory
        else None,
        disk=DiskGuard(
            settings.min_free_disk,
            lambda: free_bytes(settings.uploads_dir),
            clock,
            where=str(settings.uploads_dir),
        )
        if settings.min_free_disk and not settings.uses_s3
        else None,
        max_size=settings.limits.max_size,
    )
    limiter: RateLimiter | None = None
    if settings.rate_limit > 0:
        burst = settings.rate_limit_tokens
        limiter = LocalRateLimiter(settings.rate_limit, burst, clock)
        if redis is not None:
            from .state.redis_rate_limit import RedisRateLimiter

            shared = RedisRateLimiter(redis, settings.rate_limit, burst)
            limiter = FallbackRateLimiter(shared, limiter, clock)
    return Admission(policy, limiter)
