"""Admission control without a server: the pure policy (caps, token buckets, memory and disk
checks, with a fake clock and injected readers), the ASGI middleware around a tiny app, the
fallback from shared to local buckets, and the Redis buckets against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis
from starlette.types import Message, Receive, Scope, Send

from tests.conftest import missing_service
from tests.unit._async import run, until
from tusd_protocol.errors import (
    InsufficientStorage,
    MemoryPressure,
    RateLimited,
    TooManyUploads,
)
from tusd_py.admission.fallback import FallbackRateLimiter
from tusd_py.admission.middleware import AdmissionMiddleware, client_address
from tusd_py.admission.policy import (
    AdmissionPolicy,
    Admit,
    ConcurrencyCap,
    DiskGuard,
    Kind,
    LocalRateLimiter,
    MemoryGuard,
    Refuse,
    TokenBucket,
    classify,
)
from tusd_py.admission.system import free_bytes, resident_bytes
from tusd_py.core.ports import BackendUnavailable
from tusd_py.state.redis_rate_limit import RedisRateLimiter

MiB = 1024 * 1024


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Reading:
    """A reader whose figure the test sets, counting how often it is read."""

    def __init__(self, value: int | None) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> int | None:
        self.reads += 1
        return self.value


def refused(decision: Admit | Refuse) -> Refuse:
    assert isinstance(decision, Refuse), decision
    return decision


# --- what counts as an upload ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "has_body", "kind"),
    [
        ("PATCH", True, Kind.BYTES),
        ("PATCH", False, Kind.BYTES),
        ("POST", True, Kind.BYTES),
        ("POST", False, Kind.CREATE),
        ("HEAD", False, Kind.OTHER),
        ("GET", False, Kind.OTHER),
        ("DELETE", False, Kind.OTHER),
        ("OPTIONS", False, Kind.OTHER),
    ],
)
def test_requests_that_carry_upload_bytes_are_patches_and_posts_with_a_body(
    method: str, has_body: bool, kind: Kind
) -> None:
    assert classify(method, has_body) is kind


# --- the concurrency cap -------------------------------------------------------------------


def test_the_cap_refuses_upload_bytes_past_its_limit_with_503_and_retry_after() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(2))
    assert policy.decide(Kind.BYTES) == Admit(holds_slot=True)
    assert policy.decide(Kind.BYTES) == Admit(holds_slot=True)
    refusal = refused(policy.decide(Kind.BYTES))
    assert (refusal.status, refusal.code, refusal.reason) == (
        503,
        "ERR_TOO_MANY_UPLOADS",
        "concurrency",
    )
    assert isinstance(refusal.error, TooManyUploads)
    assert refusal.retry_after >= 1
    assert refusal.error.headers == {"Retry-After": str(refusal.retry_after)}
    assert policy.refusals == {"concurrency": 1}


def test_a_released_slot_admits_the_next_upload() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    assert policy.decide(Kind.BYTES).holds_slot  # type: ignore[union-attr]
    refused(policy.decide(Kind.BYTES))
    policy.release()
    assert policy.decide(Kind.BYTES) == Admit(holds_slot=True)


def test_creations_without_bytes_and_other_requests_take_no_slot() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    assert policy.decide(Kind.BYTES).holds_slot  # type: ignore[union-attr]
    for kind in (Kind.CREATE, Kind.OTHER):
        assert policy.decide(kind) == Admit(holds_slot=False)
    assert policy.cap is not None and policy.cap.in_use == 1


def test_releasing_a_slot_nobody_holds_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        ConcurrencyCap(1).release()


# --- token buckets --------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(tokens=2.0, updated=0.0)
    assert bucket.take(0.0, rate=1.0, burst=2) == 0
    assert bucket.take(0.0, rate=1.0, burst=2) == 0
    assert bucket.take(0.0, rate=1.0, burst=2) == pytest.approx(1.0)
    assert bucket.take(0.25, rate=1.0, burst=2) == pytest.approx(0.75)
    assert bucket.take(1.0, rate=1.0, burst=2) == 0
    assert bucket.take(1.0, rate=1.0, burst=2) == pytest.approx(1.0)


def test_a_slow_rate_makes_a_client_wait_longer() -> None:
    bucket = TokenBucket(tokens=1.0, updated=0.0)
    assert bucket.take(0.0, rate=0.5, burst=1) == 0
    assert bucket.take(0.0, rate=0.5, burst=1) == pytest.approx(2.0)
    assert bucket.take(1.5, rate=0.5, burst=1) == pytest.approx(0.5)


def test_an_idle_bucket_fills_up_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(tokens=0.0, updated=0.0)
    bucket.take(3600.0, rate=10.0, burst=3)
    assert bucket.tokens == pytest.approx(2.0)  # refilled to 3, one taken


def test_a_clock_that_steps_back_gives_no_tokens() -> None:
    bucket = TokenBucket(tokens=0.0, updated=10.0)
    assert bucket.take(5.0, rate=1.0, burst=5) == pytest.approx(1.0)
    assert bucket.take(10.5, rate=1.0, burst=5) == pytest.approx(0.5)


def test_each_client_has_its_own_bucket() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.take("192.0.2.1") == 0
    assert limiter.take("192.0.2.1") == pytest.approx(1.0)
    assert limiter.take("192.0.2.2") == 0
    clock.advance(1.0)
    assert limiter.take("192.0.2.1") == 0


def test_the_local_limiter_keeps_a_bounded_number_of_clients() -> None:
    limiter = LocalRateLimiter(rate=1.0, burst=1, clock=FakeClock(), max_clients=3)
    for index in range(10):
        limiter.take(f"client-{index}")
    assert list(limiter.buckets) == ["client-7", "client-8", "client-9"]


def test_a_rate_limited_request_is_429_with_retry_after_rounded_up() -> None:
    policy = AdmissionPolicy()
    refusal = refused(policy.decide(Kind.OTHER, rate_wait=0.2))
    assert (refusal.status, refusal.code, refusal.reason) == (429, "ERR_RATE_LIMITED", "rate")
    assert isinstance(refusal.error, RateLimited)
    assert refusal.retry_after == 1
    assert refused(policy.decide(Kind.BYTES, rate_wait=2.01)).retry_after == 3
    assert policy.decide(Kind.OTHER, rate_wait=0.0) == Admit()


# --- memory ---------------------------------------------------------------------------------


def test_memory_above_the_bound_refuses_new_uploads_and_bytes_but_not_reads() -> None:
    rss = Reading(200 * MiB)
    policy = AdmissionPolicy(memory=MemoryGuard(100 * MiB, rss, FakeClock()))
    for kind in (Kind.BYTES, Kind.CREATE):
        refusal = refused(policy.decide(kind))
        assert (refusal.status, refusal.code, refusal.reason) == (
            503,
            "ERR_MEMORY_PRESSURE",
            "memory",
        )
        assert isinstance(refusal.error, MemoryPressure)
    assert policy.decide(Kind.OTHER) == Admit()


def test_memory_below_the_bound_or_unknown_admits() -> None:
    rss = Reading(50 * MiB)
    clock = FakeClock()
    policy = AdmissionPolicy(memory=MemoryGuard(100 * MiB, rss, clock))
    assert policy.decide(Kind.BYTES) == Admit()
    rss.value = None
    clock.advance(1.0)
    assert policy.decide(Kind.BYTES) == Admit()


def test_memory_is_read_at_most_every_100_ms() -> None:
    rss = Reading(50 * MiB)
    clock = FakeClock()
    guard = MemoryGuard(100 * MiB, rss, clock)
    for _ in range(50):
        guard.over()
    assert rss.reads == 1
    rss.value = 150 * MiB
    assert not guard.over()  # still the cached figure
    clock.advance(0.1)
    assert guard.over()
    assert rss.reads == 2


def test_resident_bytes_reads_this_process() -> None:
    rss = resident_bytes()
    if not os.path.exists("/proc/self/statm"):
        assert rss is None
        return
    assert rss is not None and 1 * MiB < rss < 64 * 1024 * MiB


# --- disk -----------------------------------------------------------------------------------


def test_free_disk_below_the_reserve_refuses_upload_bytes_with_507() -> None:
    free = Reading(100 * MiB)
    policy = AdmissionPolicy(disk=DiskGuard(256 * MiB, free, FakeClock()))
    refusal = refused(policy.decide(Kind.BYTES))
    assert (refusal.status, refusal.code, refusal.reason) == (
        507,
        "ERR_INSUFFICIENT_STORAGE",
        "disk",
    )
    assert isinstance(refusal.error, InsufficientStorage)
    assert refusal.retry_after >= 1
    assert policy.decide(Kind.OTHER) == Admit()
    assert policy.decide(Kind.CREATE, upload_length=None) == Admit()  # deferred: no bytes yet


def test_a_creation_whose_length_does_not_fit_above_the_reserve_is_refused() -> None:
    free = Reading(1000 * MiB)
    policy = AdmissionPolicy(disk=DiskGuard(256 * MiB, free, FakeClock()))
    assert policy.decide(Kind.CREATE, upload_length=744 * MiB) == Admit()
    assert refused(policy.decide(Kind.CREATE, upload_length=744 * MiB + 1)).status == 507
    assert refused(policy.decide(Kind.BYTES, upload_length=800 * MiB)).status == 507
    assert policy.decide(Kind.BYTES, upload_length=10 * MiB) == Admit()


def test_a_creation_above_the_maximum_size_is_left_to_the_protocols_413() -> None:
    """Bad input gets its 4xx, not a 507: an Upload-Length above --max-size is refused by
    the protocol (413) however full the disk is."""
    free = Reading(1 * MiB)  # below the reserve
    policy = AdmissionPolicy(disk=DiskGuard(256 * MiB, free, FakeClock()), max_size=100 * MiB)
    assert policy.decide(Kind.CREATE, upload_length=100 * MiB + 1) == Admit()
    assert policy.decide(Kind.BYTES, upload_length=100 * MiB + 1) == Admit()
    assert refused(policy.decide(Kind.CREATE, upload_length=100 * MiB)).status == 507
    assert refused(policy.decide(Kind.BYTES)).status == 507


def test_free_disk_is_read_at_most_once_a_second_and_unknown_admits() -> None:
    free = Reading(None)
    clock = FakeClock()
    guard = DiskGuard(256 * MiB, free, clock, where="/srv/uploads")
    assert not guard.short() and guard.fits(10**15) and guard.problem() is None
    free.value = 1 * MiB
    clock.advance(0.5)
    assert not guard.short()
    clock.advance(0.5)
    assert guard.short()
    assert free.reads == 2
    problem = guard.problem()
    assert problem is not None and "/srv/uploads" in problem and str(MiB) in problem


def test_free_bytes_reads_the_filesystem_of_the_nearest_existing_directory(tmp_path: Any) -> None:
    free = free_bytes(tmp_path / "not" / "yet")
    assert free is not None and free == free_bytes(tmp_path)


# --- the order of the checks ----------------------------------------------------------------


def test_a_request_refused_by_another_limit_takes_no_slot() -> None:
    clock = FakeClock()
    policy = AdmissionPolicy(
        cap=ConcurrencyCap(1),
        memory=MemoryGuard(1, Reading(2), clock),
    )
    assert refused(policy.decide(Kind.BYTES)).reason == "memory"
    assert refused(policy.decide(Kind.BYTES, rate_wait=1.0)).reason == "rate"
    assert policy.cap is not None and policy.cap.in_use == 0
    assert policy.refusals == {"memory": 1, "rate": 1}


# --- the middleware -------------------------------------------------------------------------


class TinyApp:
    """Answers 204 after reading its whole body; `hold` makes it wait after answering (or
    before, with `answer_first=False`) until the test lets it go."""

    def __init__(self, fail: bool = False, answer_first: bool = True) -> None:
        self.calls = 0
        self.fail = fail
        self.answer_first = answer_first
        self.hold = asyncio.Event()
        self.hold.set()
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the application failed")
        if not self.answer_first:
            await self.hold.wait()
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await self.hold.wait()


def scope_of(
    method: str = "PATCH",
    path: str = "/files/abc",
    headers: dict[str, str] | None = None,
    client: str = "192.0.2.1",
) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 50000),
    }


async def never_receive() -> Message:
    raise AssertionError("a refused request's body was read")


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def call(middleware: AdmissionMiddleware, scope: Scope, receive: Receive | None = None) -> Sent:
    """One request through the middleware; what it sent back."""
    sent = Sent()
    run(lambda: middleware(scope, receive or body_then_end(), sent))
    return sent


def body_then_end(data: bytes = b"x") -> Receive:
    messages: list[Message] = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a finished request never hears more
        raise AssertionError

    return receive


def test_a_refusal_is_sent_before_the_body_is_read_with_the_project_error_body() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    policy.decide(Kind.BYTES)  # someone holds the only slot
    app = TinyApp()
    sent = Sent()
    middleware = AdmissionMiddleware(app, policy)
    run(lambda: middleware(scope_of(headers={"Content-Length": "5"}), never_receive, sent))
    assert app.calls == 0
    assert sent.status == 503
    assert sent.headers["tus-resumable"] == "1.0.0"
    assert int(sent.headers["retry-after"]) >= 1
    assert sent.headers["content-type"].startswith("text/plain")
    assert sent.body.decode().startswith("ERR_TOO_MANY_UPLOADS: ")
    assert sent.headers["content-length"] == str(len(sent.body))


def test_each_refusal_is_told_to_the_metrics_hook_with_its_reason() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    policy.decide(Kind.BYTES)
    reasons: list[str] = []
    middleware = AdmissionMiddleware(TinyApp(), policy, on_refusal=reasons.append)
    assert call(middleware, scope_of(), never_receive).status == 503
    assert call(middleware, scope_of("HEAD")).status == 204
    assert reasons == ["concurrency"]


def test_a_refusal_is_json_when_asked() -> None:
    policy = AdmissionPolicy()
    middleware = AdmissionMiddleware(TinyApp(), policy, limiter=NoTokens())
    sent = Sent()
    scope = scope_of("HEAD", headers={"Accept": "application/json"})
    run(lambda: middleware({**scope, "method": "GET"}, never_receive, sent))
    assert sent.status == 429
    assert sent.headers["content-type"] == "application/json"
    assert b'"code": "ERR_RATE_LIMITED"' in sent.body


def test_a_refused_head_has_no_body() -> None:
    middleware = AdmissionMiddleware(TinyApp(), AdmissionPolicy(), limiter=NoTokens())
    sent = Sent()
    run(lambda: middleware(scope_of("HEAD"), never_receive, sent))
    assert (sent.status, sent.body, sent.headers["retry-after"]) == (429, b"", "3")


class NoTokens:
    """A rate limiter whose clients have no tokens left for 2.5 s."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    async def acquire(self, client: str) -> float:
        self.clients.append(client)
        return 2.5


