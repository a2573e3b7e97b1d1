"""PrometheusMeter: the figures of one application, in the Prometheus text format.

It implements core.ports.Meter with prometheus_client metrics kept in a CollectorRegistry of
its own (one per application: tests build several in one process), counts what the HTTP
layer reports (requests, their durations, error codes), and reads at scrape time what other
objects already count: the upload cache's hits and misses, the SQLAlchemy pool.

Names. Where tusd exposes the same figure we use its name and labels, so that its dashboards
carry over: tusd_requests_total{method} (we add a `status` label), tusd_errors_total{status,
code}, tusd_bytes_received, tusd_uploads_created, tusd_uploads_finished,
tusd_uploads_terminated. tusd's last four are counters without the `_total` suffix, which
prometheus_client always adds; the exposition gives them back their exact names, typed
`untyped` (rate() and increase() work on them as before). Everything of our own is
prefixed `tusdpy_`. docs/operations.md lists every series.

Several worker processes (`serve --workers N`) share one port, so a scrape reaches one of
them at random. `serve` then sets PROMETHEUS_MULTIPROC_DIR (prepare_multiprocess_dir) before
the workers start: prometheus_client keeps every worker's values in files there, the
worker that answers the scrape sums them (MultiProcessCollector), and each worker copies its
scrape-time readings into those files every SAMPLE_INTERVAL seconds.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ..core.tasks import cancel_and_wait

log = logging.getLogger("tusd_py.metrics")

#: the content type of GET /metrics
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: the directories `serve --workers N` makes: this prefix, then the serve process's id
TEMP_PREFIX = "tusd-py-metrics-"
#: how often each worker process copies its scrape-time readings into the shared files
SAMPLE_INTERVAL = 1.0

#: label values for methods outside this set are "OTHER" (a bounded number of series)
METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})
#: tusd's counters that have no `_total` suffix
UNSUFFIXED = frozenset(
    {
        "tusd_bytes_received",
        "tusd_uploads_created",
        "tusd_uploads_finished",
        "tusd_uploads_terminated",
    }
)
#: why admission control refuses (tusd_py.admission): present from the start, at 0
ADMISSION_REASONS = ("concurrency", "rate", "memory", "disk")
#: a PATCH may stream for minutes
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: the acquire timeout is 20 s by default
LOCK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
STORAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def multiprocess_dir() -> str | None:
    """The shared directory when prometheus_client runs in multiprocess mode, else None.

    prometheus_client chooses its mode once, when imported, from the environment; we ask it
    rather than the environment, so that the two never disagree."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and values.ValueClass is not values.MutexValue:
        return path
    return None


