"""Several tusd-py instances sharing PostgreSQL, Redis and an S3 store (Ceph RGW).

Three server processes on three ports play three hosts behind a load balancer: any request
may reach any of them. Faults are real: our own Redis server is stopped and started again,
and the connection to PostgreSQL is cut by a proxy.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    PostgresDatabases,
    ServerProcess,
    free_port,
    missing_service,
    s3_arguments,
    start_workers,
    worker_processes,
)
from tests.integration._wire import OCTET, TUS, create, offset_of, patch, path_of, upload_id
from tests.tcp_proxy import CuttableProxy

MiB = 1024 * 1024
REDIS_URL = os.environ.get("TUSD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    s3_fleet: Any,
    postgres_databases: PostgresDatabases,
) -> Iterator[list[ServerProcess]]:
    """Three instances: one PostgreSQL database, one Redis, one S3 prefix."""
    if not redis_reachable(REDIS_URL):
        missing_service(f"Redis not reachable at {REDIS_URL}")
    database = postgres_databases.create()
    endpoint = s3_fleet.endpoint("s3-rgw")
    prefix = f"{uuid.uuid4().hex[:12]}/"
    args, env = s3_arguments(endpoint, prefix)
    root = tmp_path_factory.mktemp("fleet")
    servers = []
    for index in range(3):
        server = ServerProcess(root / f"i{index}", database, [*args, "--redis-url", REDIS_URL], env)
        server.data_dir.mkdir(parents=True)
        server.s3 = (endpoint, prefix)
        servers.append(server.start())
    yield servers
    for server in servers:
        server.stop()


def on(server: ServerProcess, url: str) -> str:
    """The same upload's URL on another instance."""
    return f"{server.files_url}{upload_id(url)}"


def test_a_client_sending_each_request_to_another_instance_ends_with_exact_bytes(
    fleet: list[ServerProcess],
) -> None:
    data = os.urandom(13 * MiB + 5)
    with httpx.Client(headers=TUS, timeout=60) as http:
        url = create(http_on(http, fleet[0]), len(data))
        offset, turn = 0, 0
        while offset < len(data):
            here = on(fleet[turn % 3], url)
            turn += 1
            assert offset_of(http, here) == offset
            response = patch(http, here, offset, data[offset : offset + 1_500_000])
            assert response.status_code == 204, response.text
            offset = int(response.headers["upload-offset"])
        for server in fleet:
            assert http.get(on(server, url)).content == data


def http_on(http: httpx.Client, server: ServerProcess) -> httpx.Client:
    http.base_url = httpx.URL(server.base_url)
    return http


