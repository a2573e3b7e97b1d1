"""The Meter port, its no-op and Prometheus implementations, and the timing wrappers."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit._async import run, until
from tusd_protocol.errors import UploadLocked
from tusd_py.core.ports import NULL_METER, Holding, Meter, NullMeter
from tusd_py.metrics.instrumented import MeteredLocks, MeteredStore
from tusd_py.metrics.prometheus import TEMP_PREFIX, PrometheusMeter, prepare_multiprocess_dir
from tusd_py.state.database import Database
from tusd_py.state.local_locks import LocalLocks
from tusd_storage.memory import MemoryStore

ID = "u" * 22


def values(meter: PrometheusMeter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(meter.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(meter: PrometheusMeter, name: str, **labels: str) -> float:
    return values(meter).get((name, frozenset(labels.items())), 0.0)


# --- the port ------------------------------------------------------------------------------


def meter_methods() -> list[str]:
    return [
        name
        for name, member in inspect.getmembers(Meter)
        if not name.startswith("_") and callable(member)
    ]


def test_the_null_meter_takes_every_call_and_keeps_nothing() -> None:
    assert meter_methods()
    for name in meter_methods():
        parameters = list(inspect.signature(getattr(Meter, name)).parameters)[1:]
        arguments = {"count": 5, "seconds": 0.1, "outcome": "acquired", "operation": "create"}
        arguments |= {"ok": True, "reason": "rate", "point": "pre-create", "pending": 3}
        arguments |= {"failed": 1}
        assert getattr(NULL_METER, name)(*(arguments[p] for p in parameters)) is None
    assert isinstance(NULL_METER, NullMeter)
    assert vars(NULL_METER) == {}


def test_the_prometheus_meter_implements_every_call_of_the_port() -> None:
    for name in meter_methods():
        port = inspect.signature(getattr(Meter, name))
        mine = inspect.signature(getattr(PrometheusMeter, name))
        assert list(mine.parameters) == list(port.parameters), name


# --- the Prometheus meter ------------------------------------------------------------------


def test_each_call_moves_its_series() -> None:
    meter = PrometheusMeter()
    meter.upload_created()
    meter.upload_created()
    meter.upload_finished()
    meter.upload_terminated()
    meter.uploads_expired(3)
    meter.bytes_received(1000)
    meter.bytes_received(24)
    meter.receiving_started()
    meter.receiving_started()
    meter.receiving_ended()
    meter.lock_waited(0.002, "acquired")
    meter.lock_waited(20.0, "timeout")
    meter.lock_handover()
    meter.storage_call("create", 0.01, True)
    meter.storage_call("finish", 0.5, False)
    meter.admission_refused("rate")
    meter.admission_refused("rate")
    meter.hook_called("pre-create", "rejected", 0.003)
    meter.hook_called("post-finish", "delivered", 0.2)
    meter.events_backlog(7, 2)
    found = values(meter)

    def get(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert get("tusd_uploads_created") == 2
    assert get("tusd_uploads_finished") == 1
    assert get("tusd_uploads_terminated") == 1
    assert get("tusdpy_uploads_expired_total") == 3
    assert get("tusd_bytes_received") == 1024
    assert get("tusdpy_uploads_in_progress") == 1
    assert get("tusdpy_lock_wait_seconds_count", outcome="acquired") == 1
    assert get("tusdpy_lock_wait_seconds_bucket", outcome="timeout", le="10.0") == 0
    assert get("tusdpy_lock_wait_seconds_bucket", outcome="timeout", le="20.0") == 1
    assert get("tusdpy_lock_handovers_total") == 1
    assert get("tusdpy_storage_call_seconds_count", operation="create", outcome="ok") == 1
    assert get("tusdpy_storage_call_seconds_count", operation="finish", outcome="error") == 1
    assert get("tusdpy_admission_refusals_total", reason="rate") == 2
    assert get("tusdpy_admission_refusals_total", reason="concurrency") == 0
    assert get("tusdpy_hook_seconds_count", hook="pre-create", outcome="rejected") == 1
    assert get("tusdpy_hook_seconds_sum", hook="post-finish", outcome="delivered") == 0.2
    assert (get("tusdpy_events_pending"), get("tusdpy_events_failed")) == (7, 2)


def test_requests_are_counted_by_method_and_status_and_errors_by_code() -> None:
    meter = PrometheusMeter()
    meter.request_done("PATCH", 204, 0.01, None)
    meter.request_done("PATCH", 204, 0.02, None)
    meter.request_done("PATCH", 409, 0.001, "ERR_OFFSET_MISMATCH")
    meter.request_done("BREW", 405, 0.001, None)  # methods outside the list share one label
    assert value(meter, "tusd_requests_total", method="PATCH", status="204") == 2
    assert value(meter, "tusd_requests_total", method="PATCH", status="409") == 1
    assert value(meter, "tusd_requests_total", method="OTHER", status="405") == 1
    assert value(meter, "tusd_errors_total", status="409", code="ERR_OFFSET_MISMATCH") == 1
    assert value(meter, "tusd_errors_total", status="405", code="none") == 1
    assert value(meter, "tusdpy_request_duration_seconds_count", method="PATCH") == 3
    assert value(meter, "tusdpy_request_duration_seconds_bucket", method="PATCH", le="0.01") == 2


def test_tusd_names_are_exposed_exactly_and_without_created_series() -> None:
    meter = PrometheusMeter()
    meter.upload_created()
    text = meter.exposition().decode()
    assert "# TYPE tusd_uploads_created untyped\ntusd_uploads_created 1.0\n" in text
    assert "# TYPE tusd_bytes_received untyped\n" in text
    assert "tusd_uploads_created_total" not in text
    assert "_created{" not in text
    assert not [line for line in text.splitlines() if line.split(" ")[0].endswith("s_created")][1:]


def test_each_meter_keeps_its_own_figures() -> None:
    first, second = PrometheusMeter(), PrometheusMeter()
    first.upload_created()
    assert value(first, "tusd_uploads_created") == 1
    assert value(second, "tusd_uploads_created") == 0


# --- read at scrape time -------------------------------------------------------------------


class FakeCache:
    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


def test_the_cache_counters_are_read_at_scrape_time() -> None:
    meter = PrometheusMeter()
    cache = FakeCache()
    meter.watch_cache(cache)
    cache.hits, cache.misses = 5, 2
    assert value(meter, "tusdpy_cache_hits_total") == 5
    assert value(meter, "tusdpy_cache_misses_total") == 2
    cache.hits = 8
    assert value(meter, "tusdpy_cache_hits_total") == 8  # not 5 + 8
    assert value(meter, "tusdpy_cache_errors_total") == 0  # this cache has none


def test_the_database_load_is_read_at_scrape_time(tmp_path: Path) -> None:
    """In use and waiting are the calls running on and queued for the database workers."""
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    meter = PrometheusMeter()
    meter.watch_database(database)
    release = threading.Event()
    seen: list[tuple[float, float]] = []

    def hold(connection: Any) -> None:
        release.wait(10)

    async def main() -> None:
        held = asyncio.ensure_future(database.run(hold))  # takes the only worker
        queued = asyncio.ensure_future(database.run(hold))  # waits its turn
        await until(lambda: value(meter, "tusdpy_db_pool_waiting") == 1)
        seen.append((value(meter, "tusdpy_db_pool_in_use"), value(meter, "tusdpy_db_pool_waiting")))
        release.set()
        await asyncio.gather(held, queued)
        seen.append((value(meter, "tusdpy_db_pool_in_use"), value(meter, "tusdpy_db_pool_waiting")))
        await database.close()

    run(main)
    assert seen == [(1, 1), (0, 0)]
    assert value(meter, "tusdpy_db_pool_size") == 1  # SQLite: one writer
    assert value(meter, "tusdpy_db_pool_overflow") == 0


# --- the timing wrappers -------------------------------------------------------------------


def test_the_metered_store_times_each_call_by_operation() -> None:
    async def main() -> PrometheusMeter:
        meter = PrometheusMeter()
        store = MeteredStore(MemoryStore(), meter)
        layout = await store.create(ID, 10)
        appender = store.appender(ID, 0, layout, 10)
        await appender.write(b"01234")
        await appender.write(b"56789")
        await appender.close()
        await store.finish(ID, 10, layout)
        assert b"".join([chunk async for chunk in store.read(ID, 2, 8, layout)]) == b"234567"
        aborted = store.appender(ID, 10, layout, 10)
        await aborted.abort()
        await aborted.abort()  # reported once
        await store.delete(ID, layout)
        return meter

    meter = run(main)
    for operation in ("create", "append", "close", "finish", "read", "delete"):
        count = value(meter, "tusdpy_storage_call_seconds_count", operation=operation, outcome="ok")
        assert count == 1, operation
    aborted = value(meter, "tusdpy_storage_call_seconds_count", operation="append", outcome="error")
    assert aborted == 1


def test_the_metered_store_says_what_the_store_offers() -> None:
    inner = MemoryStore()
    store = MeteredStore(inner, NULL_METER)
    assert store.capabilities == inner.capabilities
    assert store.uses_layout == inner.uses_layout
    assert store.max_upload_size == inner.max_upload_size


def test_the_metered_locks_time_acquisitions_and_count_handovers() -> None:
    async def main() -> PrometheusMeter:
        meter = PrometheusMeter()
        locks = MeteredLocks(LocalLocks(acquire_timeout=0.2), meter)
        held: list[Holding] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                held.append(holding)
                await release.wait()

        task = asyncio.create_task(holder())
        await until(lambda: bool(held))
        with pytest.raises(UploadLocked):
            async with locks.hold(ID, wait=False):
                pass
        waiter = asyncio.create_task(_hold_briefly(locks))
        await until(lambda: held[0].stop_requested)  # the newcomer asked the holder to let go
        release.set()
        await task
        await waiter
        assert not locks.is_held(ID)
        return meter

    meter = run(main)
    assert value(meter, "tusdpy_lock_wait_seconds_count", outcome="acquired") == 2
    assert value(meter, "tusdpy_lock_wait_seconds_count", outcome="busy") == 1
    assert value(meter, "tusdpy_lock_handovers_total") == 1


async def _hold_briefly(locks: Any) -> None:
    async with locks.hold(ID):
        pass


def test_a_lock_not_let_go_in_time_is_a_timeout() -> None:
    async def main() -> PrometheusMeter:
        meter = PrometheusMeter()
        locks = MeteredLocks(LocalLocks(acquire_timeout=0.05), meter)
        async with locks.hold(ID):
            with pytest.raises(UploadLocked):
                async with locks.hold(ID):
                    pass
        return meter

    meter = run(main)
    assert value(meter, "tusdpy_lock_wait_seconds_count", outcome="timeout") == 1
    assert value(meter, "tusdpy_lock_handovers_total") == 1  # it was asked, in vain


# --- several processes ---------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from tusd_py.metrics.prometheus import PrometheusMeter
    meter = PrometheusMeter()
    meter.upload_created()
    meter.bytes_received(int(sys.argv[1]))
    meter.receiving_started()
    if sys.argv[2] == "scrape":
        sys.stdout.write(meter.exposition().decode())
    """
)


def test_in_multiprocess_mode_a_scrape_adds_up_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(size: int, action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(size), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    worker(100, "quiet")  # a process that is gone: its counters still count
    text = worker(23, "scrape")
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert found["tusd_uploads_created"] == 2
    assert found["tusd_bytes_received"] == 123
    # the gone process's upload is no longer in progress; the scraping one's is
    assert found["tusdpy_uploads_in_progress"] == 1


def test_serve_makes_a_directory_for_its_workers_and_removes_one_left_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    left = tmp_path / f"{TEMP_PREFIX}{gone}-abc"
    left.mkdir()
    cleanup = prepare_multiprocess_dir()
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.is_dir() and made.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")
    assert not left.exists()
    cleanup()
    assert not made.exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_an_operators_directory_is_emptied_of_the_last_runs_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("kept")
    prepare_multiprocess_dir()()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
