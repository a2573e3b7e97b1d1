"""Admission control over the wire (issue 9 item 5): each refusal comes before any body byte is
read, with its status, code and Retry-After, and changes nothing.

- 503 ERR_TOO_MANY_UPLOADS past --max-concurrent-uploads (one slot held by a stalled PATCH);
- 429 ERR_RATE_LIMITED past --rate-limit / --rate-limit-burst, per client, and shared by two
  instances through Redis;
- 507 ERR_INSUFFICIENT_STORAGE below --min-free-disk, with /ready answering 503;
- 503 ERR_MEMORY_PRESSURE above --max-memory, while HEAD, GET and DELETE go on;
- and 1,000 concurrent clients against a cap of 50 all get an answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import TUS, ServerProcess, missing_service
from tests.integration._wire import (
    OCTET,
    RawConnection,
    assert_error,
    create,
    json_error,
    offset_of,
    patch,
    path_of,
    payload,
    post,
    stored_uploads,
    upload_all,
)

# admission decides before the state database is asked, so one backend shows it all (and
# the 1,000-client test stays on the quick one)
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

Start = Callable[..., ServerProcess]
REDIS_URL = os.environ.get("TUSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def assert_refusal(response: Any, status: int, code: str) -> int:
    """A refusal in the project's style, with Tus-Resumable and Retry-After; the seconds."""
    assert_error(response, status, code)
    assert response.headers["tus-resumable"] == "1.0.0"
    retry_after = response.headers.get("retry-after", "")
    assert re.fullmatch(r"[1-9][0-9]*", retry_after), f"Retry-After: {retry_after!r}"
    return int(retry_after)


# --- 503: too many uploads ---------------------------------------------------------------


def test_past_the_cap_upload_bytes_get_503_too_many_uploads_and_change_nothing(
    server_factory: Start,
) -> None:
    server = server_factory(extra_args=["--max-concurrent-uploads", "1"])
    data = payload(20_000)
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=15) as client:
        held, waiting = create(client, len(data)), create(client, len(data))
        with RawConnection(server, timeout=15) as stalled:  # holds the only slot
            stalled.send_head(
                "PATCH",
                path_of(held),
                {**OCTET, "Upload-Offset": "0", "Content-Length": str(len(data))},
            )
            stalled.send(data[:5_000])
            time.sleep(0.3)
            before = stored_uploads(server)

            assert_refusal(patch(client, waiting, 0, data), 503, "ERR_TOO_MANY_UPLOADS")
            assert_refusal(post(client, len(data), body=data), 503, "ERR_TOO_MANY_UPLOADS")
            asked = client.patch(
                waiting,
                headers={**OCTET, "Upload-Offset": "0", "Accept": "application/json"},
                content=data,
            )
            assert asked.status_code == 503
            assert json_error(asked)["code"] == "ERR_TOO_MANY_UPLOADS"
            # what carries no upload bytes goes on while the cap is full
            assert offset_of(client, waiting) == 0
            assert client.options("/files/").status_code in (200, 204)
            create(client, 10)
            assert len(stored_uploads(server) - before) == 1  # only the creation without bytes

            stalled.send(data[5_000:])
            assert stalled.read_response(timeout=10).status == 204
        upload_all(client, waiting, data)  # the slot came back
        assert offset_of(client, held) == len(data)


# --- 429: rate limited ------------------------------------------------------------------------


def test_a_client_past_its_rate_gets_429_with_retry_after_and_nothing_is_created(
    server_factory: Start,
) -> None:
    server = server_factory(extra_args=["--rate-limit", "1", "--rate-limit-burst", "2"])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=15) as client:
        for _ in range(5):
            assert client.get("/health").status_code == 200  # not counted
        url = create(client, 10)
        assert offset_of(client, url) == 0
        before = stored_uploads(server)
        refused = post(client, 10, headers={"Origin": "https://app.example"})
        retry_after = assert_refusal(refused, 429, "ERR_RATE_LIMITED")
        assert retry_after == 1
        # a refusal is still a CORS answer, so a page can read Retry-After
        assert refused.headers["access-control-allow-origin"] == "*"
        assert "Retry-After" in refused.headers["access-control-expose-headers"]
        assert client.head(url).status_code == 429
        assert stored_uploads(server) == before
        time.sleep(retry_after)
        assert offset_of(client, url) == 0


