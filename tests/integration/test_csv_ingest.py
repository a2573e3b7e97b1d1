"""examples/csv-ingest end to end: tus-js-client uploads a 100 MiB CSV file to a server whose
pre-create hook refuses what is not CSV; the server's post-finish event goes to a Redis
stream; the example's worker takes it, reads the file from the store (a file, or the S3
object) as a stream, checks it and POSTs the outcome to a webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, ServerProcess, missing_service
from tests.integration._hookd import Hookd
from tests.integration._wire import (
    TUS,
    assert_error,
    create,
    metadata,
    post,
    stored_uploads,
    upload_all,
    upload_id,
)
from tests.interop._support import MiB, require_js_client, run_js_upload

pytestmark = pytest.mark.s3_too

REDIS_URL = os.environ.get("TUSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EXAMPLE = REPO_ROOT / "examples" / "csv-ingest"
HEADER = "order_id,customer,amount,placed_on\n"


@dataclass
class Pipeline:
    server: ServerProcess
    notifications: Hookd
    stream: str
    worker: subprocess.Popen[bytes]
    worker_log: Path

    def notified(self, upload: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        """The notifications about `upload`, once there is at least one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [body for _, _, body in list(self.notifications.calls)]
            found = [body for body in found if body.get("upload_id") == upload]
            if found:
                return found
            if self.worker.poll() is not None:
                raise AssertionError(f"the worker exited:\n{self.worker_log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no notification in {timeout} s:\n{self.worker_log.read_text()}")


@pytest.fixture
def pipeline(server_factory: Any, tmp_path: Path) -> Iterator[Pipeline]:
    import redis

    queue = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        queue.ping()
    except redis.RedisError:
        missing_service(f"Redis not reachable at {REDIS_URL}")
    stream = f"csv-ingest-test-{uuid.uuid4().hex[:8]}"
    notifications = Hookd()
    example_env = {"PYTHONPATH": str(EXAMPLE), "CSV_INGEST_MAX_BYTES": str(200 * MiB)}
    server = server_factory(
        [
            "--hooks-module",
            "csv_ingest.hooks",
            "--redis-url",
            REDIS_URL,
            "--events-redis-stream",
            stream,
        ],
        env=example_env,
    )
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "csv_ingest.worker",
                "--redis-url",
                REDIS_URL,
                "--stream",
                stream,
                "--consumer",
                "worker-1",
                "--notify-url",
                notifications.url,
            ],
            # the server's S3 credentials (TUSD_S3_*), if it has any
            env={**os.environ, **server.env, **example_env},
            stdout=log,
            stderr=log,
        )
    try:
        yield Pipeline(server, notifications, stream, worker, worker_log)
    finally:
        worker.terminate()
        worker.wait(15)
        notifications.close()
        for key in queue.scan_iter(match="csv-ingest:csv-ingest:done:*"):
            queue.delete(key)
        queue.delete(stream)
        queue.close()


def write_csv(path: Path, at_least: int) -> int:
    """A CSV file of at least `at_least` bytes, written in blocks; returns its record count."""
    rows = 0
    size = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        size += out.write(HEADER)
        while size < at_least:
            block = "".join(
                # a quoted field with a comma in it, as real exports have
                f'{i},"Customer {i % 977}, Ltd",{i * 37 % 100_000 / 100:.2f},'
                f"2026-12-{i % 28 + 1:02d}\n"
                for i in range(rows, rows + 20_000)
            )
            size += len(block.encode())
            out.write(block)
            rows += 20_000
    return rows


