"""The load generator's pieces without a tus server: the HTTP/1.1 client's parsing and
framing (against canned answers from a local socket), percentiles, sizes, how a workload
is split over processes, the counts' merge, and the /proc sampler."""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.unit._async import run
from tusd_py.loadgen import Recorder, Workload, parse_size, percentile
from tusd_py.loadgen.http import (
    BadResponse,
    Connection,
    ConnectionClosed,
    Endpoint,
    Response,
    body_length,
    keeps_alive,
    parse_endpoint,
    parse_head,
    resolve,
)
from tusd_py.loadgen.stats import percentiles
from tusd_py.loadgen.usage import ProcessTreeSampler, read_stat

# --- response heads ----------------------------------------------------------------------


def test_a_head_gives_status_version_and_lower_case_headers() -> None:
    status, version, headers = parse_head(
        b"HTTP/1.1 201 Created\r\nLocation: /files/abc\r\nTus-Resumable: 1.0.0\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert (status, version) == (201, "HTTP/1.1")
    assert headers == {"location": "/files/abc", "tus-resumable": "1.0.0", "content-length": "0"}


def test_a_status_line_without_a_reason_and_bare_line_feeds_are_read() -> None:
    status, _, headers = parse_head(b"HTTP/1.1 204\nUpload-Offset:  42 \n\n")
    assert status == 204
    assert headers == {"upload-offset": "42"}


def test_repeated_header_fields_are_joined() -> None:
    _, _, headers = parse_head(b"HTTP/1.1 200 OK\r\nVary: Origin\r\nvary: Accept\r\n\r\n")
    assert headers["vary"] == "Origin, Accept"


@pytest.mark.parametrize(
    "head",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nName : space before the colon\r\n\r\n",
    ],
)
def test_a_malformed_head_is_a_bad_response(head: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_head(head)


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        ("HEAD", 200, {"content-length": "99"}, 0),
        ("PATCH", 204, {}, 0),
        ("GET", 304, {"content-length": "99"}, 0),
        ("POST", 100, {}, 0),
        ("POST", 201, {"content-length": "12"}, 12),
        ("POST", 201, {"content-length": "12, 12"}, 12),
        ("POST", 413, {"transfer-encoding": "chunked"}, None),
        ("POST", 413, {"transfer-encoding": "gzip, chunked"}, None),
        ("POST", 500, {"transfer-encoding": "gzip"}, -1),
        ("POST", 500, {}, -1),
    ],
)
def test_the_body_is_framed_as_http_1_1_says(
    method: str, status: int, headers: dict[str, str], expected: int | None
) -> None:
    assert body_length(method, status, headers) == expected


@pytest.mark.parametrize("length", ["-1", "ten", "1, 2"])
def test_a_bad_content_length_is_a_bad_response(length: str) -> None:
    with pytest.raises(BadResponse):
        body_length("POST", 201, {"content-length": length})


def test_keep_alive_follows_the_version_and_connection() -> None:
    assert keeps_alive("HTTP/1.1", {})
    assert not keeps_alive("HTTP/1.1", {"connection": "Close"})
    assert not keeps_alive("HTTP/1.0", {})
    assert keeps_alive("HTTP/1.0", {"connection": "keep-alive"})


# --- endpoints and locations -------------------------------------------------------------


def test_an_endpoint_url_gives_host_port_and_path() -> None:
    assert parse_endpoint("http://127.0.0.1:1080/files/") == Endpoint(
        "http", "127.0.0.1", 1080, "/files/"
    )
    assert parse_endpoint("https://example.com") == Endpoint("https", "example.com", 443, "/")
    assert parse_endpoint("http://example.com/files?x=1").path == "/files?x=1"
    assert parse_endpoint("http://[::1]:8080/").authority == "[::1]:8080"
    assert parse_endpoint("http://example.com:80/").authority == "example.com"


@pytest.mark.parametrize("url", ["ftp://example.com/", "127.0.0.1:1080/files/", "http:///x"])
def test_an_endpoint_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(url)


def test_a_location_resolves_against_the_endpoint() -> None:
    base = parse_endpoint("http://127.0.0.1:1080/files/")
    assert resolve(base, "/files/abc") == (base, "/files/abc")
    assert resolve(base, "abc") == (base, "/files/abc")
    assert resolve(base, "http://127.0.0.1:1080/files/abc") == (base, "/files/abc")
    other, target = resolve(base, "http://10.0.0.2:9000/up/abc")
    assert (other.host, other.port, target) == ("10.0.0.2", 9000, "/up/abc")


