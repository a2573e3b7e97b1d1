"""Admission policy: may a request start? Decided from its method and a few headers,
before any byte of its body is read.

Four limits, each off unless configured:
- a concurrency cap on requests that carry upload bytes (PATCH, POST with a body);
- a token bucket per client (rate R per second, burst B);
- a memory bound: above it, no new upload and no new upload bytes;
- a free-disk reserve: below it, no new upload bytes, and no creation that would not fit.

Everything here is pure: the clock and the readers of memory and disk are injected, so the
arithmetic is tested without waiting or filling a disk. The I/O lives in `system.py`
(readers), `middleware.py` (ASGI) and `tusd_py.state.redis_rate_limit` (shared buckets).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tusd_protocol.errors import (
    InsufficientStorage,
    MemoryPressure,
    ProtocolError,
    RateLimited,
    TooManyUploads,
)

Clock = Callable[[], float]
#: reads a figure (resident bytes, free bytes); None when it cannot be known
Reader = Callable[[], int | None]

#: Retry-After of each refusal, in seconds. A slot turns over in the time of one chunk, so
#: a refused client comes back soon (as for a locked upload's 423); memory falls as the
#: requests in flight finish; a full disk waits for an operator or an expiry sweep.
CONCURRENCY_RETRY_AFTER = 2
MEMORY_RETRY_AFTER = 5
DISK_RETRY_AFTER = 60


class Kind(enum.Enum):
    """What a request asks of the server, as far as admission is concerned."""

    #: PATCH, or POST with a body (creation-with-upload): upload bytes arrive
    BYTES = "bytes"
    #: POST without a body: a new upload, no bytes yet
    CREATE = "create"
    #: HEAD, GET, DELETE, OPTIONS: nothing grows
    OTHER = "other"


def classify(method: str, has_body: bool) -> Kind:
    """`method` is the effective one (after X-HTTP-Method-Override)."""
    if method == "PATCH":
        return Kind.BYTES
    if method == "POST":
        return Kind.BYTES if has_body else Kind.CREATE
    return Kind.OTHER


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admit:
    #: the request took a concurrency slot: the caller must release() it when it ends
    holds_slot: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """The request is answered at once with `error` (its status, code and sentence) and
    `Retry-After: retry_after`; nothing of it is read."""

    error: ProtocolError
    retry_after: int
    #: which limit refused it: "concurrency", "rate", "memory" or "disk" (for metrics)
    reason: str

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def sentence(self) -> str:
        return self.error.message


def refuse(kind: type[ProtocolError], retry_after: int, reason: str) -> Refuse:
    seconds = max(1, retry_after)
    return Refuse(kind(headers={"Retry-After": str(seconds)}), seconds, reason)


Decision = Admit | Refuse
ADMIT = Admit()
ADMIT_WITH_SLOT = Admit(holds_slot=True)


# --- the limits ---------------------------------------------------------------------------


class ConcurrencyCap:
    """At most `limit` holders at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency cap needs a limit of at least 1")
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("released a concurrency slot that was not held")
        self.in_use -= 1