def test_the_slot_is_released_when_the_response_is_complete() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    app = TinyApp()
    app.hold.clear()  # the application lingers after its answer
    middleware = AdmissionMiddleware(app, policy)
    sent = Sent()
    assert policy.cap is not None

    async def main() -> None:
        task = asyncio.create_task(middleware(scope_of(), body_then_end(), sent))
        await until(lambda: len(sent.messages) == 2)
        assert policy.cap is not None and policy.cap.in_use == 0
        app.hold.set()
        await task

    run(main)
    assert sent.status == 204
    assert policy.cap.in_use == 0


def test_the_slot_is_released_when_the_application_fails() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    middleware = AdmissionMiddleware(TinyApp(fail=True), policy)
    with pytest.raises(RuntimeError):
        run(lambda: middleware(scope_of(), body_then_end(), Sent()))
    assert policy.cap is not None and policy.cap.in_use == 0


def test_the_slot_is_released_when_the_client_disconnects() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    app = TinyApp()
    middleware = AdmissionMiddleware(app, policy)
    sent = Sent()
    arrived: list[Message] = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return arrived.pop(0)

    run(lambda: middleware(scope_of(), receive, sent))
    assert app.received[-1]["type"] == "http.disconnect"
    assert sent.messages == []
    assert policy.cap is not None and policy.cap.in_use == 0