# --- the client against canned answers ---------------------------------------------------

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(handler: Handler, client: Callable[[Endpoint], Awaitable[T]]) -> T:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(client(Endpoint("http", "127.0.0.1", port, "/files/")), 10)
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def test_requests_share_one_kept_alive_connection_and_bodies_arrive_whole() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in (
            b"HTTP/1.1 201 Created\r\nLocation: /files/a\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nUpload-Offset: 200000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nUpload-Offset: 200000\r\nContent-Length: 7\r\n\r\n",
        ):
            seen.append(await read_request(reader))
            writer.write(answer)
        writer.close()

    body = bytes(range(256)) * 800 + b"tail"
    answers = []

    async def client(endpoint: Endpoint) -> int:
        connection = Connection(endpoint)
        answers.append(await connection.request("POST", "/files/", b"Upload-Length: 9\r\n"))
        view = memoryview(body)[:200000]
        answers.append(await connection.request("PATCH", "/files/a", b"", view))
        answers.append(await connection.request("HEAD", "/files/a"))
        return connection.opened

    assert run(lambda: with_server(handler, client)) == 1
    assert [a.status for a in answers] == [201, 204, 200]
    assert answers[0].headers["location"] == "/files/a"
    assert answers[2].body == b""  # HEAD: Content-Length describes a body that is not sent
    assert seen[0][0].startswith(b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 0\r\n" in seen[0][0] and b"Upload-Length: 9\r\n" in seen[0][0]
    assert seen[1][1] == body[:200000]
    assert b"Content-Length" not in seen[2][0]


def test_chunked_and_interim_answers_are_read_through() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\ntoo l\r\n6\r\narge!\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        await read_request(reader)
        await writer.drain()
        writer.close()

    async def client(endpoint: Endpoint) -> tuple[Response, Response]:
        connection = Connection(endpoint)
        first = await connection.request("POST", "/files/")
        second = await connection.request("POST", "/files/")
        return first, second

    first, second = run(lambda: with_server(handler, client))
    assert (first.status, first.body) == (413, b"too large!\n")
    assert second.status == 204


def test_an_answer_before_the_body_is_sent_ends_the_request_and_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # and never reads the body
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()
        await asyncio.sleep(5)

    async def client(endpoint: Endpoint) -> tuple[Response, bool]:
        connection = Connection(endpoint)
        body = memoryview(bytes(64 << 20))  # far more than the socket buffers hold
        answer = await connection.request("PATCH", "/files/a", b"", body)
        return answer, connection.is_open

    answer, still_open = run(lambda: with_server(handler, client))
    assert (answer.status, answer.body, answer.keep_alive) == (503, b"busy", False)
    assert not still_open


def test_connection_close_and_an_answer_until_the_end_are_honoured() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nsomething broke")
        writer.close()

    async def client(endpoint: Endpoint) -> tuple[Response, bool]:
        connection = Connection(endpoint)
        answer = await connection.request("POST", "/files/")
        return answer, connection.is_open

    answer, still_open = run(lambda: with_server(handler, client))
    assert (answer.status, answer.body, answer.keep_alive) == (500, b"something broke", False)
    assert not still_open


@pytest.mark.parametrize(
    "sent",
    [b"", b"HTTP/1.1 201 Created\r\nContent-Le", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"],
)
def test_a_connection_closed_before_a_whole_answer_is_counted_as_closed(sent: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        writer.close()

    async def client(endpoint: Endpoint) -> Response:
        return await Connection(endpoint).request("POST", "/files/")

    with pytest.raises(ConnectionClosed):
        run(lambda: with_server(handler, client))


# --- statistics --------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7.0], 50) == percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0
    assert percentile([1.0, 2.0], 0.001) == 1.0
    assert math.isnan(percentile([], 50))
    assert percentiles(values, (50, 95, 99)) == [50, 95, 99]


@pytest.mark.parametrize("q", [0, -1, 101])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_recorders_merge_and_survive_pickling() -> None:
    one, two = Recorder(), Recorder()
    one.sent["POST"] += 2
    one.answer("POST", 0.5)
    one.error("POST", "503")
    one.unanswered["POST"] += 1
    two.sent["POST"] += 1
    two.answer("POST", 0.25)
    two.error("PATCH", "503")
    two.error("PATCH", "closed")
    two.uploads_ok, two.bytes_acknowledged = 1, 10
    one.merge(pickle.loads(pickle.dumps(two)))
    assert one.sent["POST"] == 3 and one.unanswered["POST"] == 1
    assert sorted(one.latencies["POST"]) == [0.25, 0.5]
    assert one.errors_by_label() == {"503": 2, "closed": 1}
    assert (one.uploads_ok, one.bytes_acknowledged) == (1, 10)
    summary = one.kind_summary("POST")
    assert summary["p50_ms"] == 250.0 and summary["p99_ms"] == 500.0
    assert summary["errors"] == {"503": 1}


# --- sizes and workloads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1 << 20),
        ("1MiB", 1 << 20),
        ("256KiB", 256 << 10),
        ("256 kib", 256 << 10),
        ("64k", 64 << 10),
        ("1MB", 1_000_000),
        ("1.5KiB", 1536),
        ("2GiB", 2 << 30),
        ("0", 0),
    ],
)
def test_sizes_read_bytes_and_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "1 furlong", "-1", "0.3KiB", "1e6"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_workload_splits_uploads_and_concurrency_over_its_processes() -> None:
    workload = Workload("http://127.0.0.1:1/files/", uploads=11, concurrency=5, processes=3)
    shares = workload.shares()
    assert [s.uploads for s in shares] == [4, 4, 3]
    assert [s.concurrency for s in shares] == [2, 2, 1]
    assert all(s.processes == 1 for s in shares)
    few = Workload("http://127.0.0.1:1/files/", uploads=2, concurrency=8, processes=4)
    assert [s.uploads for s in few.shares()] == [1, 1]
    timed = Workload("http://127.0.0.1:1/files/", uploads=None, duration=5, processes=2)
    assert [(s.uploads, s.duration) for s in timed.shares()] == [(None, 5), (None, 5)]


@pytest.mark.parametrize(
    "changes",
    [
        {"uploads": None},
        {"duration": 3.0},
        {"concurrency": 0},
        {"chunk": 0},
        {"request_timeout": 0},
        {"headers": ("no colon",)},
        {"headers": ("X: a\r\nY: b",)},
        {"endpoint": "ftp://x/"},
    ],
)
def test_a_workload_refuses_what_cannot_run(changes: dict[str, object]) -> None:
    arguments: dict[str, object] = {"endpoint": "http://127.0.0.1:1/files/", **changes}
    with pytest.raises(ValueError):
        Workload(**arguments)  # type: ignore[arg-type]


# --- the server's CPU and memory ---------------------------------------------------------


def test_the_sampler_counts_the_whole_process_tree() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}])",
        ]
    )
    try:
        time.sleep(0.1)
        sampler = ProcessTreeSampler(parent.pid, interval=0.02, rescan=0.05).start()
        parent.wait(10)
        usage = sampler.stop()
    finally:
        parent.kill()
        parent.wait()
    assert usage.processes == 2
    assert usage.peak_rss_bytes > 1 << 20
    assert 0.15 < usage.cpu_seconds < 1.0