def test_behind_a_proxy_each_forwarded_client_has_its_own_rate(server_factory: Start) -> None:
    server = server_factory(
        extra_args=["--rate-limit", "0.2", "--rate-limit-burst", "1", "--behind-proxy"]
    )
    alice = {"X-Forwarded-For": "203.0.113.1, 10.0.0.1"}
    bob = {"Forwarded": 'for="[2001:db8::7]:4711"'}
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=15) as client:
        assert client.get("/files/nope", headers=alice).status_code == 404
        assert_refusal(client.get("/files/nope", headers=alice), 429, "ERR_RATE_LIMITED")
        assert client.get("/files/nope", headers=bob).status_code == 404
        assert client.get("/files/nope", headers=bob).status_code == 429


@pytest.fixture
def rate_redis_url() -> Iterator[str]:
    """A Redis database of its own for the shared buckets, emptied of them before and after."""
    import redis

    url = REDIS_URL.rsplit("/", 1)[0] + "/5"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {url}: {exc}")

    def clear() -> None:
        keys = list(client.scan_iter(match="tusd:ratelimit:*"))
        if keys:
            client.delete(*keys)

    clear()
    yield url
    clear()
    client.close()


def test_two_instances_share_each_clients_rate_through_redis(
    server_factory: Start, rate_redis_url: str
) -> None:
    args = ["--redis-url", rate_redis_url, "--rate-limit", "0.2", "--rate-limit-burst", "2"]
    one, two = server_factory(extra_args=args), server_factory(extra_args=args)
    with httpx.Client(headers=TUS, timeout=15) as client:
        assert client.head(f"{one.files_url}nope").status_code == 404
        assert client.head(f"{two.files_url}nope").status_code == 404
        # the burst of 2 is spent, across both instances
        for server in (one, two):
            retry_after = assert_refusal(
                client.post(server.files_url, headers={"Upload-Length": "1"}),
                429,
                "ERR_RATE_LIMITED",
            )
            assert 1 <= retry_after <= 5  # a token every 5 s
        assert stored_uploads(one) == set() and stored_uploads(two) == set()


# --- 507: the disk is short ----------------------------------------------------------------


def test_below_the_free_disk_reserve_bytes_get_507_and_ready_is_503(
    server_factory: Start, tmp_path: Any
) -> None:
    stats = os.statvfs(tmp_path)
    reserve = 2 * stats.f_bavail * stats.f_frsize + 2**30  # more than this disk has free
    server = server_factory(extra_args=["--min-free-disk", str(reserve)])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=15) as client:
        url = create(client, defer=True)  # no length and no bytes: nothing to refuse
        before = stored_uploads(server)
        assert_refusal(post(client, 10), 507, "ERR_INSUFFICIENT_STORAGE")
        assert_refusal(post(client, 5, body=b"12345"), 507, "ERR_INSUFFICIENT_STORAGE")
        assert_refusal(
            patch(client, url, 0, b"12345", {"Upload-Length": "5"}),
            507,
            "ERR_INSUFFICIENT_STORAGE",
        )
        assert stored_uploads(server) == before
        head = client.head(url)
        assert head.status_code == 200 and head.headers["upload-offset"] == "0"
        assert head.headers.get("upload-defer-length") == "1"
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "disk" in ready.text and "--min-free-disk" in ready.text
        assert client.get("/health").status_code == 200


# --- 503: memory pressure -------------------------------------------------------------------