def test_the_slot_is_released_when_the_request_is_cancelled() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    app = TinyApp(answer_first=False)
    app.hold.clear()  # the application waits for ever
    middleware = AdmissionMiddleware(app, policy)
    assert policy.cap is not None

    async def main() -> None:
        task = asyncio.create_task(middleware(scope_of(), body_then_end(), Sent()))
        await until(lambda: app.calls == 1)
        assert policy.cap is not None and policy.cap.in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert policy.cap.in_use == 0


def test_requests_without_upload_bytes_pass_a_full_cap() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    policy.decide(Kind.BYTES)  # the only slot is taken
    app = TinyApp()
    middleware = AdmissionMiddleware(app, policy)
    for method, headers in (
        ("HEAD", {}),
        ("GET", {}),
        ("DELETE", {}),
        ("OPTIONS", {}),
        ("POST", {"Upload-Length": "10"}),
        ("POST", {"Upload-Length": "10", "Content-Length": "0"}),
    ):
        sent = call(middleware, scope_of(method, headers=headers))
        assert sent.status == 204, (method, headers)
    assert app.calls == 6


def test_a_post_with_a_body_or_a_patch_override_needs_a_slot() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    policy.decide(Kind.BYTES)
    middleware = AdmissionMiddleware(TinyApp(), policy)
    for headers in (
        {"Upload-Length": "10", "Content-Length": "10"},
        {"Upload-Length": "10", "Transfer-Encoding": "chunked"},
        {"X-HTTP-Method-Override": "PATCH"},
    ):
        sent = call(middleware, scope_of("POST", headers=headers), never_receive)
        assert sent.status == 503, headers


