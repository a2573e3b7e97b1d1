"""The workload: many tus uploads at once, each on its own keep-alive connection.

One upload: a new connection; POST with `Upload-Length` (201 and a Location); PATCHes of
`chunk` bytes at increasing offsets (204, each answer's `Upload-Offset` checked); with
`verify`, a HEAD whose `Upload-Offset` must equal the length. An upload stops at its first
failure (an error status, a wrong offset, a broken connection, or no complete answer within
`request_timeout`, which is counted as unanswered): nothing is retried, so every failure is
seen in the counts.

`concurrency` uploads run at once; each finished one makes room for the next, until
`uploads` have been started, or, with `duration`, until that many seconds have passed (the
uploads in flight then finish). With `processes` > 1 the uploads and the concurrency are
split over that many worker processes (forked), each with its own event loop, which send
their counts back. Every request body is a slice of one buffer per process, allocated
before the run.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import random
import re
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .http import Connection, Endpoint, HttpError, parse_endpoint, resolve
from .stats import Recorder
from .usage import ProcessTreeSampler, TreeUsage, own_cpu_seconds

TUS_VERSION = "1.0.0"
#: a generator process whose CPU time exceeds this share of the wall time was the limit
SATURATED = 0.9

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`1048576`, `1MiB`, `256KiB`, `1.5MB`, `64k` -> bytes (KiB/MiB/GiB and bare K/M/G are
    powers of 1024, kB/MB/GB of 1000). ValueError with a sentence otherwise."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with KiB, MiB, GiB, kB, MB)")
    number = float(match.group(1)) * _UNITS[unit]
    if number != int(number):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(number)


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def make_payload(size: int, seed: int = 0) -> bytes:
    """The bytes every request body is cut from: deterministic, not compressible."""
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class Workload:
    endpoint: str
    uploads: int | None = 100
    duration: float | None = None
    concurrency: int = 10
    size: int = 1024 * 1024
    chunk: int = 256 * 1024
    verify: bool = False
    request_timeout: float = 60.0
    #: extra request header lines, e.g. ("Authorization: Bearer x",)
    headers: tuple[str, ...] = ()
    processes: int = 1

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint)
        if (self.uploads is None) == (self.duration is None):
            raise ValueError("give either a number of uploads or a duration")
        if self.uploads is not None and self.uploads < 1:
            raise ValueError("the number of uploads must be at least 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("the duration must be more than 0 seconds")
        if self.concurrency < 1:
            raise ValueError("the concurrency must be at least 1")
        if self.size < 0:
            raise ValueError("the upload size must not be negative")
        if self.chunk < 1:
            raise ValueError("the chunk size must be at least 1 byte")
        if not self.request_timeout > 0:
            raise ValueError("the request timeout must be more than 0 seconds")
        if self.processes < 1:
            raise ValueError("the number of processes must be at least 1")
        for line in self.headers:
            name, colon, _ = line.partition(":")
            if not colon or not name.strip() or "\r" in line or "\n" in line:
                raise ValueError(f"{line!r} is not a header line (Name: value)")

    @property
    def patches_per_upload(self) -> int:
        return math.ceil(self.size / self.chunk)

    def shares(self) -> list[Workload]:
        """The workload split over its processes (each share with processes=1). A process
        gets no share when there are more processes than uploads or concurrency."""
        count = self.processes
        if self.uploads is not None:
            count = min(count, self.uploads)
        count = min(count, self.concurrency)
        shares = []
        for index in range(count):
            uploads = None if self.uploads is None else _split(self.uploads, count, index)
            concurrency = _split(self.concurrency, count, index)
            shares.append(
                Workload(
                    self.endpoint,
                    uploads,
                    self.duration,
                    concurrency,
                    self.size,
                    self.chunk,
                    self.verify,
                    self.request_timeout,
                    self.headers,
                    1,
                )
            )
        return shares


def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


@dataclass
class WorkerResult:
    recorder: Recorder
    started: float  # time.monotonic(), comparable across processes (CLOCK_MONOTONIC)
    ended: float
    cpu_seconds: float
    failure: str | None = None


@dataclass
class RunResult:
    workload: Workload
    recorder: Recorder
    wall_seconds: float
    #: per worker process: (CPU seconds, wall seconds)
    workers: list[tuple[float, float]] = field(default_factory=list)
    server: TreeUsage | None = None


class _Upload:
    """One upload's requests on one connection (a new one if the server closes it)."""

    def __init__(
        self, workload: Workload, endpoint: Endpoint, payload: memoryview, rec: Recorder
    ) -> None:
        self.workload = workload
        self.endpoint = endpoint
        self.payload = payload
        self.rec = rec
        extra = "".join(f"{line}\r\n" for line in workload.headers)
        self.base_head = f"Tus-Resumable: {TUS_VERSION}\r\n{extra}"

    async def _exchange(
        self,
        connection: Connection,
        kind: str,
        target: str,
        head: str,
        body: memoryview | None = None,
    ) -> Any:
        """The response, or None after counting the failure."""
        rec = self.rec
        rec.sent[kind] += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.workload.request_timeout):
                response = await connection.request(kind, target, head.encode("latin-1"), body)
        except TimeoutError:
            rec.unanswered[kind] += 1
            return None
        except HttpError as exc:
            rec.error(kind, exc.label)
            return None
        except ConnectionRefusedError:
            rec.error(kind, "refused")
            return None
        except ConnectionResetError:
            rec.error(kind, "closed")
            return None
        except OSError as exc:
            rec.error(kind, type(exc).__name__)
            return None
        rec.answer(kind, time.perf_counter() - started)
        if not 200 <= response.status < 300:
            rec.error(kind, str(response.status))
            return None
        return response

    async def run(self) -> bool:
        workload, rec = self.workload, self.rec
        connection = Connection(self.endpoint)
        try:
            head = f"{self.base_head}Upload-Length: {workload.size}\r\n"
            created = await self._exchange(connection, "POST", self.endpoint.path, head)
            if created is None:
                return False
            location = created.headers.get("location")
            if not location:
                rec.error("POST", "no Location")
                return False
            where, target = resolve(self.endpoint, location)
            if where != connection.endpoint:
                connection.close()
                connection = Connection(where)
            offset = 0
            patch_head = f"{self.base_head}Content-Type: application/offset+octet-stream\r\n"
            while offset < workload.size:
                length = min(workload.chunk, workload.size - offset)
                head = f"{patch_head}Upload-Offset: {offset}\r\n"
                rec.bytes_sent += length
                answer = await self._exchange(
                    connection, "PATCH", target, head, self.payload[:length]
                )
                if answer is None:
                    return False
                if answer.headers.get("upload-offset") != str(offset + length):
                    rec.error("PATCH", "wrong offset")
                    return False
                offset += length
                rec.bytes_acknowledged += length
            if workload.verify:
                answer = await self._exchange(connection, "HEAD", target, self.base_head)
                if answer is None:
                    return False
                if answer.headers.get("upload-offset") != str(workload.size):
                    rec.error("HEAD", "wrong offset")
                    return False
            return True
        finally:
            connection.close()


