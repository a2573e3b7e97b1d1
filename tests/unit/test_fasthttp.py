"""fasthttp: uvicorn's httptools protocol with a queued body path.

The property this module exists for: every body byte that reached the server before the
client disconnected is delivered to the application, then the disconnect. Also: bodies
arrive exactly, in any slicing, and waiting bytes stay bounded when the app is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from tusd_py.http import fasthttp

pytest.importorskip("httptools")


@dataclass
class Record:
    path: str
    body: bytearray = field(default_factory=bytearray)
    messages: int = 0
    complete: bool = False
    disconnected: bool = False
    #: bytes queued in the cycle, sampled after the app's initial delay
    queued_after_delay: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


class RecordingApp:
    """Reads the whole body (after an optional delay), answers with its length and hash."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                records = list(self.records)
            if len(records) >= count and all(r.done.is_set() for r in records[:count]):
                return records[:count]
            time.sleep(0.01)
        raise AssertionError(f"the app did not finish {count} requests: {self.records}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        record = Record(scope["path"])
        with self.lock:
            self.records.append(record)
        try:
            if scope["path"].startswith("/early"):
                # answers without reading the body (a refusal, a 409, a handover)
                headers = [(b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 409, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            if self.delay:
                await asyncio.sleep(self.delay)
                cycle = getattr(receive, "__self__", None)
                record.queued_after_delay = getattr(cycle, "queued", None)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    record.disconnected = True
                    return
                record.messages += 1
                record.body += message.get("body", b"")
                if not message.get("more_body", False):
                    record.complete = True
                    break
            answer = f"{len(record.body)}:{hashlib.sha256(record.body).hexdigest()}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": answer})
        finally:
            record.done.set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: RecordingApp, http: Any = None) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http if http is not None else fasthttp.protocol_class(),
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def port(app: RecordingApp) -> Iterator[int]:
    with running_server(app) as port:
        yield port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(stream: Any) -> tuple[int, bytes]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, stream.read(length)


def pieces(data: bytes, rng: random.Random, largest: int = 3000) -> Iterator[bytes]:
    position = 0
    while position < len(data):
        size = rng.randint(1, largest)
        yield data[position : position + size]
        position += size


def expected_answer(data: bytes) -> bytes:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}".encode()


def test_protocol_class_is_the_queued_httptools_protocol() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol = fasthttp.protocol_class()
    assert isinstance(protocol, type)
    assert issubclass(protocol, HttpToolsProtocol)


def test_body_in_many_pieces_arrives_exactly(app: RecordingApp, port: int) -> None:
    rng = random.Random(1)
    data = rng.randbytes(2 * 1024 * 1024 + 123)
    with connect(port) as sock:
        sock.sendall(request_head("/pieces", {"Content-Length": str(len(data))}))
        for index, piece in enumerate(pieces(data, rng, largest=40_000)):
            sock.sendall(piece)
            if index % 50 == 0:
                time.sleep(0.001)  # let some pieces reach the server on their own
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(data))
    (record,) = app.wait_for(1)
    assert record.complete and not record.disconnected
    assert bytes(record.body) == data
    assert record.messages > 1  # streamed, not gathered


def test_tiny_pieces_arrive_exactly(app: RecordingApp, port: int) -> None:
    data = bytes(range(256)) * 4
    with connect(port) as sock:
        sock.sendall(request_head("/tiny", {"Content-Length": str(len(data))}))
        for index in range(len(data)):
            sock.sendall(data[index : index + 1])
            if index % 64 == 0:
                time.sleep(0.001)
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(data))
    assert bytes(app.wait_for(1)[0].body) == data


def test_chunked_body_arrives_exactly(app: RecordingApp, port: int) -> None:
    rng = random.Random(2)
    data = rng.randbytes(300_000)
    with connect(port) as sock:
        sock.sendall(request_head("/chunked", {"Transfer-Encoding": "chunked"}))
        for piece in pieces(data, rng, largest=20_000):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(data))
    assert bytes(app.wait_for(1)[0].body) == data


def test_expect_100_continue(app: RecordingApp, port: int) -> None:
    data = b"x" * 5000
    with connect(port) as sock:
        stream = sock.makefile("rb")
        sock.sendall(
            request_head("/continue", {"Content-Length": str(len(data)), "Expect": "100-continue"})
        )
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        sock.sendall(data)
        status, answer = read_response(stream)
    assert (status, answer) == (200, expected_answer(data))


def test_empty_body(app: RecordingApp, port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request_head("/empty", {"Content-Length": "0"}))
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(b""))
    assert app.wait_for(1)[0].complete


