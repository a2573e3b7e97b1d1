"""Our client against another tus server: @tus/server (Node.js, file store), for the core
protocol and the extensions it offers. The client must learn from OPTIONS what the server
does not do (no checksums here) and still upload, resume and download."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port, missing_service
from tests.flaky_proxy import FlakyProxy
from tusd_py.client import Cancelled, ResumeStore, RetryPolicy, TusClient, UploadOptions

PEERS = REPO_ROOT / "bench" / "peers"
MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(max_retries=30, first_delay=0.05, max_delay=0.5)


class TusNode:
    """@tus/server on a port of its own; started again on the same files if it died (it
    can crash on a request its client aborted: "ReadableStream is already closed" in
    undici, seen with @tus/server 2.4 on Node 20; in production a supervisor restarts it)."""

    def __init__(self, node: str, directory: Path) -> None:
        self.node = node
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def ensure_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self.restarts += 1
        log = self.directory / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [self.node, "tus-node-server.mjs", str(self.port), str(self.directory / "files")],
                cwd=PEERS,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.options(f"{self.url}/files", timeout=1)
                return
            except httpx.HTTPError:
                assert self.process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def tus_node(tmp_path: Path) -> Iterator[TusNode]:
    node = shutil.which("node")
    if node is None:
        missing_service("node is not installed")
    if not (PEERS / "node_modules" / "@tus" / "server").is_dir():
        if shutil.which("npm") is None:
            missing_service("npm is not installed")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PEERS,
            check=True,
            timeout=600,
        )
    server = TusNode(str(node), tmp_path)
    server.ensure_running()
    try:
        yield server
    finally:
        server.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_uploads_to_tus_node_without_checksums_and_reads_back(
    tus_node: TusNode, tmp_path: Path
) -> None:
    source = tmp_path / "a.bin"
    data = os.urandom(8 * MiB + 3)
    source.write_bytes(data)
    with TusClient(resume_store=None, retry=FAST_RETRY) as client:
        capabilities = client.capabilities(f"{tus_node.url}/files")
        assert "checksum" not in capabilities.extensions  # so none is sent
        result = client.upload(
            source,
            f"{tus_node.url}/files",
            UploadOptions(chunk_size=3 * MiB, metadata={"filename": "a.bin"}, parallel=4),
        )
        assert result.partials == () or "concatenation" in capabilities.extensions
        info = client.status(result.url)
        assert (info.offset, info.length) == (len(data), len(data))
        assert info.metadata["filename"] == "a.bin"
        target = tmp_path / "back.bin"
        client.download(result.url, target)
    assert sha256(target.read_bytes()) == sha256(data)


def test_a_cancelled_upload_to_tus_node_resumes(tus_node: TusNode, tmp_path: Path) -> None:
    source = tmp_path / "b.bin"
    data = os.urandom(24 * MiB)
    source.write_bytes(data)
    store = ResumeStore(tmp_path / "resume.sqlite3")
    stop = threading.Event()
    with FlakyProxy(tus_node.port, rate=16 * MiB) as line:
        endpoint = f"{line.url}/files"
        with TusClient(resume_store=store, retry=FAST_RETRY) as client:
            with pytest.raises(Cancelled):
                client.upload(
                    source,
                    endpoint,
                    UploadOptions(chunk_size=2 * MiB),
                    on_progress=lambda done, _: stop.set() if done >= 6 * MiB else None,
                    cancel=stop,
                )
            tus_node.ensure_running()
            result = client.upload(source, endpoint)
            assert result.resumed_from >= 4 * MiB
            got = httpx.get(result.url.replace(line.url, tus_node.url), timeout=30)
    assert sha256(got.content) == sha256(data)
