"""GET /metrics against a real server: the series move by exactly what the requests did.

Each test scrapes before and after what it does and compares the two (the shared server
has served earlier tests), parsing the Prometheus text format with prometheus_client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PostgresDatabases, ServerProcess, missing_service, start_workers
from tests.integration._wire import (
    OCTET,
    TUS,
    RawConnection,
    create,
    offset_of,
    patch,
    path_of,
    payload,
    wait_for,
)
from tests.integration.test_many_instances import REDIS_URL, redis_reachable

pytestmark = pytest.mark.s3_too

Labels = frozenset[tuple[str, str]]


class Scrape:
    """One scrape of /metrics: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(sample_name == name for sample_name, _ in self.samples)


def scrape(server: ServerProcess) -> Scrape:
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def upload(client: httpx.Client, data: bytes, chunk: int) -> str:
    url = create(client, len(data))
    for offset in range(0, len(data), chunk):
        response = patch(client, url, offset, data[offset : offset + chunk])
        assert response.status_code == 204, (response.status_code, response.text)
    return url


# --- the endpoint --------------------------------------------------------------------------


def test_metrics_answer_in_the_prometheus_text_format_without_tus_resumable(
    server: ServerProcess,
) -> None:
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = Scrape(response.text)
    for name in (
        "tusd_bytes_received",
        "tusd_uploads_created",
        "tusd_uploads_finished",
        "tusd_uploads_terminated",
        "tusdpy_uploads_expired_total",
        "tusdpy_uploads_in_progress",
        "tusdpy_lock_handovers_total",
        "tusdpy_cache_hits_total",
        "tusdpy_cache_misses_total",
        "tusdpy_db_pool_size",
        "tusdpy_db_pool_in_use",
        "tusdpy_db_pool_overflow",
        "tusdpy_db_pool_waiting",
        "tusd_connections_open",
    ):
        assert found.has(name), name
    # tusd's own names, exactly: its dashboards query them without a suffix
    assert "\ntusd_uploads_created " in response.text
    assert "\ntusd_bytes_received " in response.text
    # and none of the `_created` timestamps prometheus_client would add to every counter
    names = {line.split("{")[0].split(" ")[0] for line in response.text.splitlines()}
    assert {name for name in names if name.endswith("_created")} == {"tusd_uploads_created"}
    # every reason is there from the start (a shared server may have refused before: a
    # creation larger than the free disk is a disk refusal)
    for reason in ("concurrency", "rate", "memory", "disk"):
        assert f'tusdpy_admission_refusals_total{{reason="{reason}"}}' in response.text


def test_open_connections_are_reported_under_tusds_name(server: ServerProcess) -> None:
    """tusd_connections_open: 20 idle keep-alive connections show, and leave when closed."""

    def reported() -> float:
        return scrape(server).value("tusd_connections_open")

    base = reported()
    host, port = server.base_url.split("//", 1)[1].split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
    try:
        assert wait_for(lambda: reported() >= base + 20, 5), reported()
    finally:
        for sock in sockets:
            sock.close()
    assert wait_for(lambda: reported() <= base, 5), reported()


def test_scrapes_and_probes_are_not_counted_as_tus_requests(server: ServerProcess) -> None:
    before = scrape(server)
    httpx.get(f"{server.base_url}/health", timeout=30)
    httpx.get(f"{server.base_url}/ready", timeout=30)
    after = scrape(server)
    for method in ("GET", "HEAD"):
        for status in ("200", "503"):
            assert moved(before, after, "tusd_requests_total", method=method, status=status) == 0


# --- uploads -------------------------------------------------------------------------------