def test_keep_alive_requests_each_get_their_own_body(app: RecordingApp, port: int) -> None:
    bodies = [b"first" * 1000, b"second" * 3000, b"third"]
    with connect(port) as sock:
        stream = sock.makefile("rb")
        for body in bodies:
            sock.sendall(request_head("/keepalive", {"Content-Length": str(len(body))}) + body)
            assert read_response(stream) == (200, expected_answer(body))
    assert [bytes(r.body) for r in app.wait_for(3)] == bodies


def test_pipelined_requests_each_get_their_own_body(app: RecordingApp, port: int) -> None:
    """Two requests in one write: the second one's body arrives before its task starts."""
    bodies = [b"A" * 1000, b"B" * 2000]
    wire = b"".join(
        request_head(f"/pipelined{i}", {"Content-Length": str(len(body))}) + body
        for i, body in enumerate(bodies)
    )
    with connect(port) as sock:
        sock.sendall(wire)
        stream = sock.makefile("rb")
        answers = [read_response(stream) for _ in bodies]
    assert answers == [(200, expected_answer(body)) for body in bodies]
    assert [bytes(r.body) for r in app.wait_for(2)] == bodies


@pytest.mark.parametrize("sent_size", [30_000, 600_000, 3 * 1024 * 1024 + 7])
def test_bytes_sent_before_a_disconnect_all_reach_the_app(
    app: RecordingApp, port: int, sent_size: int
) -> None:
    """The client sends part of its body and goes away while the app is still busy: the app
    must see every byte that was sent, then http.disconnect."""
    app.delay = 0.5  # the app reads only after the bytes and the close have arrived
    rng = random.Random(sent_size)
    data = rng.randbytes(sent_size)
    with connect(port) as sock:
        sock.sendall(request_head("/interrupted", {"Content-Length": str(10 * sent_size)}))
        for piece in pieces(data, rng, largest=64 * 1024):
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)  # a clean close after the last byte
    (record,) = app.wait_for(1)
    assert record.disconnected and not record.complete
    assert len(record.body) == len(data)
    assert bytes(record.body) == data


def test_bytes_sent_before_a_disconnect_reach_an_app_that_is_reading(
    app: RecordingApp, port: int
) -> None:
    rng = random.Random(3)
    data = rng.randbytes(500_000)
    with connect(port) as sock:
        sock.sendall(request_head("/interrupted", {"Content-Length": str(2 * len(data))}))
        for index, piece in enumerate(pieces(data, rng, largest=10_000)):
            sock.sendall(piece)
            if index % 10 == 0:
                time.sleep(0.001)
        time.sleep(0.1)
    (record,) = app.wait_for(1)
    assert record.disconnected and not record.complete
    assert bytes(record.body) == data


def test_waiting_bytes_stay_bounded_while_the_app_is_slow(app: RecordingApp, port: int) -> None:
    app.delay = 1.0
    data = random.Random(4).randbytes(12 * 1024 * 1024)
    with connect(port) as sock:
        sock.sendall(request_head("/slow", {"Content-Length": str(len(data))}) + data)
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(data))
    (record,) = app.wait_for(1)
    assert record.queued_after_delay is not None
    # the socket is paused once QUEUE_LIMIT bytes wait; one more socket read may land
    assert record.queued_after_delay <= fasthttp.QUEUE_LIMIT + 256 * 1024
    assert bytes(record.body) == data


def read_head(stream: Any) -> tuple[int, dict[str, str]]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def test_an_answer_long_before_the_body_arrived_closes_the_connection(
    app: RecordingApp, port: int
) -> None:
    """Otherwise the rest of the body would be read as the next request: a client that gave
    up sending it and asks again on the same connection would never get an answer."""
    with connect(port) as sock:
        sock.settimeout(5)
        stream = sock.makefile("rb")
        sock.sendall(request_head("/early", {"Content-Length": "100000"}) + b"x" * 10)
        status, headers = read_head(stream)
        assert status == 409
        assert headers.get("connection") == "close"
        assert stream.read() == b""  # the server closed the connection


def test_a_small_rest_of_the_body_is_read_and_the_connection_kept(
    app: RecordingApp, port: int
) -> None:
    with connect(port) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request_head("/early", {"Content-Length": "3000"}))
        status, headers = read_head(stream)  # answered before any body byte
        assert status == 409 and "connection" not in headers
        sock.sendall(b"x" * 3000)  # the client finishes its body, then asks again
        sock.sendall(request_head("/after", {"Content-Length": "5"}) + b"hello")
        assert read_response(stream) == (200, expected_answer(b"hello"))