def test_a_creation_too_large_for_the_disk_is_507() -> None:
    policy = AdmissionPolicy(disk=DiskGuard(100, Reading(1100), FakeClock()))
    middleware = AdmissionMiddleware(TinyApp(), policy)
    sent = Sent()
    headers = {"Upload-Length": "1001"}
    run(lambda: middleware(scope_of("POST", headers=headers), never_receive, sent))
    assert sent.status == 507
    assert sent.body.startswith(b"ERR_INSUFFICIENT_STORAGE: ")
    sent = Sent()
    headers = {"Upload-Length": "1000"}
    run(lambda: middleware(scope_of("POST", headers=headers), body_then_end(), sent))
    assert sent.status == 204


@pytest.mark.parametrize("length", [str(2**63), "-1", "+5", "1e3", "abc"])
def test_a_length_that_is_no_tus_integer_is_left_to_the_application(length: str) -> None:
    policy = AdmissionPolicy(disk=DiskGuard(100, Reading(1100), FakeClock()))
    middleware = AdmissionMiddleware(TinyApp(), policy)
    assert call(middleware, scope_of("POST", headers={"Upload-Length": length})).status == 204


def test_health_ready_and_metrics_are_never_refused() -> None:
    limiter = NoTokens()
    middleware = AdmissionMiddleware(TinyApp(), AdmissionPolicy(), limiter=limiter)
    for path in ("/health", "/ready", "/metrics"):
        assert call(middleware, scope_of("GET", path)).status == 204
    assert limiter.clients == []


