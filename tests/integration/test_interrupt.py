"""Interrupted and stalled PATCH requests: PROTOCOL.md items 7, 22 and 23.

An interrupted PATCH (connection closed mid-body) keeps what arrived. A stalled PATCH
(connection open, no more bytes) is taken over by a newcomer: the holder stops reading,
saves what it received and answers 204 with that offset; the newcomer proceeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import TUS, ServerProcess
from tests.integration._wire import (
    OCTET,
    RawConnection,
    RawResponse,
    assert_error,
    bytes_file,
    chunked,
    create,
    offset_of,
    patch,
    path_of,
    payload,
    stored,
    upload_all,
    wait_for,
)

pytestmark = pytest.mark.s3_too

SIZE = 100_000
HALF = 50_000
TAKEOVER_SECONDS = 5.0


def start_patch(
    server: ServerProcess, url: str, offset: int, length: int, sent: bytes
) -> RawConnection:
    """A PATCH announcing `length` bytes that sends only `sent` and then waits."""
    connection = RawConnection(server, timeout=15)
    connection.send_head(
        "PATCH",
        path_of(url),
        {**OCTET, "Upload-Offset": str(offset), "Content-Length": str(length)},
    )
    if sent:
        connection.send(sent)
    time.sleep(0.5)  # let the server read what was sent
    return connection


def answer_of(connection: RawConnection) -> RawResponse:
    return connection.read_response(timeout=TAKEOVER_SECONDS)


# --- 7: an interrupted PATCH keeps what arrived ----------------------------------------------


@pytest.mark.file_store
def test_interrupted_patch_keeps_every_byte_that_arrived(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=11)
    url = create(client, SIZE)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH", path_of(url), {**OCTET, "Upload-Offset": "0", "Content-Length": str(SIZE)}
        )
        connection.send(data[:40_000])
        time.sleep(0.3)
    assert wait_for(lambda: offset_of(client, url) == 40_000, timeout=5), offset_of(client, url)
    assert stored(server, url)[:40_000] == data[:40_000]  # type: ignore[index]


def test_upload_resumes_after_an_interrupted_patch(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=12)
    url = create(client, SIZE)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH", path_of(url), {**OCTET, "Upload-Offset": "0", "Content-Length": str(SIZE)}
        )
        connection.send(data[:33_333])
    assert wait_for(lambda: offset_of(client, url) == 33_333, timeout=5), offset_of(client, url)
    upload_all(client, url, data, offset=33_333)
    assert client.get(url).content == data


def test_interrupted_chunked_patch_keeps_every_byte_that_arrived(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=13)
    url = create(client, SIZE)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH", path_of(url), {**OCTET, "Upload-Offset": "0", "Transfer-Encoding": "chunked"}
        )
        whole_chunks = chunked(data[:30_000], size=10_000)[: -len(b"0\r\n\r\n")]
        connection.send(whole_chunks + f"{10_000:x}\r\n".encode() + data[30_000:35_000])
        time.sleep(0.3)
    assert wait_for(lambda: offset_of(client, url) == 35_000, timeout=5), offset_of(client, url)
    upload_all(client, url, data, offset=35_000)
    assert client.get(url).content == data


def test_interrupted_patch_of_a_deferred_upload_keeps_what_arrived(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(20_000, seed=14)
    url = create(client, defer=True)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH", path_of(url), {**OCTET, "Upload-Offset": "0", "Content-Length": "20000"}
        )
        connection.send(data[:7_000])
        time.sleep(0.3)
    assert wait_for(lambda: offset_of(client, url) == 7_000, timeout=5), offset_of(client, url)
    response = patch(client, url, 7_000, data[7_000:], headers={"Upload-Length": "20000"})
    assert response.status_code == 204
    assert client.get(url).content == data


# --- 22/23: a stalled PATCH is taken over ---------------------------------------------------------


def test_a_patch_that_stops_sending_ends_after_the_idle_timeout(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A client that stops sending (and never closes) does not hold its upload forever: the
    request ends as a dropped one would, keeping what arrived, and frees the lock."""
    server = server_factory(extra_args=["--body-idle-timeout", "1"])
    data = payload(SIZE, seed=31)
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        url = create(client, SIZE)
        connection = start_patch(server, url, 0, SIZE, data[:HALF])
        try:
            started = time.monotonic()
            connection.sock.settimeout(15)
            closed = connection.sock.recv(65536)  # no answer: the server closes the socket
            assert closed == b"", closed
            assert 0.5 < time.monotonic() - started < 10
        finally:
            connection.close()
        assert offset_of(client, url) == HALF
        upload_all(client, url, data, offset=HALF)
        assert client.get(url).content == data


def test_stalled_patch_is_taken_over_by_a_head(server: ServerProcess, client: httpx.Client) -> None:
    data = payload(SIZE, seed=21)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        started = time.monotonic()
        head = client.head(url, timeout=30)
        elapsed = time.monotonic() - started
        assert head.status_code == 200, head.status_code
        assert elapsed < TAKEOVER_SECONDS, f"HEAD waited {elapsed:.1f}s for the stalled PATCH"
        assert head.headers["upload-offset"] == str(HALF)
    finally:
        connection.close()