def test_a_small_rest_that_never_comes_ends_the_connection(app: RecordingApp, port: int) -> None:
    with connect(port) as sock:
        sock.settimeout(10)
        stream = sock.makefile("rb")
        sock.sendall(request_head("/early", {"Content-Length": "3000"}) + b"x" * 10)
        status, _ = read_head(stream)
        assert status == 409
        # the client asks again instead of finishing its body: the server cannot tell the
        # two apart, so it ends the connection rather than leave the request unanswered
        sock.sendall(request_head("/after", {"Content-Length": "5"}) + b"hello")
        started = time.monotonic()
        assert stream.read() == b""
        assert time.monotonic() - started < fasthttp.EARLY_DRAIN_SECONDS + 3


def test_an_answer_after_the_whole_body_keeps_the_connection(app: RecordingApp, port: int) -> None:
    with connect(port) as sock:
        stream = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(request_head("/early", {"Content-Length": "10"}) + b"x" * 10)
            status, headers = read_head(stream)
            assert status == 409 and "connection" not in headers


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fasthttp, "HEADER_TIMEOUT", 0.6)
    monkeypatch.setattr(fasthttp, "BODY_IDLE_TIMEOUT", 0.6)


def test_a_request_head_that_does_not_arrive_in_time_gets_408(
    short_deadlines: None, app: RecordingApp
) -> None:
    with running_server(app) as port, connect(port) as sock:
        sock.settimeout(10)
        stream = sock.makefile("rb")
        started = time.monotonic()
        sock.sendall(b"PATCH /slow-loris HTTP/1.1\r\nHost: test\r\nUpload-Off")
        status, headers = read_head(stream)
        assert status == 408
        assert headers["connection"] == "close"
        assert stream.read().startswith(b"ERR_REQUEST_TIMEOUT:")
        assert time.monotonic() - started < 5
    assert app.records == []  # the application never saw it


def test_a_silent_connection_is_closed_after_the_header_timeout(
    short_deadlines: None, app: RecordingApp
) -> None:
    with running_server(app) as port, connect(port) as sock:
        sock.settimeout(10)
        status, _ = read_head(sock.makefile("rb"))
        assert status == 408


def test_a_body_that_stops_arriving_ends_with_the_bytes_that_came(
    short_deadlines: None, app: RecordingApp
) -> None:
    with running_server(app) as port, connect(port) as sock:
        sock.sendall(request_head("/stalled", {"Content-Length": "100000"}) + b"y" * 3000)
        (record,) = app.wait_for(1, timeout=10)  # no byte more, but the socket stays open
        assert record.disconnected and not record.complete
        assert bytes(record.body) == b"y" * 3000


def test_a_slow_but_steady_body_is_not_idle(short_deadlines: None, app: RecordingApp) -> None:
    data = b"z" * 40
    with running_server(app) as port, connect(port) as sock:
        sock.sendall(request_head("/steady", {"Content-Length": str(len(data))}))
        for index in range(0, len(data), 4):  # 10 pieces over ~2 s: longer than a deadline
            sock.sendall(data[index : index + 4])
            time.sleep(0.2)
        status, answer = read_response(sock.makefile("rb"))
    assert (status, answer) == (200, expected_answer(data))