def test_create_patch_finish_terminate_move_the_counters_by_exactly_that(
    server: ServerProcess, client: httpx.Client
) -> None:
    before = scrape(server)
    first = payload(30_000, seed=1)
    second = payload(12_345, seed=2)
    upload(client, first, 10_000)  # 1 POST, 3 PATCHes, finished
    upload(client, second, 5_000)  # 1 POST, 3 PATCHes, finished
    unfinished = create(client, 50_000)
    assert patch(client, unfinished, 0, b"x" * 1_000).status_code == 204
    assert client.delete(unfinished).status_code == 204
    after = scrape(server)

    assert moved(before, after, "tusd_uploads_created") == 3
    assert moved(before, after, "tusd_uploads_finished") == 2
    assert moved(before, after, "tusd_uploads_terminated") == 1
    assert moved(before, after, "tusd_bytes_received") == len(first) + len(second) + 1_000
    assert moved(before, after, "tusd_requests_total", method="POST", status="201") == 3
    assert moved(before, after, "tusd_requests_total", method="PATCH", status="204") == 7
    assert moved(before, after, "tusd_requests_total", method="DELETE", status="204") == 1
    assert moved(before, after, "tusdpy_request_duration_seconds_count", method="PATCH") == 7
    assert moved(before, after, "tusdpy_request_duration_seconds_count", method="POST") == 3
    assert after.value("tusdpy_uploads_in_progress") == 0
    # the store's calls, timed by operation
    assert (
        moved(before, after, "tusdpy_storage_call_seconds_count", operation="create", outcome="ok")
        == 3
    )
    assert (
        moved(before, after, "tusdpy_storage_call_seconds_count", operation="append", outcome="ok")
        == 7
    )
    assert (
        moved(before, after, "tusdpy_storage_call_seconds_count", operation="finish", outcome="ok")
        == 2
    )
    assert (
        moved(before, after, "tusdpy_storage_call_seconds_count", operation="delete", outcome="ok")
        == 1
    )


def test_creation_with_upload_counts_its_bytes(server: ServerProcess, client: httpx.Client) -> None:
    before = scrape(server)
    data = payload(4_000, seed=3)
    create(client, len(data), body=data)
    after = scrape(server)
    assert moved(before, after, "tusd_uploads_created") == 1
    assert moved(before, after, "tusd_uploads_finished") == 1
    assert moved(before, after, "tusd_bytes_received") == len(data)


def test_a_409_is_counted_under_its_status_and_code(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 100)
    before = scrape(server)
    response = patch(client, url, 50, b"y" * 10)
    assert response.status_code == 409
    after = scrape(server)
    assert moved(before, after, "tusd_requests_total", method="PATCH", status="409") == 1
    assert moved(before, after, "tusd_errors_total", status="409", code="ERR_OFFSET_MISMATCH") == 1
    assert moved(before, after, "tusd_bytes_received") == 0