class PeakRss:
    """Samples a process's resident memory until stopped; the highest is kept."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def test_a_100_mib_csv_file_is_uploaded_checked_and_counted(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    node = require_js_client()
    source = tmp_path / "orders.csv"
    rows = write_csv(source, 100 * MiB)
    size = source.stat().st_size
    memory = PeakRss(pipeline.worker.pid)
    result = run_js_upload(
        node,
        {
            "file": str(source),
            "endpoint": pipeline.server.files_url,
            "chunkSize": 16 * MiB,
            "metadata": {"filename": "orders.csv", "filetype": "text/csv"},
        },
        timeout=300,
    )
    assert result["status"] == "success", result
    upload = upload_id(result["url"])
    (told,) = pipeline.notified(upload)
    peak = memory.stop()
    assert told == {
        "event_id": told["event_id"],
        "upload_id": upload,
        "filename": "orders.csv",
        "owner": None,
        "size": size,
        "status": "valid",
        "rows": rows,
        "columns": 4,
        "header": ["order_id", "customer", "amount", "placed_on"],
    }
    # the worker streamed the file: its memory stayed far below the file's size
    assert peak < 90 * MiB, f"worker peak RSS {peak / MiB:.0f} MiB"


def test_a_malformed_csv_file_gets_a_notification_naming_the_line(
    pipeline: Pipeline,
) -> None:
    lines = [HEADER] + [f"{i},c{i},1.00,2026-12-01\n" for i in range(1, 3000)]
    lines[1233] = "1233,c1233,1.00\n"  # line 1234: one field short
    bad_columns = "".join(lines).encode()
    not_utf8 = (HEADER + "1,Caf").encode() + b"\xe9,1.00,2026-12-01\n"
    with httpx.Client(base_url=pipeline.server.base_url, headers=TUS, timeout=30) as http:
        first = create(http, len(bad_columns), meta=metadata(filename="orders.csv"))
        upload_all(http, first, bad_columns)
        second = create(http, len(not_utf8), meta=metadata(filename="latin1.csv"))
        upload_all(http, second, not_utf8)
    (told,) = pipeline.notified(upload_id(first))
    assert told["status"] == "invalid"
    assert told["line"] == 1234
    assert told["error"] == "line 1234: 3 fields where the header has 4"
    assert "rows" not in told
    (told,) = pipeline.notified(upload_id(second))
    assert (told["status"], told["line"]) == ("invalid", 2)
    assert "not UTF-8" in told["error"]


def test_what_is_not_csv_is_refused_before_a_byte_is_sent(pipeline: Pipeline) -> None:
    import redis

    with httpx.Client(base_url=pipeline.server.base_url, headers=TUS, timeout=30) as http:
        picture = post(http, 1000, meta=metadata(filename="holiday.jpg"))
        assert_error(picture, 415, "ERR_NOT_CSV")
        huge = post(http, 300 * MiB, meta=metadata(filename="all.csv"))
        assert_error(huge, 413, "ERR_CSV_TOO_LARGE")
        unknown = post(http, defer=True, meta=metadata(filename="stream.csv"))
        assert_error(unknown, 411, "ERR_LENGTH_REQUIRED")
    assert stored_uploads(pipeline.server) == set()
    queue = redis.Redis.from_url(REDIS_URL)
    try:
        assert queue.xlen(pipeline.stream) == 0  # nothing created, nothing told
    finally:
        queue.close()


def test_an_event_delivered_twice_is_checked_and_notified_once(pipeline: Pipeline) -> None:
    import redis

    data = (HEADER + "1,a,1.00,2026-12-01\n").encode()
    with httpx.Client(base_url=pipeline.server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, len(data), meta=metadata(filename="one.csv"))
        upload_all(http, url, data)
        (told,) = pipeline.notified(upload_id(url))
        queue = redis.Redis.from_url(REDIS_URL)
        try:
            # the relay's at-least-once: the same event appended again (a server killed
            # between XADD and marking the event delivered)
            entries: Any = queue.xrange(pipeline.stream)
            (finished,) = [fields for _, fields in entries if fields[b"type"] == b"post-finish"]
            assert json.loads(finished[b"event"])["id"] == told["event_id"]
            queue.xadd(pipeline.stream, finished)
        finally:
            queue.close()
        # a later upload's notification means the worker has passed the duplicate
        later = create(http, len(data), meta=metadata(filename="two.csv"))
        upload_all(http, later, data)
        pipeline.notified(upload_id(later))
    assert len(pipeline.notified(upload_id(url))) == 1