def test_the_rate_limit_counts_by_client_address() -> None:
    limiter = NoTokens()
    middleware = AdmissionMiddleware(TinyApp(), AdmissionPolicy(), limiter=limiter)
    run(lambda: middleware(scope_of("HEAD", client="198.51.100.7"), never_receive, Sent()))
    assert limiter.clients == ["198.51.100.7"]


def test_through_httpx_a_refusal_carries_tus_resumable_and_retry_after() -> None:
    policy = AdmissionPolicy(cap=ConcurrencyCap(1))
    policy.decide(Kind.BYTES)
    middleware = AdmissionMiddleware(TinyApp(), policy)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://tus.test") as client:
            return await client.patch("/files/abc", content=b"0123456789")

    response = run(main)
    assert response.status_code == 503
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["retry-after"] == "2"
    assert response.text.startswith("ERR_TOO_MANY_UPLOADS: ")


# --- who the client is -----------------------------------------------------------------------


def headers_of(**pairs: str) -> dict[bytes, bytes]:
    return {name.replace("_", "-").encode(): value.encode() for name, value in pairs.items()}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (headers_of(forwarded='for="[2001:db8::1]:4711";proto=https, for=10.0.0.1'), "2001:db8::1"),
        (headers_of(forwarded="for=203.0.113.5:61000"), "203.0.113.5"),
        (headers_of(forwarded="For=203.0.113.5"), "203.0.113.5"),
        (headers_of(forwarded="proto=https"), "192.0.2.1"),
        (headers_of(x_forwarded_for="203.0.113.9, 10.0.0.1"), "203.0.113.9"),
        (headers_of(x_forwarded_for="2001:db8::2"), "2001:db8::2"),
        (headers_of(), "192.0.2.1"),
    ],
)
def test_behind_a_proxy_the_client_is_the_first_forwarded_address(
    headers: dict[bytes, bytes], expected: str
) -> None:
    assert client_address(scope_of(), headers, behind_proxy=True) == expected


