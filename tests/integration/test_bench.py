"""`tusd-py bench` against real servers: its counts match what the server holds, a server
that never answers gives unanswered requests (and the command still ends), and refusals
are counted by status. The generator is the same for any tus server, so one backend
(SQLite, file store) is enough."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import TUS, ServerProcess, stored_upload_ids
from tusd_py.loadgen import make_payload

KiB = 1024


def bench(*arguments: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tusd_py", "bench", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def sent(summary: dict[str, Any]) -> dict[str, int]:
    return {kind: row["sent"] for kind, row in summary["requests"].items()}


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.file_store
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the shared server's
def test_every_upload_and_request_is_counted_and_the_server_holds_the_bytes(
    server: ServerProcess, processes: str
) -> None:
    status, summary = bench(
        server.files_url,
        *("--uploads", "20", "--concurrency", "5", "--size", "64KiB", "--chunk", "16KiB"),
        *("--verify", "--processes", processes, "--pid", str(server.pid())),
    )

    assert status == 0
    assert summary["uploads"] == {"started": 20, "ok": 20, "failed": 0}
    assert sent(summary) == {"POST": 20, "PATCH": 80, "HEAD": 20}
    assert {kind: row["answered"] for kind, row in summary["requests"].items()} == sent(summary)
    assert summary["errors"] == {} and summary["unanswered"] == 0
    assert summary["bytes_acknowledged"] == 20 * 64 * KiB
    assert summary["uploads_per_s"] > 0 and summary["requests"]["PATCH"]["p99_ms"] > 0
    assert summary["generator"]["processes"] == int(processes)
    assert summary["server"]["pid"] == server.pid()
    assert summary["server"]["peak_rss_bytes"] > 10 * 1024 * KiB
    assert summary["server"]["cpu_seconds"] > 0
    # the server's own view: 20 new uploads, each whole, each the generator's bytes
    new = stored_upload_ids(server) - server.uploads_baseline
    assert len(new) == 20
    expected = make_payload(16 * KiB) * 4
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        for upload in new:
            head = client.head(f"/files/{upload}")
            assert head.headers["upload-offset"] == head.headers["upload-length"] == "65536"
            assert (server.data_dir / "uploads" / upload).read_bytes() == expected


@pytest.mark.file_store
@pytest.mark.parametrize("backend", ["sqlite"])
def test_refusals_are_counted_by_status(server_factory: Any) -> None:
    server: ServerProcess = server_factory(["--max-size", "1000"])

    status, summary = bench(
        server.files_url,
        *("--uploads", "20", "--concurrency", "5", "--size", "64KiB", "--chunk", "16KiB"),
    )

    assert status == 1
    assert summary["uploads"] == {"started": 20, "ok": 0, "failed": 20}
    assert summary["errors"] == {"413": 20}
    assert summary["requests"]["POST"]["errors"] == {"413": 20}
    assert sent(summary) == {"POST": 20, "PATCH": 0}
    assert summary["requests"]["POST"]["answered"] == 20
    assert summary["unanswered"] == 0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose server accepts connections and reads what comes, but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                for held in accepted:
                    held.setblocking(False)
                    try:
                        while held.recv(1 << 16):
                            pass
                    except OSError:
                        pass
                continue
            accepted.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for held in accepted:
        held.close()
    listener.close()


def test_requests_a_server_never_answers_are_counted_as_unanswered(silent_server: int) -> None:
    started = time.monotonic()
    status, summary = bench(
        f"http://127.0.0.1:{silent_server}/files/",
        *("--uploads", "6", "--concurrency", "3", "--request-timeout", "0.5"),
        timeout=30,
    )

    assert status == 1
    assert time.monotonic() - started < 20
    # each upload stops at its unanswered POST: as many unanswered as requests sent
    assert summary["unanswered"] == 6 == summary["requests"]["POST"]["unanswered"]
    assert sent(summary) == {"POST": 6, "PATCH": 0}
    assert summary["requests"]["POST"]["answered"] == 0
    assert summary["errors"] == {}
    assert summary["uploads"] == {"started": 6, "ok": 0, "failed": 6}
    assert summary["wall_seconds"] >= 2 * 0.5  # two rounds of three lanes, each waiting


@pytest.mark.parametrize(
    "arguments",
    [
        ["http://127.0.0.1:1/files/", "--size", "1 furlong"],
        ["http://127.0.0.1:1/files/", "--uploads", "0"],
        ["http://127.0.0.1:1/files/", "--uploads", "3", "--duration", "2"],
        ["ftp://127.0.0.1:1/files/"],
    ],
)
def test_bad_arguments_exit_2_with_a_sentence(arguments: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tusd_py", "bench", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "tusd-py bench" in done.stderr and "Traceback" not in done.stderr


def test_a_refused_connection_is_an_error_not_a_wait() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    status, summary = bench(f"http://127.0.0.1:{port}/files/", "--uploads", "3", timeout=30)
    assert status == 1
    assert summary["errors"] == {"refused": 3}
    assert summary["unanswered"] == 0