def test_a_stuck_patch_on_one_instance_is_taken_over_by_a_resume_on_another(
    fleet: list[ServerProcess],
) -> None:
    data = os.urandom(3 * MiB)
    a, c = fleet[0], fleet[2]
    with httpx.Client(base_url=a.base_url, headers=TUS, timeout=60) as http:
        url = create(http, len(data))
    stuck = socket.create_connection(("127.0.0.1", a.port), timeout=30)
    try:
        head = (
            f"PATCH {path_of(url)} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OCTET['Content-Type']}\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        stuck.sendall(head + data[:MiB])
        time.sleep(0.5)  # the client goes silent with 2 MiB unsent
        started = time.monotonic()
        with httpx.Client(headers=TUS, timeout=60) as http:
            offset = offset_of(http, on(c, url))
            took = time.monotonic() - started
            # the holder on A let go: its client hears 204 with what was saved
            assert stuck.recv(4096).startswith(b"HTTP/1.1 204")
            assert offset == MiB
            assert took < 3.0, f"the handover took {took:.2f} s"
            response = patch(http, on(c, url), offset, data[offset:])
            assert response.status_code == 204, response.text
            assert http.get(on(fleet[1], url)).content == data
    finally:
        stuck.close()


def test_two_concurrent_patches_on_two_instances_never_both_write(
    fleet: list[ServerProcess],
) -> None:
    size = 2 * MiB
    mine, theirs = os.urandom(size), os.urandom(size)
    with httpx.Client(base_url=fleet[0].base_url, headers=TUS, timeout=60) as http:
        url = create(http, size)
    answers: dict[str, int] = {}

    def send(name: str, server: ServerProcess, body: bytes) -> None:
        # both start at offset 0 and trickle their bodies, so that they overlap in time
        def chunks() -> Iterator[bytes]:
            for start in range(0, size, 256 * 1024):
                yield body[start : start + 256 * 1024]
                time.sleep(0.05)

        try:
            response = httpx.patch(
                on(server, url),
                headers={**TUS, **OCTET, "Upload-Offset": "0", "Content-Length": str(size)},
                content=chunks(),
                timeout=60,
            )
            answers[name] = response.status_code
        except httpx.TransportError:
            answers[name] = 0  # displaced and cut off: fine, as long as it wrote nothing wrong

    threads = [
        threading.Thread(target=send, args=("mine", fleet[0], mine)),
        threading.Thread(target=send, args=("theirs", fleet[1], theirs)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert set(answers.values()) <= {204, 409, 423, 0}, answers
    assert 204 in answers.values(), answers  # one of them went through
    with httpx.Client(headers=TUS, timeout=60) as http:
        offset = offset_of(http, on(fleet[2], url))
        # what was kept came from one writer only: finishing the upload with "mine" gives
        # all of mine, or theirs up to the offset and mine after it; mixed bytes give neither
        response = patch(http, on(fleet[2], url), offset, mine[offset:])
        assert response.status_code == 204, response.text
        result = http.get(on(fleet[0], url)).content
    assert result in (mine, theirs[:offset] + mine[offset:]), "bytes of both writers were mixed"


class RoundRobin(httpx.HTTPTransport):
    """Sends each request to the next instance, as a load balancer would."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports
        self.turn = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self.ports[self.turn % len(self.ports)])
        self.turn += 1
        return super().handle_request(request)


class FleetAsOneServer:
    """Three instances presented to the stateful test as one server: requests rotate over
    them, raw connections too; state and bytes are checked where all of them keep them."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        first = servers[0]
        self.base_url = first.base_url
        self.files_url = first.files_url
        self.s3 = first.s3
        self.database_url = first.database_url
        self.data_dir = first.data_dir
        self.log_path = first.log_path
        self.process = first.process
        self.transport = RoundRobin([server.port for server in servers])
        self._turn = 0

    @property
    def port(self) -> int:
        self._turn += 1
        return self.servers[self._turn % len(self.servers)].port


def test_random_request_sequences_across_instances(fleet: list[ServerProcess]) -> None:
    from tests.integration.test_stateful import run_machine

    run_machine(FleetAsOneServer(fleet))  # type: ignore[arg-type]
    for server in fleet:
        assert server.process is not None and server.process.poll() is None


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Redis server of this test's own, which the test may stop and start."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_service("redis-server is not installed")
    port = free_port()
    state: dict[str, Any] = {"port": port, "process": None}

    def start() -> None:
        state["process"] = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_reachable(f"redis://127.0.0.1:{port}/0"):
            assert time.monotonic() < deadline, "our Redis did not start"
            time.sleep(0.05)

    def stop() -> None:
        process = state["process"]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    state["start"], state["stop"] = start, stop
    start()
    yield state
    stop()


def test_with_redis_down_reads_go_on_and_writes_answer_503_until_it_returns(
    own_redis: dict[str, Any], tmp_path: Path
) -> None:
    server = ServerProcess(
        tmp_path / "data", None, ["--redis-url", f"redis://127.0.0.1:{own_redis['port']}/0"]
    ).start()
    try:
        data = os.urandom(300_000)
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
            url = create(http, len(data))
            done = create(http, 3)
            assert patch(http, done, 0, b"abc").status_code == 204
            assert patch(http, url, 0, data[:100_000]).status_code == 204

            own_redis["stop"]()
            # the instance kept the upload's lock for its next PATCH (redis_locks.py): it
            # relies on it until a renewal fails (every lease/3, 10/3 s by default); an
            # empty PATCH changes nothing either way
            deadline = time.monotonic() + 8
            while patch(http, url, 100_000, b"").status_code == 204:
                assert time.monotonic() < deadline, "the kept lock outlived Redis"
                time.sleep(0.2)
            assert offset_of(http, url) == 100_000  # from PostgreSQL / SQLite
            assert http.get(done).content == b"abc"
            response = patch(http, url, 100_000, data[100_000:200_000])
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
            assert http.delete(url).status_code == 503
            assert http.post("/files/", headers={"Upload-Length": "5"}).status_code == 503
            assert offset_of(http, url) == 100_000  # nothing changed

            own_redis["start"]()
            deadline = time.monotonic() + 15
            while True:
                response = patch(http, url, 100_000, data[100_000:])
                if response.status_code == 204 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert response.status_code == 204, response.text
            assert http.get(url).content == data
    finally:
        server.stop()


def test_with_postgres_cut_off_requests_answer_503_and_nothing_is_half_written(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    if not redis_reachable(REDIS_URL):
        missing_service(f"Redis not reachable at {REDIS_URL}")
    database = postgres_databases.create()
    with CuttableProxy("127.0.0.1", 5432) as proxy:
        proxied = database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        server = ServerProcess(tmp_path / "data", proxied, ["--redis-url", REDIS_URL])
        server.data_dir.mkdir(parents=True)
        server.start()
        try:
            data = os.urandom(400_000)
            with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
                url = create(http, len(data))
                assert patch(http, url, 0, data[:100_000]).status_code == 204

                proxy.cut()
                # a HEAD that finds the upload in the Redis cache needs no database
                assert offset_of(http, url) == 100_000
                response = patch(http, url, 100_000, data[100_000:300_000])
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert http.post("/files/", headers={"Upload-Length": "5"}).status_code == 503

                proxy.restore()
                deadline = time.monotonic() + 15
                while True:
                    head = http.head(url)
                    if head.status_code == 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                # the refused PATCH left no trace: the offset is where the 204 left it
                assert head.headers["upload-offset"] == "100000"
                response = patch(http, url, 100_000, data[100_000:])
                assert response.status_code == 204, response.text
                assert http.get(url).content == data
        finally:
            server.stop()


def test_an_exhausted_database_pool_answers_503_within_its_timeout(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    if not redis_reachable(REDIS_URL):
        missing_service(f"Redis not reachable at {REDIS_URL}")
    import psycopg

    database = postgres_databases.create()
    pool = ["--db-pool-size", "1", "--db-max-overflow", "0", "--db-pool-timeout", "1"]
    server = ServerProcess(
        tmp_path / "data", database, ["--redis-url", REDIS_URL, "--cache-ttl", "0", *pool]
    )
    server.data_dir.mkdir(parents=True)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
            busy, other = create(http, 10), create(http, 10)
            dsn = database.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(dsn) as blocker:
                # hold the row: the PATCH's commit waits for it, keeping the only connection
                blocker.execute(
                    "SELECT 1 FROM uploads WHERE id = %s FOR UPDATE", (upload_id(busy),)
                )
                patching = threading.Thread(target=patch, args=(http, busy, 0, b"0123456789"))
                patching.start()
                time.sleep(0.5)
                started = time.monotonic()
                with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as second:
                    # a creation needs the database (a HEAD of `other` may not: its lock is
                    # kept, with its state, for its next request)
                    response = second.post("/files/", headers={"Upload-Length": "5"})
                waited = time.monotonic() - started
                assert response.status_code == 503
                assert response.headers["retry-after"]
                assert waited < 5, f"the request waited {waited:.1f} s for a connection"
                blocker.rollback()
            patching.join(30)
            assert offset_of(http, busy) == 10
            assert offset_of(http, other) == 0
    finally:
        server.stop()


def test_requests_queue_for_a_small_pool_instead_of_failing(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """Issue 9: more concurrent requests than database connections wait their turn (within
    --db-pool-timeout) and all succeed."""
    database = postgres_databases.create()
    pool = ["--db-pool-size", "1", "--db-max-overflow", "0", "--db-pool-timeout", "20"]
    server = ServerProcess(tmp_path / "data", database, pool)
    server.data_dir.mkdir(parents=True)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
            urls = [create(http, 10) for _ in range(30)]
        results: list[int] = []

        def upload(url: str) -> None:
            with httpx.Client(headers=TUS, timeout=60) as own:
                results.append(patch(own, url, 0, b"0123456789").status_code)

        threads = [threading.Thread(target=upload, args=(url,)) for url in urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == [204] * 30
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["postgres+redis", "sqlite"])
def test_several_worker_processes_serve_one_upload(
    backend: str, postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """`--workers 2`: with Redis, or on one host without it (locks through DATA_DIR/locks)."""
    if backend == "sqlite":
        server = start_workers(tmp_path / "data")
    else:
        if not redis_reachable(REDIS_URL):
            missing_service(f"Redis not reachable at {REDIS_URL}")
        server = start_workers(
            tmp_path / "data", postgres_databases.create(), ["--redis-url", REDIS_URL]
        )
    try:
        workers = worker_processes(server)
        assert len(workers) == 2, [c.cmdline() for c in workers]
        if backend == "sqlite":
            # each worker listens for handover requests beside the shared lock file
            # (the first to answer may be ahead of the other in starting)
            expected = {f"{worker.pid}.sock" for worker in workers}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                inboxes = {path.name for path in (server.data_dir / "locks").glob("*.sock")}
                if inboxes == expected:
                    break
                time.sleep(0.1)
            assert inboxes == expected
        data = os.urandom(1_000_000)
        with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
            url = create(http, len(data))
            for offset in range(0, len(data), 100_000):
                # a fresh connection each time: the kernel spreads them over the workers
                with httpx.Client(headers=TUS, timeout=30) as fresh:
                    assert offset_of(fresh, url) == offset
                    assert (
                        patch(fresh, url, offset, data[offset : offset + 100_000]).status_code
                        == 204
                    )
            assert http.get(url).content == data
    finally:
        server.stop()


def listening_socket_inode(process: Any, port: int) -> int:
    (listening,) = [
        c
        for c in process.net_connections(kind="tcp")
        if c.status == "LISTEN" and c.laddr.port == port
    ]
    return os.stat(f"/proc/{process.pid}/fd/{listening.fd}").st_ino


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_each_worker_listens_on_its_own_socket_and_a_burst_of_connections_is_spread(
    tmp_path: Path,
) -> None:
    """With one shared listening socket the first worker awake takes most of a burst."""
    server = start_workers(tmp_path / "data")
    connections: list[socket.socket] = []
    try:
        workers = worker_processes(server)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                inodes = {listening_socket_inode(worker, server.port) for worker in workers}
                break
            except ValueError:  # a worker not listening yet
                time.sleep(0.1)
        assert len(inodes) == 2, "the workers share one listening socket"
        for _ in range(60):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connections.append(connection)
        for connection in connections:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for connection in connections:
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        accepted = [
            sum(1 for c in worker.net_connections(kind="tcp") if c.status == "ESTABLISHED")
            for worker in workers
        ]
        assert sum(accepted) == 60 and min(accepted) >= 10, accepted
    finally:
        for connection in connections:
            connection.close()
        server.stop()


def test_workers_without_redis_hand_a_stuck_upload_over_whichever_worker_holds_it(
    tmp_path: Path,
) -> None:
    """A PATCH whose client went silent holds its upload in one worker; a resume may reach
    either worker, and must get the offset that includes what the stuck PATCH received."""
    server = start_workers(tmp_path / "data")
    try:
        for _ in range(4):
            data = os.urandom(2 * MiB)
            with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
                url = create(http, len(data))
            stuck = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            try:
                stuck.sendall(
                    (
                        f"PATCH {path_of(url)} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                        f"Content-Type: {OCTET['Content-Type']}\r\nUpload-Offset: 0\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n"
                    ).encode()
                    + data[:MiB]
                )
                time.sleep(0.3)  # the client goes silent with 1 MiB unsent
                started = time.monotonic()
                with httpx.Client(headers=TUS, timeout=30) as fresh:
                    offset = offset_of(fresh, url)
                    took = time.monotonic() - started
                    assert stuck.recv(4096).startswith(b"HTTP/1.1 204")
                    assert offset == MiB
                    assert took < 3.0, f"the handover took {took:.2f} s"
                    assert patch(fresh, url, offset, data[offset:]).status_code == 204
                    assert fresh.get(url).content == data
            finally:
                stuck.close()
    finally:
        server.stop()


def test_a_409_refreshes_a_cache_entry_that_lies(fleet: list[ServerProcess]) -> None:
    import json

    import redis

    data = os.urandom(50_000)
    with httpx.Client(base_url=fleet[0].base_url, headers=TUS, timeout=30) as http:
        url = create(http, len(data))
        assert patch(http, url, 0, data[:20_000]).status_code == 204
        client = redis.Redis.from_url(REDIS_URL)
        # the instance keeps the upload's lock for a moment (for its next PATCH) and leaves
        # the state in the cache as it lets go
        deadline = time.monotonic() + 10
        while client.exists(f"tusd:lock:{upload_id(url)}"):
            assert time.monotonic() < deadline, "the kept lock was never given back"
            time.sleep(0.05)
        # make the shared cache say something wrong, with a version no writer has reached
        key = f"tusd:upload:{upload_id(url)}"
        state = json.loads(client.hget(key, "s"))  # type: ignore[arg-type]
        state.update(offset=7, version=10**6)
        client.hset(key, mapping={"v": 10**6, "s": json.dumps(state)})
        assert offset_of(http, on(fleet[1], url)) == 7  # HEAD believes the cache
        response = patch(http, on(fleet[2], url), 7, data[7:])
        assert response.status_code == 409
        assert response.headers["upload-offset"] == "20000"  # the database's word
        assert offset_of(http, on(fleet[1], url)) == 20_000  # and the cache was refreshed


def test_postgres_without_redis_says_that_only_one_instance_may_use_it(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "data", postgres_databases.create())
    server.data_dir.mkdir(parents=True)
    server.start()
    try:
        assert "only this one instance may use this database" in server.log_path.read_text()
    finally:
        server.stop()