def test_an_admission_refusal_is_counted_with_its_code_and_reason(  # type: ignore[no-untyped-def]
    server_factory, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("admission is the same on every backend")
    refusing: ServerProcess = server_factory(extra_args=["--max-memory", "1"])
    with httpx.Client(base_url=refusing.base_url, headers=TUS, timeout=30) as http:
        before = scrape(refusing)
        assert http.post("/files/", headers={"Upload-Length": "100"}).status_code == 503
        after = scrape(refusing)
    assert moved(before, after, "tusd_errors_total", status="503", code="ERR_MEMORY_PRESSURE") == 1
    assert moved(before, after, "tusdpy_admission_refusals_total", reason="memory") == 1


def test_a_404_is_counted_with_its_code(server: ServerProcess, client: httpx.Client) -> None:
    before = scrape(server)
    assert client.head("/files/" + "A" * 22).status_code == 404
    after = scrape(server)
    assert moved(before, after, "tusd_requests_total", method="HEAD", status="404") == 1
    assert moved(before, after, "tusd_errors_total", status="404", code="ERR_UPLOAD_NOT_FOUND") == 1


def test_cache_hits_and_misses_are_counted(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 100)
    before = scrape(server)
    assert client.head(url).status_code == 200  # the state written at creation
    after_hit = scrape(server)
    assert moved(before, after_hit, "tusdpy_cache_hits_total") == 1
    assert moved(before, after_hit, "tusdpy_cache_misses_total") == 0
    assert client.head("/files/" + "B" * 22).status_code == 404  # never cached
    after_miss = scrape(server)
    assert moved(after_hit, after_miss, "tusdpy_cache_hits_total") == 0
    assert moved(after_hit, after_miss, "tusdpy_cache_misses_total") == 1


# --- locks ---------------------------------------------------------------------------------


def test_a_lock_handover_is_counted(server: ServerProcess, client: httpx.Client) -> None:
    data = payload(100_000, seed=4)
    url = create(client, len(data))
    before = scrape(server)
    connection = RawConnection(server, timeout=15)
    try:
        connection.send_head(
            "PATCH",
            path_of(url),
            {**OCTET, "Upload-Offset": "0", "Content-Length": str(len(data))},
        )
        connection.send(data[:40_000])
        # the stalled PATCH is an upload in progress
        assert wait_for(lambda: scrape(server).value("tusdpy_uploads_in_progress") >= 1, 5)
        assert offset_of(client, url) == 40_000  # the HEAD takes the upload over
        answer = connection.read_response(timeout=5)
        assert answer.status == 204
    finally:
        connection.close()
    after = scrape(server)
    assert moved(before, after, "tusdpy_lock_handovers_total") == 1
    assert moved(before, after, "tusdpy_lock_wait_seconds_count", outcome="acquired") == 2
    assert moved(before, after, "tusd_bytes_received") == 40_000
    assert after.value("tusdpy_uploads_in_progress") == 0


# --- expiry --------------------------------------------------------------------------------


def test_expired_uploads_are_counted(server_factory) -> None:  # type: ignore[no-untyped-def]
    short: ServerProcess = server_factory(extra_args=["--expiration", "2"])
    with httpx.Client(base_url=short.base_url, headers=TUS, timeout=30) as http:
        before = scrape(short)
        url = create(http, 100)
        assert wait_for(lambda: scrape(short).value("tusdpy_uploads_expired_total") >= 1, 15)
        assert http.head(url).status_code in (404, 410)
    after = scrape(short)
    assert moved(before, after, "tusdpy_uploads_expired_total") == 1


# --- the database pool ---------------------------------------------------------------------


def test_the_database_pool_is_reported(server: ServerProcess, backend: str) -> None:
    found = scrape(server)
    for name in ("size", "in_use", "overflow", "waiting"):
        assert found.has(f"tusdpy_db_pool_{name}"), name
    assert found.value("tusdpy_db_pool_waiting") == 0  # nothing else is going on
    if backend == "postgres":
        # --db-pool-size's default for the hot statements, and a quarter of it for the rest
        assert found.value("tusdpy_db_pool_size") == 20 + 5


def test_postgres_pool_gauges_follow_the_configured_size(server_factory, backend: str) -> None:  # type: ignore[no-untyped-def]
    if backend != "postgres":
        pytest.skip("the pool options apply to PostgreSQL")
    sized: ServerProcess = server_factory(extra_args=["--db-pool-size", "7"])
    found = scrape(sized)
    assert found.value("tusdpy_db_pool_size") == 7 + 2  # the direct pool, the engine's
    assert found.value("tusdpy_db_pool_overflow") == 0


# --- several worker processes --------------------------------------------------------------


@pytest.fixture
def two_workers(postgres_databases: PostgresDatabases, tmp_path: Path) -> Iterator[ServerProcess]:
    if not redis_reachable(REDIS_URL):
        missing_service(f"Redis not reachable at {REDIS_URL}")
    import psutil

    server = start_workers(
        tmp_path / "data", postgres_databases.create(), ["--redis-url", REDIS_URL]
    )
    workers = psutil.Process(server.pid()).children(recursive=True)
    try:
        yield server
    finally:
        server.stop()
        for process in workers:  # none should be left; if one is, it is ours to end
            if process.is_running():
                process.kill()


def test_several_workers_report_their_sum_whichever_answers_the_scrape(
    two_workers: ServerProcess,
) -> None:
    before = scrape(two_workers)
    data = payload(20_000, seed=5)
    for _ in range(6):
        # a fresh connection each time: the kernel spreads them over the workers
        with httpx.Client(base_url=two_workers.base_url, headers=TUS, timeout=30) as fresh:
            url = create(fresh, len(data))
            assert patch(fresh, url, 0, data).status_code == 204
    for _ in range(6):  # each scrape reaches one worker or the other: all agree
        after = scrape(two_workers)
        assert moved(before, after, "tusd_uploads_created") == 6
        assert moved(before, after, "tusd_uploads_finished") == 6
        assert moved(before, after, "tusd_bytes_received") == 6 * len(data)
        assert moved(before, after, "tusd_requests_total", method="POST", status="201") == 6
        assert after.value("tusdpy_uploads_in_progress") == 0
    # each worker has its own pool: the gauge adds them up
    assert wait_for(lambda: scrape(two_workers).value("tusdpy_db_pool_size") == 2 * 25, 5), scrape(
        two_workers
    ).value("tusdpy_db_pool_size")
