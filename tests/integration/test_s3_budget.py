"""The S3 store's buffer budget against real S3 servers: many concurrent uploads on a small
--max-buffer-memory all finish byte-exact while RSS stays near the budget, and a request
that waits for a buffer past --buffer-wait-timeout answers 503 with Retry-After and moves
no offset. (The budget itself is unit-tested in storage/tests/test_s3_budget.py.)"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import TEST_PART_SIZE, ServerProcess
from tests.integration._wire import TUS, RawConnection, assert_error, create, offset_of, path_of
from tusd_py.http.fasthttp import QUEUE_LIMIT

pytestmark = pytest.mark.s3_only

MiB = 1024 * 1024
P = TEST_PART_SIZE


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRss:
    """The highest RSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def one_upload(base_url: str, data: bytes) -> tuple[str, int, str]:
    """POST, one PATCH with all of `data`, GET back: (url, PATCH status, SHA-256 read)."""
    with httpx.Client(base_url=base_url, headers=TUS, timeout=120) as http:
        url = create(http, len(data))
        response = http.patch(
            url,
            content=data,
            headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        if response.status_code != 204:
            return url, response.status_code, response.text
        got = http.get(url)
        return url, response.status_code, hashlib.sha256(got.content).hexdigest()


@pytest.fixture
def budget_server(
    backend: str, server_factory: Callable[..., ServerProcess]
) -> Iterator[Callable[..., ServerProcess]]:
    def start(*args: str) -> ServerProcess:
        return server_factory(extra_args=list(args))

    yield start


def test_40_concurrent_uploads_on_a_budget_of_under_5_parts_finish_byte_exact(
    backend: str, budget_server: Callable[..., ServerProcess]
) -> None:
    if backend == "s3-moto":
        pytest.skip("240 MiB through moto is slow; RGW and an operator's endpoint run it")
    budget = 24 * MiB  # 4 buffers of a 5 MiB part: 36 of the 40 requests wait in turn
    server = budget_server("--max-buffer-memory", str(budget))
    uploads = [os.urandom(6 * MiB) for _ in range(40)]  # a 5 MiB part and a 1 MiB part
    one_upload(server.base_url, uploads[0])  # warm: pools, imports, first connections
    with PeakRss(server.pid()) as memory, ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(lambda data: one_upload(server.base_url, data), uploads))
    for data, (url, status, digest) in zip(uploads, results, strict=True):
        assert status == 204, (url, status, digest)
        assert digest == hashlib.sha256(data).hexdigest(), url
    # the bound: the budget, plus what waiting requests queue before their sockets pause
    # (up to QUEUE_LIMIT and a read each), plus what 40 requests cost beside their bytes
    bound = budget + len(uploads) * (QUEUE_LIMIT + 256 * 1024) + 48 * MiB
    without_budget = len(uploads) * (P + MiB)
    print(
        f"RSS growth for 40 concurrent 6 MiB uploads on a {budget // MiB} MiB budget: "
        f"{memory.growth / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB; their parts alone "
        f"would be {without_budget / MiB:.0f} MiB)"
    )
    assert memory.growth < bound, f"RSS grew by {memory.growth / MiB:.1f} MiB"


def test_a_request_waiting_for_a_buffer_past_its_deadline_is_503_and_moves_nothing(
    budget_server: Callable[..., ServerProcess],
) -> None:
    server = budget_server("--max-buffer-memory", str(P), "--buffer-wait-timeout", "1")
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        holder_url = create(http, 2 * P)
        waiter_url = create(http, MiB)
        first = os.urandom(MiB)
        with RawConnection(server) as holder:
            # a request that took the only buffer (its first MiB arrived) and goes silent
            holder.send_head(
                "PATCH",
                path_of(holder_url),
                {
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(2 * MiB),
                },
            )
            holder.send(first)
            time.sleep(0.5)
            started = time.monotonic()
            response = http.patch(
                waiter_url,
                content=os.urandom(MiB),
                headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            )
            waited = time.monotonic() - started
            assert_error(response, 503, "ERR_UNAVAILABLE")
            assert int(response.headers["retry-after"]) > 0
            assert "none came free within 1 s" in response.text
            assert 0.9 < waited < 10
            assert offset_of(http, waiter_url) == 0
            # the holder goes on and finishes its request
            second = os.urandom(MiB)
            holder.send(second)
            answer = holder.read_response(timeout=30)
            assert answer.status_code == 204, answer.text
        assert offset_of(http, holder_url) == 2 * MiB
        # the buffer is free again: the refused request, sent again, goes through
        data = os.urandom(MiB)
        response = http.patch(
            waiter_url,
            content=data,
            headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert response.status_code == 204, response.text
        assert http.get(waiter_url).content == data
