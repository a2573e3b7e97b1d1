"""Notifying hooks (post-create, post-finish, post-terminate): written to the outbox in the
change's transaction and delivered at least once, after a kill -9 too, and once per event
across three instances (tusd_py.events.relay)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PostgresDatabases, ServerProcess, missing_service
from tests.integration._hookd import Hookd
from tests.integration._wire import TUS, create, metadata, patch, state_rows, upload_id

REDIS_URL = "redis://127.0.0.1:6379/0"
#: the points delivered through the outbox (post-receive is told as it happens)
OUTBOX_POINTS = ("post-create", "post-finish", "post-terminate")


@pytest.fixture
def hookd() -> Iterator[Hookd]:
    receiver = Hookd()
    yield receiver
    receiver.close()


def until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.05)


def webhook_args(hookd: Hookd) -> list[str]:
    return ["--hooks-url", hookd.url, "--hooks-timeout", "2", "--hooks-retries", "0"]


def test_each_change_is_told_once_with_the_upload_as_it_became(
    server_factory: Any, hookd: Hookd
) -> None:
    server = server_factory(webhook_args(hookd))
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(
            http,
            6,
            meta=metadata(filename="a.csv"),
            headers={"X-Trace": "t7", "Authorization": "Bearer secret", "Cookie": "s=1"},
        )
        assert patch(http, url, 0, b"abc").status_code == 204
        assert hookd.events("post-finish") == []  # not finished yet
        assert patch(http, url, 3, b"def").status_code == 204
        other = create(http, 10)
        assert http.delete(other).status_code == 204
        until(lambda: len(hookd.events("post-terminate")) == 1)
    created = {e["upload"]["id"]: e for e in hookd.events("post-create")}
    created_a, created_b = created[upload_id(url)], created[upload_id(other)]
    (finished,) = hookd.events("post-finish")
    (terminated,) = hookd.events("post-terminate")
    assert created_a["upload"]["id"] == finished["upload"]["id"] == upload_id(url)
    assert created_a["upload"]["metadata"] == {"filename": "a.csv"}
    assert created_a["request"]["method"] == "POST"
    assert created_a["request"]["headers"]["x-trace"] == "t7"
    # credentials stay out of what is stored and sent on
    assert "authorization" not in created_a["request"]["headers"]
    assert "cookie" not in created_a["request"]["headers"]
    assert not any(
        "secret" in str(row) for row in state_rows(server, "SELECT payload FROM events_outbox")
    )
    assert finished["upload"]["offset"] == finished["upload"]["length"] == 6
    assert finished["request"]["method"] == "PATCH"
    assert terminated["upload"]["id"] == created_b["upload"]["id"] == upload_id(other)
    ids = [event["id"] for name, _, event in hookd.calls if name in OUTBOX_POINTS]
    assert len(ids) == len(set(ids)) == 4
    blocking = [name for name, _, _ in hookd.calls if name.startswith("pre-")]
    assert blocking == ["pre-create", "pre-finish", "pre-create", "pre-terminate"]

    # every event is marked delivered in the outbox (just after its delivery answered)
    def outbox() -> list[tuple[object, ...]]:
        return state_rows(server, "SELECT attempts, delivered_at FROM events_outbox")

    until(lambda: all(done for _, done in outbox()))
    rows = outbox()
    assert len(rows) == 4 and all(attempts == 1 for attempts, _ in rows)


def test_a_python_post_hook_that_raises_is_tried_again(server_factory: Any, tmp_path: Path) -> None:
    log = tmp_path / "hooks.jsonl"
    server = server_factory(
        ["--hooks-module", "tests.integration.hooks_sample", "--hooks-enabled", "post-finish"],
        env={"TUSD_TEST_HOOKS_LOG": str(log)},
    )
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, 3, meta=metadata(filename="flaky"))
        assert patch(http, url, 0, b"abc").status_code == 204

    def calls() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    until(lambda: len(calls()) == 2)  # the first raised; the relay tried again after ~1 s
    first, second = calls()
    assert first["id"] == second["id"] and first["type"] == "post-finish"
    until(lambda: state_rows(server, "SELECT delivered_at FROM events_outbox")[0][0] is not None)
    ((attempts, error),) = state_rows(server, "SELECT attempts, last_error FROM events_outbox")
    assert attempts == 2 and "not this time" in str(error)


def test_an_event_committed_before_a_kill_9_is_delivered_after_the_restart(
    server_factory: Any, hookd: Hookd
) -> None:
    hookd.down = True  # every delivery fails for now: the event stays in the outbox
    server = server_factory([*webhook_args(hookd), "--hooks-enabled", "post-finish"])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, 3)
        assert patch(http, url, 0, b"abc").status_code == 204
        until(lambda: len(hookd.calls) >= 1)  # tried, and refused
        server.kill()
        hookd.down = False
        server.launch()
        until(lambda: len(hookd.events("post-finish")) >= 1)
    (event,) = [e for e in hookd.events("post-finish")][-1:]
    assert event["upload"]["id"] == upload_id(url)
    # marked delivered just after the delivery answered
    until(lambda: state_rows(server, "SELECT delivered_at FROM events_outbox")[0][0] is not None)


@pytest.fixture
def three_instances(
    tmp_path: Path, postgres_databases: PostgresDatabases, hookd: Hookd
) -> Iterator[list[ServerProcess]]:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        missing_service(f"Redis not reachable at {REDIS_URL}")
    database = postgres_databases.create()
    servers = []
    for index in range(3):
        server = ServerProcess(
            tmp_path / f"i{index}",
            database,
            [*webhook_args(hookd), "--redis-url", REDIS_URL],
        )
        server.data_dir.mkdir(parents=True)
        servers.append(server.start())
    yield servers
    for server in servers:
        server.stop()


def test_three_instances_deliver_each_event_once(
    three_instances: list[ServerProcess], hookd: Hookd
) -> None:
    urls = []
    for number in range(30):
        server = three_instances[number % 3]
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
            url = create(http, 4)
            assert patch(http, url, 0, b"data").status_code == 204
            urls.append(url)
    until(lambda: len(hookd.events("post-finish")) >= 30, timeout=30)
    time.sleep(2)  # every relay polls at least once more: a second delivery would show
    ids = [event["id"] for name, _, event in hookd.calls if name in OUTBOX_POINTS]
    assert len(ids) == len(set(ids)) == 60  # 30 post-create, 30 post-finish, each once
    finished = {event["upload"]["id"] for event in hookd.events("post-finish")}
    assert finished == {upload_id(url) for url in urls}


def events_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tusd_py", "events", *args, "--data-dir", str(server.data_dir)]
    if server.database_url:
        command += ["--database-url", server.database_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_events_command_lists_retries_and_drops_what_waits(
    server_factory: Any, hookd: Hookd
) -> None:
    hookd.down = True
    server = server_factory([*webhook_args(hookd), "--hooks-enabled", "post-finish"])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        urls = [create(http, 1) for _ in range(2)]
        for url in urls:
            assert patch(http, url, 0, b"x").status_code == 204
    until(lambda: len(hookd.calls) >= 2)
    by_upload = {
        str(upload): str(event)
        for event, upload in state_rows(server, "SELECT id, upload_id FROM events_outbox")
    }
    listed = events_cli(server)  # pending ones by default
    assert listed.returncode == 0, listed.stderr
    for url in urls:
        assert upload_id(url) in listed.stdout
    assert "pending" in listed.stdout and "answered 503" in listed.stdout

    dropped = events_cli(server, "drop", by_upload[upload_id(urls[1])])
    assert dropped.returncode == 0 and "1 event(s) dropped" in dropped.stdout
    retried = events_cli(server, "retry", by_upload[upload_id(urls[0])])  # still pending
    assert retried.returncode == 0 and "1 event(s) made due again" in retried.stdout
    hookd.down = False
    until(lambda: len(hookd.events("post-finish")) == 1)
    assert hookd.events("post-finish")[0]["upload"]["id"] == upload_id(urls[0])
    until(lambda: not state_rows(server, "SELECT id FROM events_outbox WHERE delivered_at IS NULL"))
    assert events_cli(server).stdout.strip() == "no events"  # nothing pending
    delivered = events_cli(server, "list", "--status", "delivered")
    assert upload_id(urls[0]) in delivered.stdout and upload_id(urls[1]) not in delivered.stdout
    assert events_cli(server, "retry").returncode == 2  # neither ids nor --all-failed


@pytest.mark.s3_too
def test_events_reach_a_redis_stream_that_workers_read_with_a_consumer_group(
    server_factory: Any,
) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        missing_service(f"Redis not reachable at {REDIS_URL}")
    stream = f"tusd-test-events-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(stream, "workers", id="0", mkstream=True)
    try:
        server = server_factory(["--redis-url", REDIS_URL, "--events-redis-stream", stream])
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
            url = create(http, 3, meta=metadata(filename="a.csv"))
            assert patch(http, url, 0, b"abc").status_code == 204
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []

        def read() -> bool:
            got = client.xreadgroup("workers", "w1", {stream: ">"}, count=10, block=100)
            for _, items in got or []:  # type: ignore[union-attr]
                entries.extend(items)
            return len(entries) >= 2

        until(read)
        kinds = [fields[b"type"].decode() for _, fields in entries]
        assert kinds == ["post-create", "post-finish"]  # one upload's events in order
        finished = json.loads(entries[1][1][b"event"])
        assert finished["id"] == entries[1][1][b"id"].decode()
        assert finished["upload"]["id"] == upload_id(url)
        assert finished["upload"]["metadata"] == {"filename": "a.csv"}
        storage = finished["upload"]["storage"]  # where a worker reads the bytes itself
        if server.s3 is None:
            assert storage["type"] == "file"
            assert Path(storage["path"]).read_bytes() == b"abc"
        else:
            endpoint, prefix = server.s3
            assert storage["type"] == "s3"
            assert storage["key"] == prefix + upload_id(url)
            assert storage["bucket"] == "tusd-test" and storage["endpoint"] == endpoint.url
            assert endpoint.client().get_object("tusd-test", storage["key"]).read() == b"abc"
        assert client.xack(stream, "workers", *[entry_id for entry_id, _ in entries]) == 2
    finally:
        client.delete(stream)
        client.close()


def test_post_receive_tells_the_progress_at_most_once_per_interval(
    server_factory: Any, tmp_path: Path
) -> None:
    log = tmp_path / "hooks.jsonl"
    server = server_factory(
        [
            "--hooks-module", "tests.integration.hooks_sample",
            "--hooks-enabled", "post-receive", "--hooks-progress-interval", "0.2",
        ],
        env={"TUSD_TEST_HOOKS_LOG": str(log)},
    )  # fmt: skip
    chunk = b"x" * 65536

    def slowly() -> Iterator[bytes]:
        for _ in range(12):
            yield chunk
            time.sleep(0.1)

    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        url = create(http, 12 * 65536, headers={"Authorization": "Bearer alice-token"})
        started = time.monotonic()
        response = patch(http, url, 0, slowly(), headers={"Authorization": "Bearer alice-token"})
        took = time.monotonic() - started
        assert response.status_code == 204

    def told() -> list[dict[str, Any]]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [e for e in map(json.loads, lines) if e["type"] == "post-receive"]

    until(lambda: len(told()) >= 3)
    events = told()
    offsets = [e["upload"]["offset"] for e in events]
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] <= 12 * 65536
    assert len(events) <= took / 0.2 + 1  # one event per 0.2 s at most
    times = [datetime.fromisoformat(e["time"]) for e in events]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.15
    assert all(e["upload"]["id"] == upload_id(url) for e in events)
    assert all("authorization" not in e["request"]["headers"] for e in events)