async def run_share(workload: Workload, payload: memoryview, rec: Recorder) -> None:
    """Run one process's share of the workload on the running event loop."""
    endpoint = parse_endpoint(workload.endpoint)
    remaining = workload.uploads
    deadline = None if workload.duration is None else time.monotonic() + workload.duration

    async def lane() -> None:
        nonlocal remaining
        while True:
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            elif deadline is not None and time.monotonic() >= deadline:
                return
            rec.uploads_started += 1
            if await _Upload(workload, endpoint, payload, rec).run():
                rec.uploads_ok += 1
            else:
                rec.uploads_failed += 1

    await asyncio.gather(*(lane() for _ in range(workload.concurrency)))


def _payload_for(workload: Workload) -> memoryview:
    return memoryview(make_payload(min(workload.chunk, max(workload.size, 1))))


def _measure(workload: Workload, payload: memoryview) -> WorkerResult:
    rec = Recorder()
    cpu = own_cpu_seconds()
    started = time.monotonic()
    asyncio.run(run_share(workload, payload, rec))
    ended = time.monotonic()
    return WorkerResult(rec, started, ended, own_cpu_seconds() - cpu)


def _worker_main(
    workload: Workload,
    pipe: multiprocessing.connection.Connection,
    go: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        payload = _payload_for(workload)
        pipe.send("ready")
        go.wait()
        pipe.send(_measure(workload, payload))
    except BaseException:
        pipe.send(WorkerResult(Recorder(), 0.0, 0.0, 0.0, traceback.format_exc()))
    finally:
        pipe.close()


def run(workload: Workload, pid: int | None = None, include_children: bool = True) -> RunResult:
    """Run the workload (in this process, or in `workload.processes` forked workers) and
    return the merged counts; with `pid`, also that server's CPU and peak RSS."""
    shares = workload.shares()
    if len(shares) == 1:
        sampler = ProcessTreeSampler(pid, children=include_children).start() if pid else None
        result = _measure(shares[0], _payload_for(shares[0]))
        server = sampler.stop() if sampler else None
        return RunResult(
            workload,
            result.recorder,
            result.ended - result.started,
            [(result.cpu_seconds, result.ended - result.started)],
            server,
        )
    context = multiprocessing.get_context("fork")
    go = context.Event()
    pipes = []
    processes = []
    for share in shares:
        parent_end, child_end = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(share, child_end, go), daemon=True)
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    try:
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a load generator process did not start")
        # the sampler's thread starts after the forks: a fork copies no running threads
        sampler = ProcessTreeSampler(pid, children=include_children).start() if pid else None
        go.set()
        results: list[WorkerResult] = [pipe.recv() for pipe in pipes]
        server = sampler.stop() if sampler else None
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise RuntimeError("a load generator process failed:\n" + failures[0])
    merged = Recorder()
    for result in results:
        merged.merge(result.recorder)
    wall = max(r.ended for r in results) - min(r.started for r in results)
    return RunResult(
        workload,
        merged,
        wall,
        [(r.cpu_seconds, r.ended - r.started) for r in results],
        server,
    )
