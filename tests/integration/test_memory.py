"""Memory must not grow with upload size: a large PATCH is streamed, never held."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import TUS, ServerProcess

MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_a_512_mib_patch_raises_server_rss_by_less_than_48_mib(server: ServerProcess) -> None:
    size = 512 * MiB
    created = httpx.post(server.files_url, headers={**TUS, "Upload-Length": str(size)})
    url = created.headers["Location"]
    block = os.urandom(MiB)
    baseline = rss_bytes(server.pid())
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(server.pid()))
            time.sleep(0.01)

    def body() -> Iterator[bytes]:
        for _ in range(size // MiB):
            yield block

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = httpx.patch(
            url,
            content=body(),
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(size),
            },
            timeout=300,
        )
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == str(size)
    growth = peak - baseline
    assert growth < 48 * MiB, f"server RSS grew by {growth / MiB:.1f} MiB for a 512 MiB PATCH"