@dataclass(slots=True)
class TokenBucket:
    """`tokens` as of `updated`; refills at `rate` per second up to `burst`."""

    tokens: float
    updated: float

    def take(self, now: float, rate: float, burst: int) -> float:
        """Take a token: 0 when there was one, else the seconds until there is one
        (nothing is taken then)."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(burst), self.tokens + elapsed * rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimiter(Protocol):
    """Token buckets keyed by client; implemented in-process (LocalRateLimiter) and in
    Redis (tusd_py.state.redis_rate_limit), where all instances share them."""

    async def acquire(self, client: str) -> float:
        """Take a token of `client`'s bucket: 0 when the request may go on, else the
        seconds until the client has one. May raise core.ports.BackendUnavailable."""
        ...


#: a client key longer than this is cut (with --behind-proxy, clients write their own)
MAX_CLIENT_KEY = 100


class LocalRateLimiter:
    """One bucket per client in this process. At most `max_clients` buckets are kept: the
    one used least recently is dropped (its client starts again with a full burst)."""

    def __init__(self, rate: float, burst: int, clock: Clock, max_clients: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str) -> float:
        client = client[:MAX_CLIENT_KEY]
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = TokenBucket(float(self.burst), now)
            while len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(client)
        return bucket.take(now, self.rate, self.burst)

    async def acquire(self, client: str) -> float:
        return self.take(client)


class CachedReading:
    """A reader asked at most once per `ttl` seconds (a syscall per request is too many)."""

    def __init__(self, read: Reader, clock: Clock, ttl: float) -> None:
        self.read = read
        self.clock = clock
        self.ttl = ttl
        self._value: int | None = None
        self._until = -math.inf

    def value(self) -> int | None:
        now = self.clock()
        if now >= self._until:
            self._value = self.read()
            self._until = now + self.ttl
        return self._value


class MemoryGuard:
    """Resident memory above `limit` bytes refuses creations and upload bytes."""

    def __init__(self, limit: int, read_rss: Reader, clock: Clock, ttl: float = 0.1) -> None:
        self.limit = limit
        self.rss = CachedReading(read_rss, clock, ttl)

    def over(self) -> bool:
        rss = self.rss.value()
        return rss is not None and rss > self.limit


class DiskGuard:
    """Free space below `reserve` bytes refuses upload bytes, and a creation is refused when
    its length does not fit above the reserve."""

    def __init__(
        self, reserve: int, read_free: Reader, clock: Clock, ttl: float = 1.0, where: str = ""
    ) -> None:
        self.reserve = reserve
        self.free = CachedReading(read_free, clock, ttl)
        #: the directory, as /ready names it
        self.where = where

    def short(self) -> bool:
        free = self.free.value()
        return free is not None and free < self.reserve

    def fits(self, length: int) -> bool:
        free = self.free.value()
        return free is None or length <= free - self.reserve

    def problem(self) -> str | None:
        """What /ready says while the disk is short, else None."""
        free = self.free.value()
        if free is None or free >= self.reserve:
            return None
        where = f"{self.where} has " if self.where else ""
        return f"{where}{free} bytes free, below the reserve of {self.reserve} (--min-free-disk)"


# --- the policy -----------------------------------------------------------------------------


@dataclass
class AdmissionPolicy:
    """The limits configured for one process; None means that limit is off."""

    cap: ConcurrencyCap | None = None
    memory: MemoryGuard | None = None
    disk: DiskGuard | None = None
    #: the largest upload the server takes (--max-size): a creation above it is bad input,
    #: which the protocol answers with 413, whatever the disk says
    max_size: int | None = None
    #: refusals so far, by reason (for metrics)
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def guards_requests(self) -> bool:
        """Whether any request kind but OTHER can be refused (rate limits aside)."""
        return self.cap is not None or self.memory is not None or self.disk is not None

    def decide(
        self, kind: Kind, upload_length: int | None = None, rate_wait: float = 0.0
    ) -> Decision:
        """Admit, or refuse with the first limit that says no (rate, disk, memory, then
        the cap, so that a refused request never holds a slot). `upload_length` is a
        creation's Upload-Length; `rate_wait` what the client's bucket said."""
        decision = self._decide(kind, upload_length, rate_wait)
        if isinstance(decision, Refuse):
            self.refusals[decision.reason] = self.refusals.get(decision.reason, 0) + 1
        return decision

    def _decide(self, kind: Kind, upload_length: int | None, rate_wait: float) -> Decision:
        if rate_wait > 0:
            return refuse(RateLimited, math.ceil(rate_wait), "rate")
        if kind is Kind.OTHER:
            return ADMIT
        if (
            upload_length is not None
            and self.max_size is not None
            and upload_length > self.max_size
        ):
            return ADMIT  # 413 from the protocol, before any body byte is read
        if self.disk is not None:
            if kind is Kind.BYTES and self.disk.short():
                return refuse(InsufficientStorage, DISK_RETRY_AFTER, "disk")
            if upload_length is not None and not self.disk.fits(upload_length):
                return refuse(InsufficientStorage, DISK_RETRY_AFTER, "disk")
        if self.memory is not None and self.memory.over():
            return refuse(MemoryPressure, MEMORY_RETRY_AFTER, "memory")
        if kind is Kind.BYTES and self.cap is not None:
            if not self.cap.try_acquire():
                return refuse(TooManyUploads, CONCURRENCY_RETRY_AFTER, "concurrency")
            return ADMIT_WITH_SLOT
        return ADMIT

    def release(self) -> None:
        """The end of a request admitted with `holds_slot`."""
        if self.cap is not None:
            self.cap.release()