def upload_whole(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """One request on a connection of its own, its head and body sent at once."""
    with connect(port) as sock:
        sock.sendall(request_head(path, {"Content-Length": str(len(body))}) + body)
        return read_response(sock.makefile("rb"))


def test_read_ahead_of_all_connections_together_stays_bounded(
    app: RecordingApp, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 uploads of 3 MiB to an application that is not reading yet: together they queue
    about READ_AHEAD (plus one socket read each), not 24 x QUEUE_LIMIT; once it reads,
    every body arrives exactly (no paused connection is forgotten), and nothing stays
    counted afterwards, also for an early answer and a client that went away."""
    budget = 1024 * 1024
    monkeypatch.setattr(fasthttp, "READ_AHEAD", budget)
    app.delay = 1.5
    count = 24
    bodies = [random.Random(n).randbytes(3 * 1024 * 1024) for n in range(count)]
    answers: dict[int, tuple[int, bytes]] = {}

    def upload(n: int) -> None:
        answers[n] = upload_whole(port, f"/upload/{n}", bodies[n])

    def early() -> None:
        with connect(port) as sock:
            sock.sendall(request_head("/early", {"Content-Length": str(4 * 1024 * 1024)}))
            sock.sendall(b"x" * 512 * 1024)
            read_response(sock.makefile("rb"))

    def vanishing() -> None:
        with connect(port) as sock:
            sock.sendall(request_head("/gone", {"Content-Length": str(4 * 1024 * 1024)}))
            sock.sendall(b"y" * 700 * 1024)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(count)]
    threads += [threading.Thread(target=early), threading.Thread(target=vanishing)]
    for thread in threads:
        thread.start()
    peak = 0
    deadline = time.monotonic() + 1.2  # within the application's delay
    while time.monotonic() < deadline:
        peak = max(peak, fasthttp.queued_total())
        time.sleep(0.005)
    # requests still to start read at once (with the 1 MiB budget only a few start at a
    # time, and 1.5 s each would pass the clients' 15 s timeout)
    app.delay = 0.0
    for thread in threads:
        thread.join(30)
    assert all(answers[n] == (200, expected_answer(bodies[n])) for n in range(count))
    assert peak > 0
    # one socket read (256 KiB at most) may land on each connection after the budget is gone
    assert peak <= budget + (count + 2) * 256 * 1024, peak
    app.wait_for(count + 2)
    assert wait_until(lambda: fasthttp.queued_total() == 0), fasthttp.queued_total()


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_connections_that_start_a_request_past_the_budget_wait_without_reading(
    app: RecordingApp, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head comes with the first slice of its body (up to 256 KiB per read): past the
    budget, new connections are parked before they read, so 30 more uploads add nothing
    to what is queued; once the application reads, every one of them is answered."""
    budget = 1024 * 1024
    monkeypatch.setattr(fasthttp, "READ_AHEAD", budget)
    app.delay = 1.5
    first, later = 4, 30
    bodies = [random.Random(n).randbytes(2 * 1024 * 1024) for n in range(first + later)]
    answers: dict[int, tuple[int, bytes]] = {}

    def upload(n: int) -> None:
        answers[n] = upload_whole(port, f"/upload/{n}", bodies[n])

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(first + later)]
    for thread in threads[:first]:
        thread.start()
    assert wait_until(lambda: fasthttp.queued_total() > budget)
    for thread in threads[first:]:
        thread.start()
    peak = parked = 0
    deadline = time.monotonic() + 1.0  # within the application's delay
    while time.monotonic() < deadline:
        peak = max(peak, fasthttp.queued_total())
        parked = max(parked, fasthttp.parked_connections())
        time.sleep(0.005)
    assert parked >= later // 2, parked
    # the first uploads' reads, and none of the later ones' (without parking: 30 more)
    assert peak <= budget + 2 * first * fasthttp.SLICE, peak
    app.delay = 0.0  # the requests still to start read at once: the budget lets them through
    for thread in threads:
        thread.join(60)
    assert all(answers[n] == (200, expected_answer(bodies[n])) for n in range(first + later))
    assert wait_until(lambda: fasthttp.queued_total() == 0 and fasthttp.parked_connections() == 0)


def test_a_keep_alive_connection_parked_between_requests_is_not_closed_for_silence(
    app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parked, a client's next request may already be in the kernel's buffer: the
    keep-alive timeout must not close the connection under it."""
    monkeypatch.setattr(fasthttp, "READ_AHEAD", 64 * 1024)
    with running_server(app) as port:
        data = random.Random(1).randbytes(300 * 1024)
        with connect(port) as sock:
            stream = sock.makefile("rb")
            sock.sendall(request_head("/one", {"Content-Length": str(len(data))}) + data)
            assert read_response(stream) == (200, expected_answer(data))
            # hold the budget with a request the app is slow to read
            app.delay = 7.0  # past uvicorn's 5 s keep-alive timeout
            holder = connect(port)
            holder.sendall(request_head("/slow", {"Content-Length": str(len(data))}) + data)
            assert wait_until(lambda: fasthttp.parked_connections() >= 1)
            app.delay = 0.0
            sock.sendall(request_head("/two", {"Content-Length": str(len(data))}) + data)
            assert read_response(stream) == (200, expected_answer(data))
            holder.close()


async def early_answer_while_sending(port: int, body_size: int) -> int | None:
    """As an asyncio client sends (tusd-py bench, aiohttp): the body goes out in a task while
    the answer is awaited. A request the server answers before reading its body (the /early
    path): the status read, or None when the connection broke before the answer could be."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(request_head("/early", {"Content-Length": str(body_size)}))
        for _ in range(0, body_size, 64 * 1024):
            writer.write(b"x" * 64 * 1024)
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split(b" ")[1])
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        writer.close()


def test_an_early_answer_survives_the_rest_of_the_body_that_is_never_read(
    app: RecordingApp, port: int
) -> None:
    """Closing a socket with unread bytes sends a reset that can overtake our answer: the
    server shuts its side after the answer and drops the rest of the body for a while."""

    async def main() -> list[int | None]:
        return [await early_answer_while_sending(port, 8 * 1024 * 1024) for _ in range(10)]

    statuses = asyncio.run(main())
    assert statuses == [409] * 10, statuses