class _PoolWatch:
    """Reads the state database's load at scrape time (see tusd_py.state.database)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def readings(self) -> tuple[int, int, int, int]:
        """(size, in use, overflow, waiting)."""
        load = self.database.load()
        return load.size, load.busy, load.overflow, load.waiting


class PrometheusMeter:
    """A Meter (core.ports) kept in prometheus_client metrics, plus the HTTP figures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        r = self.registry
        # --- tusd's names ---
        self._requests = Counter(
            "tusd_requests",
            "Total number of requests served, by method and status.",
            ["method", "status"],
            registry=r,
        )
        self._errors = Counter(
            "tusd_errors",
            "Total number of error answers (4xx, 5xx), by status and error code.",
            ["status", "code"],
            registry=r,
        )
        self._bytes_received = Counter(
            "tusd_bytes_received", "Number of bytes received for uploads.", registry=r
        )
        self._created = Counter("tusd_uploads_created", "Number of created uploads.", registry=r)
        self._finished = Counter("tusd_uploads_finished", "Number of finished uploads.", registry=r)
        self._terminated = Counter(
            "tusd_uploads_terminated", "Number of terminated uploads.", registry=r
        )
        self._connections = Gauge(
            "tusd_connections_open",
            "Current number of open connections.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # --- our own ---
        self._durations = Histogram(
            "tusdpy_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method.",
            ["method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._expired = Counter(
            "tusdpy_uploads_expired", "Number of uploads reclaimed after expiry.", registry=r
        )
        self._in_progress = Gauge(
            "tusdpy_uploads_in_progress",
            "Requests carrying upload bytes right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._refusals = Counter(
            "tusdpy_admission_refusals",
            "Requests refused by admission control before their body was read, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in ADMISSION_REASONS:
            self._refusals.labels(reason)
        self._hook_calls = Histogram(
            "tusdpy_hook_seconds",
            "Duration of hook calls and event deliveries, by hook point and outcome "
            "(accepted, rejected, failed; delivered for notifying points).",
            ["hook", "outcome"],
            buckets=STORAGE_BUCKETS,
            registry=r,
        )
        self._hook_children: dict[tuple[str, str], Any] = {}
        self._events_pending = Gauge(
            "tusdpy_events_pending",
            "Events in the outbox waiting for delivery (the whole fleet's, as last counted).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._events_failed = Gauge(
            "tusdpy_events_failed",
            "Events in the outbox that gave up after their attempts and wait for an operator "
            "(`tusd-py events retry`).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._lock_waits = Histogram(
            "tusdpy_lock_wait_seconds",
            "Time taken to get an upload's lock, by outcome (acquired, timeout, busy, error).",
            ["outcome"],
            buckets=LOCK_BUCKETS,
            registry=r,
        )
        self._handovers = Counter(
            "tusdpy_lock_handovers",
            "Lock holders asked to let their upload go (a newcomer wanted it, or a lease was "
            "lost).",
            registry=r,
        )
        self._storage = Histogram(
            "tusdpy_storage_call_seconds",
            "Duration of calls to the byte store, by operation and outcome (ok, error).",
            ["operation", "outcome"],
            buckets=STORAGE_BUCKETS,
            registry=r,
        )
        self._cache_hits = Counter(
            "tusdpy_cache_hits", "Upload state cache lookups answered by the cache.", registry=r
        )
        self._cache_misses = Counter(
            "tusdpy_cache_misses",
            "Upload state cache lookups that went to the database.",
            registry=r,
        )
        self._cache_errors = Counter(
            "tusdpy_cache_errors",
            "Upload state cache operations that failed (Redis unreachable).",
            registry=r,
        )
        self._pool_size = Gauge(
            "tusdpy_db_pool_size",
            "Connections the database pool keeps (beyond them: overflow).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pool_in_use = Gauge(
            "tusdpy_db_pool_in_use",
            "Database connections checked out by requests right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pool_overflow = Gauge(
            "tusdpy_db_pool_overflow",
            "Database connections open beyond the pool size right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pool_waiting = Gauge(
            "tusdpy_db_pool_waiting",
            "Requests waiting for a database connection right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # children by label values, so that the hot path makes no labels() call
        self._request_children: dict[tuple[str, int], Any] = {}
        self._duration_children: dict[str, Any] = {}
        self._lock_children: dict[str, Any] = {}
        self._storage_children: dict[tuple[str, bool], Any] = {}
        # what is read at scrape time
        self._cache: Any = None
        self._cache_seen = [0, 0, 0]
        self._pool: _PoolWatch | None = None
        self._open_connections: Callable[[], int] | None = None
        self._sampler: asyncio.Task[None] | None = None

    # --- the Meter of the core ---------------------------------------------------------

    def upload_created(self) -> None:
        self._created.inc()

    def upload_finished(self) -> None:
        self._finished.inc()

    def upload_terminated(self) -> None:
        self._terminated.inc()

    def uploads_expired(self, count: int) -> None:
        self._expired.inc(count)

    def bytes_received(self, count: int) -> None:
        self._bytes_received.inc(count)

    def receiving_started(self) -> None:
        self._in_progress.inc()

    def receiving_ended(self) -> None:
        self._in_progress.dec()

    def lock_waited(self, seconds: float, outcome: str) -> None:
        child = self._lock_children.get(outcome)
        if child is None:
            child = self._lock_children[outcome] = self._lock_waits.labels(outcome)
        child.observe(seconds)

    def lock_handover(self) -> None:
        self._handovers.inc()

    def storage_call(self, operation: str, seconds: float, ok: bool) -> None:
        key = (operation, ok)
        child = self._storage_children.get(key)
        if child is None:
            child = self._storage_children[key] = self._storage.labels(
                operation, "ok" if ok else "error"
            )
        child.observe(seconds)

    def admission_refused(self, reason: str) -> None:
        self._refusals.labels(reason).inc()

    def hook_called(self, point: str, outcome: str, seconds: float) -> None:
        key = (point, outcome)
        child = self._hook_children.get(key)
        if child is None:
            child = self._hook_children[key] = self._hook_calls.labels(point, outcome)
        child.observe(seconds)

    def events_backlog(self, pending: int, failed: int) -> None:
        self._events_pending.set(pending)
        self._events_failed.set(failed)

    # --- the HTTP layer ----------------------------------------------------------------

    def request_done(self, method: str, status: int, seconds: float, code: str | None) -> None:
        """One tus request answered (http/metrics.py calls this)."""
        if method not in METHODS:
            method = "OTHER"
        key = (method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(method, str(status))
        counter.inc()
        histogram = self._duration_children.get(method)
        if histogram is None:
            histogram = self._duration_children[method] = self._durations.labels(method)
        histogram.observe(seconds)
        if status >= 400:
            self._errors.labels(str(status), code or "none").inc()

    # --- read at scrape time -----------------------------------------------------------

    def watch_cache(self, cache: Any) -> None:
        """An upload cache with `hits` and `misses` counters (and maybe `errors`)."""
        self._cache = cache
        self._cache_seen = [0, 0, 0]

    def watch_database(self, database: Any) -> None:
        """The state database (tusd_py.state.database.Database), read at scrape time."""
        self._pool = _PoolWatch(database)

    def watch_connections(self, count: Callable[[], int]) -> None:
        """`count()`: the connections open in this process (counted by the HTTP protocol,
        read here, so that a connection costs no metric update)."""
        self._open_connections = count

    def sample(self) -> None:
        """Copy the watched objects' figures into the series."""
        if self._open_connections is not None:
            self._connections.set(self._open_connections())
        cache = self._cache
        if cache is not None:
            seen = self._cache_seen
            for index, counter, now in (
                (0, self._cache_hits, cache.hits),
                (1, self._cache_misses, cache.misses),
                (2, self._cache_errors, getattr(cache, "errors", 0)),
            ):
                if now > seen[index]:  # counters only go up: add what is new since last time
                    counter.inc(now - seen[index])
                seen[index] = now
        if self._pool is not None:
            size, in_use, overflow, waiting = self._pool.readings()
            self._pool_size.set(size)
            self._pool_in_use.set(in_use)
            self._pool_overflow.set(overflow)
            self._pool_waiting.set(waiting)

    # --- the exposition ----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The body of GET /metrics (Prometheus text format 0.0.4)."""
        self.sample()
        source: Collector
        if self.multiprocess_dir is None:
            source = self.registry
        else:
            forget_dead_workers(self.multiprocess_dir)
            source = MultiProcessCollector(None, self.multiprocess_dir)
        return generate_latest(_Exposed(source))

    async def start(self) -> None:
        """With several worker processes: keep this worker's readings fresh in the files."""
        if self.multiprocess_dir is not None and self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._sampler)
        self._sampler = None
        if self.multiprocess_dir is not None:
            # this worker's gauges leave with it; its counters still count
            mark_process_dead(os.getpid(), self.multiprocess_dir)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            try:
                self.sample()
            except Exception:
                log.exception("could not read the figures for /metrics")


class _Exposed:
    """What a registry collects, as we expose it: tusd's unsuffixed counters under their
    exact names, and without the `_created` series prometheus_client adds to counters and
    histograms (a timestamp per series that no dashboard of ours reads)."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name in UNSUFFIXED:
                plain = Metric(family.name, family.documentation, "unknown")
                total = family.name + "_total"
                for sample in family.samples:
                    if sample.name == total:
                        plain.add_sample(family.name, sample.labels, sample.value)
                yield plain
                continue
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


# --- several worker processes -----------------------------------------------------------


def prepare_multiprocess_dir() -> Callable[[], None]:
    """For `serve --workers N`, before the workers start: a directory where every worker's
    prometheus_client keeps its values (PROMETHEUS_MULTIPROC_DIR, inherited by the workers).

    An operator's own PROMETHEUS_MULTIPROC_DIR is used and emptied of a previous run's
    files (prometheus_client requires that); otherwise a fresh temporary directory is made.
    Returns what to call once the workers have stopped."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for path in glob.glob(os.path.join(given, "*.db")):
            os.remove(path)
        return lambda: None
    _remove_left_behind()
    made = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = made

    def cleanup() -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)

    return cleanup


def _remove_left_behind() -> None:
    """The directories of `serve` processes that were killed before they could remove
    theirs (SIGKILL, out of memory)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{TEMP_PREFIX}*-*")):
        pid = os.path.basename(path)[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def forget_dead_workers(path: str) -> None:
    """Drop the gauges of worker processes that are gone (a worker that crashed and was
    replaced): their uploads are no longer in progress. Their counters stay."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = os.path.basename(file)[: -len(".db")].rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
