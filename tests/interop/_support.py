"""Helpers for the real-client interop tests (tus-js-client through node, tuspy in-process)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TUS, ServerProcess, missing_service, node_available

MiB = 1024 * 1024
JS_DIR = Path(__file__).resolve().parent / "js"
UPLOAD_SCRIPT = JS_DIR / "upload.mjs"


# --- files and bytes ----------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> str:
    """Writes `size` random bytes to `path`; returns their sha256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 4 * MiB))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_of_get(url: str, timeout: float = 60) -> tuple[int, str, httpx.Headers]:
    """GETs `url` streaming; returns (status, sha256 of the body, headers)."""
    digest = hashlib.sha256()
    with httpx.stream("GET", url, headers=TUS, timeout=timeout) as response:
        for block in response.iter_bytes(1 * MiB):
            digest.update(block)
        return response.status_code, digest.hexdigest(), response.headers


def head(url: str, locked_patience: float = 4.0) -> httpx.Response:
    """HEAD; a 423 (upload still held by a request that just died) is retried for a few
    seconds, as tus-js-client's default retry budget would."""
    deadline = time.monotonic() + locked_patience
    while True:
        response = httpx.head(url, headers=TUS, timeout=10)
        if response.status_code != 423 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def head_offset(url: str) -> int:
    response = head(url)
    assert response.status_code == 200, (
        f"HEAD {url} -> {response.status_code} {response.headers} {response.text!r}"
    )
    assert "Upload-Offset" in response.headers, (
        f"HEAD {url}: no Upload-Offset in {response.headers}"
    )
    return int(response.headers["Upload-Offset"])


def wait_until_assembled(url: str, size: int, timeout: float = 30) -> httpx.Response:
    """A final (concatenated) upload may be assembled after its POST answered: HEAD omits
    Upload-Offset until it is done (tus concatenation). Waits for Upload-Offset == size."""
    deadline = time.monotonic() + timeout
    while True:
        response = head(url)
        assert response.status_code == 200, (
            f"HEAD {url} -> {response.status_code} {response.headers} {response.text!r}"
        )
        if "Upload-Offset" in response.headers:
            assert int(response.headers["Upload-Offset"]) == size, response.headers
            return response
        assert time.monotonic() < deadline, f"final upload {url} not assembled after {timeout}s"
        time.sleep(0.1)


def decode_metadata(header: str) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        result[key] = base64.b64decode(value).decode() if value else None
    return result


def assert_download_matches(url: str, size: int, sha256: str) -> httpx.Headers:
    status, digest, headers = sha256_of_get(url)
    assert status == 200, f"GET {url} -> {status} {headers}"
    assert int(headers["Content-Length"]) == size
    assert digest == sha256, "downloaded bytes differ from the uploaded file"
    return headers


def restart(server: ServerProcess, timeout: float = 60.0) -> None:
    """Starts `server` again after kill(): same port, data dir and database (already migrated,
    so no `migrate` runs first: the crashed server comes back as it is)."""
    assert server.process is not None and server.process.poll() is not None, "kill() it first"
    server.launch(timeout)


# --- tus-js-client through node -----------------------------------------------------------


def require_js_client() -> str:
    """Returns the node executable, or skips/fails (TUSD_TEST_REQUIRE_SERVICES) when node or
    the npm install in tests/interop/js is missing."""
    if not node_available():
        missing_service("node is not installed")
    installed = JS_DIR / "node_modules" / "tus-js-client" / "package.json"
    if not installed.is_file() and shutil.which("npm"):
        # the README's one test command installs the pinned client itself
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=False,
            timeout=600,
        )
    if not installed.is_file():
        missing_service(f"tus-js-client is not installed: run `npm ci` in {JS_DIR}")
    node = shutil.which("node")
    assert node is not None
    return node


class NodeUpload:
    """One run of js/upload.mjs in the background; stderr events are collected as they come."""

    def __init__(self, node: str, options: dict[str, Any]) -> None:
        self.options = options
        self.process = subprocess.Popen(
            [node, str(UPLOAD_SCRIPT), json.dumps(options)],
            cwd=JS_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stdout = b""
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    def describe(self) -> str:
        tail = "\n".join(self.stderr_lines[-40:])
        return f"node upload.mjs {json.dumps(self.options)}\n--- last stderr lines ---\n{tail}"

    def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {name!r} event within {timeout}s\n{self.describe()}"
            try:
                event = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(
                    f"upload.mjs exited (rc={self.process.wait()}) before a {name!r} event\n"
                    + self.describe()
                )
            if event.get("event") == name:
                return event
            if event.get("event") == "error":
                raise AssertionError(
                    f"upload.mjs failed before {name!r}: {event}\n{self.describe()}"
                )

    def result(self, timeout: float = 120) -> dict[str, Any]:
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"upload.mjs did not finish in {timeout}s\n{self.describe()}"
            ) from None
        for reader in self._readers:
            reader.join(10)
        assert rc == 0, f"upload.mjs exited with {rc}\n{self.describe()}"
        result: dict[str, Any] = json.loads(self._stdout)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def run_js_upload(node: str, options: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    return NodeUpload(node, options).result(timeout)


def requests_of(result: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [r for r in result["requests"] if r["method"] == method]


def assert_patches_acknowledged_fully(result: dict[str, Any]) -> None:
    """Every PATCH answered 204 and moved the offset by exactly its body size."""
    for patch in requests_of(result, "PATCH"):
        assert patch["status"] == 204, patch
        assert patch["responseOffset"] == patch["uploadOffset"] + patch["bodySize"], patch


def stored_js_upload_urls(url_storage: Path) -> list[dict[str, Any]]:
    """Entries of tus-js-client's FileUrlStorage file."""
    data: dict[str, dict[str, Any]] = json.loads(url_storage.read_text())
    return [value for key, value in data.items() if key.startswith("tus::")]
