"""Graceful shutdown: SIGTERM in the middle of uploads loses no acknowledged byte, answers
every upload in flight with the offset it saved, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, PostgresDatabases, ServerProcess, missing_service
from tests.integration._wire import OCTET, RawConnection, create, offset_of, path_of, payload
from tests.integration.test_many_instances import REDIS_URL, redis_reachable

pytestmark = pytest.mark.s3_too

#: sent at 100 KB/s by SlowPatch: far longer than the shutdown timeout
SIZE = 2_000_000
PIECE = 2_000


class SlowPatch(threading.Thread):
    """A PATCH of the whole rest of the upload that sends a piece every 20 ms, until the
    server answers or closes; records the answer it got."""

    def __init__(self, server: ServerProcess, url: str, data: bytes, offset: int) -> None:
        super().__init__(daemon=True)
        self.connection = RawConnection(server, timeout=30)
        self.connection.send_head(
            "PATCH",
            path_of(url),
            {**OCTET, "Upload-Offset": str(offset), "Content-Length": str(len(data) - offset)},
        )
        self.data = data
        self.offset = offset
        self.acknowledged: int | None = None
        self.status: int | None = None

    def run(self) -> None:
        position = self.offset
        try:
            while position < len(self.data):
                self.connection.send(self.data[position : position + PIECE])
                position += PIECE
                time.sleep(0.02)
        except OSError:
            pass  # the server answered and closed while we were still sending
        try:
            response = self.connection.read_response(timeout=30)
        except (ConnectionError, OSError):
            return
        self.status = response.status
        if response.status == 204:
            self.acknowledged = int(response.headers["upload-offset"])


def test_sigterm_mid_upload_answers_in_flight_patches_and_exits_0(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(extra_args=["--shutdown-timeout", "5"])
    uploads: list[tuple[str, bytes, int]] = []  # url, bytes, acknowledged offset
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        for index in range(4):
            data = payload(SIZE, seed=100 + index)
            url = create(client, SIZE)
            first = client.patch(
                url, headers={**OCTET, "Upload-Offset": "0"}, content=data[:50_000]
            )
            assert first.status_code == 204
            uploads.append((url, data, 50_000))
        patches = [SlowPatch(server, url, data, offset) for url, data, offset in uploads]
        for patch in patches:
            patch.start()
        time.sleep(1.0)  # every PATCH is streaming now
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=20)
        elapsed = time.monotonic() - started
        for patch in patches:
            patch.join(timeout=10)
    assert exit_code == 0, server.log_path.read_text()[-3000:]
    assert elapsed < 5 + 3, f"shutdown took {elapsed:.1f} s"
    for patch in patches:
        # answered with the offset it saved, not cut off
        assert patch.status == 204, (patch.status, server.log_path.read_text()[-2000:])
        assert patch.acknowledged is not None and patch.acknowledged > 50_000

    server.launch()  # the same state, a new process
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        for (url, data, _), patch in zip(uploads, patches, strict=True):
            assert patch.acknowledged is not None
            offset = offset_of(client, url)
            assert offset >= patch.acknowledged  # every acknowledged byte is there
            rest = client.patch(
                url, headers={**OCTET, "Upload-Offset": str(offset)}, content=data[offset:]
            )
            assert rest.status_code == 204, rest.text
            assert client.get(url).content == data


def test_sigterm_stops_every_worker_process_and_exits_0(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    if not redis_reachable(REDIS_URL):
        missing_service(f"Redis not reachable at {REDIS_URL}")
    import psutil

    server = ServerProcess(
        tmp_path / "data",
        postgres_databases.create(),
        ["--workers", "2", "--redis-url", REDIS_URL, "--shutdown-timeout", "3"],
    )
    server.data_dir.mkdir(parents=True)
    server.start()
    assert server.process is not None
    family = psutil.Process(server.process.pid).children(recursive=True)
    assert len(family) >= 2  # the workers
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        url = create(client, 3)
        assert client.patch(url, headers={**OCTET, "Upload-Offset": "0"}, content=b"abc").is_success
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"worker processes left running: {alive}"