def test_stalled_patch_is_taken_over_by_a_patch(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=22)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        started = time.monotonic()
        response = patch(client, url, HALF, data[HALF:])
        elapsed = time.monotonic() - started
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["upload-offset"] == str(SIZE)
        assert elapsed < TAKEOVER_SECONDS + 5, f"PATCH took {elapsed:.1f}s"
    finally:
        connection.close()
    assert client.get(url).content == data


def test_newcomer_at_a_stale_offset_gets_409_with_the_saved_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=23)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        response = patch(client, url, 0, data)
        assert_error(response, 409, "ERR_OFFSET_MISMATCH")
        assert response.headers["upload-offset"] == str(HALF)
    finally:
        connection.close()


def test_stalled_patch_answers_204_with_the_offset_it_saved(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=24)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        assert client.head(url, timeout=30).status_code == 200
        answer = answer_of(connection)
        assert answer.status == 204, (answer.status, answer.text)
        assert answer.headers["upload-offset"] == str(HALF)
        assert answer.headers.get("tus-resumable") == "1.0.0"
    finally:
        connection.close()


def test_upload_finishes_correctly_after_a_takeover(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=25)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        saved = offset_of(client, url)
        assert saved == HALF
        upload_all(client, url, data, offset=saved)
    finally:
        connection.close()
    assert client.get(url).content == data
    assert stored(server, url)[:SIZE] == data  # type: ignore[index]


@pytest.mark.file_store
def test_bytes_sent_by_a_displaced_patch_are_not_stored(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=26)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, data[:HALF])
    try:
        assert offset_of(client, url) == HALF
        try:
            connection.send(
                b"\xee" * (SIZE - HALF)
            )  # the displaced request wakes up and sends the rest
        except OSError:
            pass  # the server already closed it: fine
        time.sleep(1.0)
        assert offset_of(client, url) == HALF
        assert stored(server, url)[:HALF] == data[:HALF]  # type: ignore[index]
    finally:
        connection.close()
    upload_all(client, url, data, offset=HALF)
    assert client.get(url).content == data


def test_a_patch_stalled_before_any_byte_is_taken_over(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=27)
    url = create(client, SIZE)
    connection = start_patch(server, url, 0, SIZE, b"")
    try:
        started = time.monotonic()
        response = patch(client, url, 0, data)
        assert response.status_code == 204, (response.status_code, response.text)
        assert time.monotonic() - started < TAKEOVER_SECONDS + 5
    finally:
        connection.close()
    assert client.get(url).content == data


def test_takeover_works_again_and_again(server: ServerProcess, client: httpx.Client) -> None:
    data = payload(SIZE, seed=28)
    url = create(client, SIZE)
    connections = []
    try:
        for step in range(4):
            start = step * 20_000
            connections.append(
                start_patch(server, url, start, SIZE - start, data[start : start + 20_000])
            )
            # the next stalled PATCH takes over from the previous one; check with a HEAD in between
            assert offset_of(client, url) == start + 20_000, step
        upload_all(client, url, data, offset=80_000)
    finally:
        for connection in connections:
            connection.close()
    assert client.get(url).content == data


def test_a_stalled_patch_does_not_block_other_uploads(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(SIZE, seed=29)
    stuck = create(client, SIZE)
    other = create(client, 1000)
    connection = start_patch(server, stuck, 0, SIZE, data[:HALF])
    try:
        started = time.monotonic()
        upload_all(client, other, data[:1000])
        assert time.monotonic() - started < 2
        assert client.get(other).content == data[:1000]
    finally:
        connection.close()


# --- 22: a server fault is a 5xx, never a 4xx --------------------------------------------------


@pytest.mark.file_store
def test_storage_failure_answers_5xx_and_keeps_the_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(1000, seed=30)
    url = create(client, 1000)
    assert patch(client, url, 0, data[:400]).status_code == 204
    path = bytes_file(server, url)
    saved = path.read_bytes()
    path.unlink()
    path.mkdir()  # the store can no longer write the upload's bytes: our fault, not the client's
    try:
        response = patch(client, url, 400, data[400:])
        assert 500 <= response.status_code < 600, (response.status_code, response.text)
        assert offset_of(client, url) == 400
    finally:
        path.rmdir()
        path.write_bytes(saved)
    upload_all(client, url, data, offset=400)
    assert client.get(url).content == data


def test_a_request_head_slower_than_the_header_timeout_gets_408(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """--header-timeout reaches the server's protocol (slow loris: the head never ends)."""
    server = server_factory(extra_args=["--header-timeout", "1"])
    with RawConnection(server, timeout=15) as connection:
        started = time.monotonic()
        connection.send(b"PATCH /files/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpload-Off")
        response = connection.read_response()
        elapsed = time.monotonic() - started
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert response.body.startswith(b"ERR_REQUEST_TIMEOUT:")
    assert 0.8 < elapsed < 6