def test_stat_fields_survive_a_command_name_with_spaces_and_parentheses() -> None:
    code = "open('/proc/self/comm', 'w').write('a) 9 (b')\nimport time\ntime.sleep(5)\n"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 5
        while (
            Path(f"/proc/{child.pid}/comm").read_text().strip() != "a) 9 (b"
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        ppid, cpu, rss = read_stat(child.pid)
    finally:
        child.kill()
        child.wait()
    assert ppid == os.getpid() and cpu >= 0 and rss > 1 << 20


def test_the_bench_command_imports_no_server_backend() -> None:
    code = (
        "import sys, tusd_py.cli.bench, tusd_py.loadgen\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'starlette', 'sqlalchemy', 'redis', 'httpx', 'uvicorn', 'psycopg', 'minio', 'alembic'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- the report --------------------------------------------------------------------------


def test_the_report_gives_rates_counts_and_the_generators_saturation() -> None:
    from tusd_py.loadgen import RunResult, TreeUsage, format_text, summarize

    rec = Recorder()
    rec.uploads_started, rec.uploads_ok, rec.uploads_failed = 10, 9, 1
    rec.bytes_acknowledged = 9 * 4_000_000
    for kind, count in (("POST", 10), ("PATCH", 9)):
        rec.sent[kind] += count
        for i in range(count):
            rec.answer(kind, (i + 1) / 100)
    rec.error("POST", "503")
    rec.sent["PATCH"] += 1
    rec.unanswered["PATCH"] += 1
    workload = Workload("http://127.0.0.1:1/files/", uploads=10, size=4_000_000, processes=2)
    result = RunResult(
        workload,
        rec,
        wall_seconds=2.0,
        workers=[(1.9, 2.0), (0.5, 2.0)],
        server=TreeUsage(pid=42, processes=3, peak_rss_bytes=100 << 20, cpu_seconds=3.0, samples=9),
    )

    summary = summarize(result)

    assert summary["uploads_per_s"] == 4.5 and summary["mb_per_s"] == 18.0
    assert summary["errors"] == {"503": 1} and summary["unanswered"] == 1
    assert set(summary["requests"]) == {"POST", "PATCH"}  # no HEAD without --verify
    assert summary["requests"]["POST"]["p50_ms"] == 50.0
    assert summary["requests"]["PATCH"]["unanswered"] == 1
    assert summary["server"]["peak_rss_mib"] == 100.0 and summary["server"]["cpu_per_wall"] == 1.5
    assert summary["generator"]["cpu_share"] == 0.6
    assert summary["generator"]["saturated"]  # one process used 0.95 of a CPU
    text = format_text(summary)
    assert "9 of 10 uploads ok in 2.00 s: 4.5 uploads/s" in text
    assert "errors: 1 (POST 503 x1)" in text and "unanswered: 1" in text
    assert "SATURATED" in text and "peak RSS 100.0 MiB" in text