def test_without_behind_proxy_forwarded_headers_are_ignored() -> None:
    headers = headers_of(forwarded="for=203.0.113.5", x_forwarded_for="203.0.113.9")
    assert client_address(scope_of(), headers, behind_proxy=False) == "192.0.2.1"


# --- shared buckets and their fallback -------------------------------------------------------


class Failing:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = True

    async def acquire(self, client: str) -> float:
        self.calls += 1
        if self.fail:
            raise BackendUnavailable("Redis: connection refused")
        return 0.0


def test_when_the_shared_buckets_fail_the_local_ones_count_and_it_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    shared = Failing()
    local = LocalRateLimiter(rate=1.0, burst=1, clock=clock)
    limiter = FallbackRateLimiter(shared, local, clock, pause=5.0)

    async def main() -> list[float]:
        waits = [await limiter.acquire("c"), await limiter.acquire("c")]
        clock.advance(5.0)
        waits.append(await limiter.acquire("c"))  # asks Redis again: still down
        shared.fail = False
        clock.advance(5.0)
        waits.append(await limiter.acquire("c"))
        return waits

    with caplog.at_level(logging.WARNING, logger="tusd_py.admission"):
        waits = run(main)
    assert waits[0] == 0 and waits[1] == pytest.approx(1.0)  # the local bucket decided
    assert shared.calls == 3  # not asked while it was known to be down
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("available again" in m for m in messages) == 1


REDIS_URL = os.environ.get("TUSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {REDIS_URL}: {exc}")
    prefix = f"tusd-test-{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


def test_two_instances_share_one_bucket_per_client_in_redis(redis_prefix: str) -> None:
    async def main() -> tuple[list[float], int]:
        a = Redis.from_url(REDIS_URL)
        b = Redis.from_url(REDIS_URL)
        try:
            one = RedisRateLimiter(a, rate=0.5, burst=2, prefix=redis_prefix)
            two = RedisRateLimiter(b, rate=0.5, burst=2, prefix=redis_prefix)
            waits = [
                await one.acquire("192.0.2.1"),
                await two.acquire("192.0.2.1"),
                await one.acquire("192.0.2.1"),
                await two.acquire("192.0.2.2"),
            ]
            ttl = await a.pttl(f"{redis_prefix}ratelimit:192.0.2.1")
            return waits, int(ttl)
        finally:
            await a.aclose()
            await b.aclose()

    waits, ttl = run(main)
    assert waits[:2] == [0.0, 0.0]
    assert 1.5 < waits[2] <= 2.0  # a token comes every 2 s
    assert waits[3] == 0.0
    assert 0 < ttl <= 5000  # gone once it would be full again (burst / rate + 1 s)


def test_an_unreachable_redis_is_backend_unavailable_within_the_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=2)
        try:
            limiter = RedisRateLimiter(client, rate=1.0, burst=1, timeout=0.5)
            with pytest.raises(BackendUnavailable):
                await limiter.acquire("192.0.2.1")
        finally:
            await client.aclose()

    run(main, timeout=3.0)
