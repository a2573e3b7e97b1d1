"""GET <upload>/progress: Server-Sent Events for people watching an upload, on one instance
and across instances through Redis (UploadService.watch, events/progress.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PostgresDatabases, ServerProcess, missing_service
from tests.integration._wire import TUS, create, patch

REDIS_URL = "redis://127.0.0.1:6379/0"
CHUNK = b"x" * 65536
CHUNKS = 12


class Watcher(threading.Thread):
    """Reads one progress stream to its end: (event name, data) pairs as they come."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.headers = {**TUS, **(headers or {})}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.content_type = ""
        self.start()

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=30) as response:
            self.status = response.status_code
            self.content_type = response.headers.get("content-type", "")
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    self.events.append((name, json.loads(line[len("data: ") :])))


def slowly(pause: float = 0.1) -> Iterator[bytes]:
    for _ in range(CHUNKS):
        yield CHUNK
        time.sleep(pause)


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.02)


def test_a_watcher_sees_the_bytes_arrive_and_the_end(server_factory: Any) -> None:
    server = server_factory(["--hooks-progress-interval", "0.1"])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, CHUNKS * len(CHUNK))
        watcher = Watcher(url + "/progress")
        wait_for(lambda: watcher.events)  # the state now comes first
        assert watcher.status == 200 and watcher.content_type.startswith("text/event-stream")
        assert watcher.events[0] == (
            "progress",
            {"offset": 0, "length": CHUNKS * len(CHUNK), "status": "receiving"},
        )
        assert patch(http, url, 0, slowly()).status_code == 204
        watcher.join(30)
    assert not watcher.is_alive()  # the stream ended with the upload
    names = [name for name, _ in watcher.events]
    assert names[-1] == "finished" and set(names[:-1]) == {"progress"}
    offsets = [data["offset"] for _, data in watcher.events]
    assert offsets == sorted(offsets) and offsets[-1] == CHUNKS * len(CHUNK)
    # bytes that arrived, told before the PATCH's commit (its one commit is the end)
    assert any(0 < o < CHUNKS * len(CHUNK) for o in offsets)
    assert any("bytes_per_second" in data for _, data in watcher.events[1:])


def test_a_finished_upload_tells_its_end_at_once_and_strangers_learn_nothing(
    server_factory: Any, tmp_path: Path
) -> None:
    server = server_factory(["--hooks-module", "tests.integration.hooks_sample"])
    alice = {"Authorization": "Bearer alice-token"}
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, 3, headers=alice)
        assert patch(http, url, 0, b"abc", headers=alice).status_code == 204
        done = Watcher(url + "/progress", alice)
        done.join(10)
        assert done.events == [("finished", {"offset": 3, "length": 3, "status": "finished"})]
        assert http.get(url + "/progress").status_code == 404  # not the owner's
        assert (
            http.get(url + "/progress", headers={"Authorization": "Bearer bob-token"}).status_code
            == 404
        )
        assert http.delete(url, headers=alice).status_code == 204
        assert http.get(url + "/progress", headers=alice).status_code == 410
        assert http.post(url + "/progress", headers=alice).status_code == 405


def test_a_watcher_on_another_instance_sees_the_bytes_arrive(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        missing_service(f"Redis not reachable at {REDIS_URL}")
    database = postgres_databases.create()
    servers: list[ServerProcess] = []
    try:
        for index in range(2):
            server = ServerProcess(
                tmp_path / f"i{index}",
                database,
                ["--redis-url", REDIS_URL, "--hooks-progress-interval", "0.1"],
            )
            server.data_dir.mkdir(parents=True)
            servers.append(server.start())
        sender, watching = servers
        with httpx.Client(base_url=sender.base_url, headers=TUS, timeout=30) as http:
            url = create(http, CHUNKS * len(CHUNK))
            watcher = Watcher(f"{watching.files_url}{url.rsplit('/', 1)[1]}/progress")
            wait_for(lambda: watcher.events)
            time.sleep(1)  # the watcher's announcement reaches the sender
            assert patch(http, url, 0, slowly(0.2)).status_code == 204
            watcher.join(30)
        offsets = [data["offset"] for _, data in watcher.events]
        assert watcher.events[-1][0] == "finished" and offsets[-1] == CHUNKS * len(CHUNK)
        # notes from the sender's requests, through Redis: bytes before the one commit
        assert any(0 < o < CHUNKS * len(CHUNK) for o in offsets), offsets
    finally:
        for server in servers:
            server.stop()