def test_above_max_memory_uploads_are_refused_but_head_get_and_delete_go_on(
    server_factory: Start,
) -> None:
    data = payload(1_000)
    first = server_factory()
    with httpx.Client(base_url=first.base_url, headers=TUS, timeout=15) as client:
        finished = create(client, len(data))
        upload_all(client, finished, data)
        unfinished, doomed = create(client, len(data)), create(client, len(data))
    first.stop()
    server = server_factory(
        extra_args=["--max-memory", "1"],
        data_dir=first.data_dir,
        database_url=first.database_url,
    )
    on = f"{server.base_url}/files/"
    with httpx.Client(headers=TUS, timeout=15) as client:
        before = stored_uploads(server)
        for refused in (
            patch(client, on + finished.rsplit("/", 1)[1], len(data), b""),
            patch(client, on + unfinished.rsplit("/", 1)[1], 0, data),
            client.post(on, headers={"Upload-Length": "10"}),
            client.post(on, headers={"Upload-Length": "3", **OCTET}, content=b"abc"),
        ):
            assert_refusal(refused, 503, "ERR_MEMORY_PRESSURE")
        assert stored_uploads(server) == before
        assert offset_of(client, on + unfinished.rsplit("/", 1)[1]) == 0
        assert client.get(on + finished.rsplit("/", 1)[1]).content == data
        assert client.delete(on + doomed.rsplit("/", 1)[1]).status_code == 204


# --- 1,000 clients against a cap of 50 ----------------------------------------------------------

CLIENTS = 1_000
CAP = 50
PATCHERS = 200
BODY = 16 * 1024
#: each admitted request holds its slot at least this long (its body comes in two halves)
STALL = 0.3
#: every request must be answered within this
DEADLINE = 30.0


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ")[1]), headers, body


async def send_upload(port: int, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: the head and half the body, a pause in which a
    refusal may come, then the rest; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        half = len(body) // 2
        writer.write(head + body[:half])
        await writer.drain()
        try:
            return await asyncio.wait_for(read_answer(reader), STALL)
        except TimeoutError:
            pass
        try:
            writer.write(body[half:])
            await writer.drain()
        except ConnectionError:
            pass  # refused meanwhile and closed: the answer is read below
        return await read_answer(reader)
    finally:
        writer.close()


def test_a_thousand_concurrent_clients_against_a_cap_of_50_all_get_an_answer(
    server_factory: Start,
) -> None:
    server = server_factory(extra_args=["--max-concurrent-uploads", str(CAP)])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        targets = [path_of(create(client, BODY)) for _ in range(PATCHERS)]
    body = payload(BODY)
    common = (
        f"Host: 127.0.0.1:{server.port}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {BODY}\r\n"
    )
    heads = [
        f"PATCH {path} HTTP/1.1\r\n{common}Upload-Offset: 0\r\n\r\n".encode() for path in targets
    ] + [
        f"POST /files/ HTTP/1.1\r\n{common}Upload-Length: {BODY}\r\n\r\n".encode()
        for _ in range(CLIENTS - PATCHERS)
    ]
    random.Random(9).shuffle(heads)  # PATCHes and creations arrive mixed

    async def timed(head: bytes) -> tuple[int, dict[str, str], bytes, float]:
        started = time.monotonic()
        async with asyncio.timeout(DEADLINE):
            status, headers, answer = await send_upload(server.port, head, body)
        return status, headers, answer, time.monotonic() - started

    async def flood() -> list[Any]:
        async with asyncio.timeout(DEADLINE + 30):
            return await asyncio.gather(*(timed(head) for head in heads), return_exceptions=True)

    before = len(stored_uploads(server))
    started = time.monotonic()
    results = asyncio.run(flood())
    took = time.monotonic() - started

    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} requests got no answer, e.g. {failures[:3]!r}"
    counts: dict[int, int] = {}
    for status, headers, answer, _ in results:
        counts[status] = counts.get(status, 0) + 1
        assert status in (201, 204, 503), (status, answer)
        if status == 503:
            assert re.fullmatch(r"[1-9][0-9]*", headers.get("retry-after", "")), headers
            assert answer.startswith(b"ERR_TOO_MANY_UPLOADS: "), answer
            assert headers["tus-resumable"] == "1.0.0"
    assert counts.get(503, 0) > 0, counts  # the cap was reached ...
    assert counts.get(201, 0) + counts.get(204, 0) >= CAP, counts  # ... and uploads went on
    # a refused creation created nothing; an admitted one stored its body
    assert len(stored_uploads(server)) - before == counts.get(201, 0)
    print(f"\n{CLIENTS} clients, cap {CAP}: {counts} in {took:.1f} s")
