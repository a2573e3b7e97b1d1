"""Uppy with @uppy/tus in headless Chromium: the page of `tusd-py serve --demo`, as a person
would use it (files chosen on the Dashboard's input, the Upload button pressed).

js/browser.mjs drives Debian's chromium through playwright-core and reports the page's
upload events. Needs node, `npm ci` in tests/interop/js and chromium
(`apt-get install chromium`); without them the tests skip (fail with
TUSD_TEST_REQUIRE_SERVICES=1, as in CI).
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ServerProcess, missing_service, stored_upload_ids
from tests.interop._support import (
    JS_DIR,
    MiB,
    assert_download_matches,
    require_js_client,
    restart,
    write_random_file,
)
from tusd_py.config import Settings

pytestmark = [pytest.mark.node, pytest.mark.any_backend, pytest.mark.timeout(240)]

BROWSER_SCRIPT = JS_DIR / "browser.mjs"
#: the demo page's tus chunk size (examples/browser-demo/src/demo.js)
CHUNK = 2 * MiB


@dataclass(frozen=True)
class Browser:
    node: str
    chromium: str


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str


@pytest.fixture(scope="module")
def browser() -> Browser:
    node = require_js_client()
    driver = JS_DIR / "node_modules" / "playwright-core" / "package.json"
    if not driver.is_file() and shutil.which("npm"):
        # node_modules from before playwright-core joined package.json: bring it up to date
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=False,
            timeout=600,
        )
    if not driver.is_file():
        missing_service(f"playwright-core is not installed: run `npm ci` in {JS_DIR}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing_service("chromium is not installed (apt-get install chromium)")
    assert chromium is not None
    return Browser(node, chromium)


def make_file(directory: Path, name: str, size: int) -> Source:
    path = directory / name
    return Source(path, size, write_random_file(path, size))


class BrowserRun:
    """One run of js/browser.mjs in the background; its stderr events arrive as they come."""

    def __init__(
        self,
        browser: Browser,
        page_url: str,
        files: list[Path],
        timeout: float = 120,
        throttle: int | None = None,
    ) -> None:
        command = [
            browser.node,
            str(BROWSER_SCRIPT),
            "--page",
            page_url,
            "--chromium",
            browser.chromium,
            "--timeout",
            str(timeout),
        ]
        if throttle is not None:
            command += ["--throttle", str(throttle)]
        command += [str(path) for path in files]
        self.command = command
        self.process = subprocess.Popen(
            command, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.stderr_lines: list[str] = []
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
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
                continue  # the browser's own chatter
            if isinstance(event, dict):
                self._events.put(event)
        self._events.put(None)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    def describe(self) -> str:
        tail = "\n".join(self.stderr_lines[-30:])
        return f"{' '.join(self.command)}\n--- last stderr lines ---\n{tail}"

    def wait_for(
        self, wanted: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
    ) -> dict[str, Any]:
        """The first event from now on that `wanted` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what} within {timeout}s\n{self.describe()}"
            try:
                event = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"browser.mjs ended before {what}\n{self.describe()}")
            if wanted(event):
                return event
            if event.get("event") == "error" or event.get("type") == "error":
                raise AssertionError(f"failure before {what}: {event}\n{self.describe()}")

    def result(self, timeout: float = 180) -> dict[str, Any]:
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"browser.mjs ran over {timeout}s\n{self.describe()}") from None
        for reader in self._readers:
            reader.join(10)
        assert rc == 0, f"browser.mjs exited with {rc}\n{self.describe()}"
        result: dict[str, Any] = json.loads(self._stdout)
        return result

    def kill(self) -> None:
        """Ends the driver; its browser, a child of node, goes with the pipe it loses."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def events_of(result: dict[str, Any], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        event
        for event in result["events"]
        if event["type"] == kind and (name is None or event["name"] == name)
    ]


def sha256_of_plain_get(url: str) -> tuple[httpx.Response, str]:
    """GET as a browser following the page's link would: no tus headers at all."""
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        for block in response.iter_bytes(MiB):
            digest.update(block)
    return response, digest.hexdigest()


def assert_no_page_errors(result: dict[str, Any]) -> None:
    assert result["pageErrors"] == [], result["pageErrors"]
    assert result["consoleErrors"] == [], result["consoleErrors"]


@pytest.mark.parametrize("base_path", ["/", "/demo/"])
def test_demo_needs_its_own_paths(base_path: str) -> None:
    """The page is at / and its files under /demo/: a base path there would hide them."""
    with pytest.raises(ValueError, match="--demo needs a --base-path other than"):
        Settings(demo=True, base_path=base_path)


def test_page_and_its_files(server_factory: Any) -> None:
    """Without --demo there is no page; with it, the page names the tus endpoint and its
    versioned files, which are served with their types and kept by caches for good."""
    plain_server: ServerProcess = server_factory()
    assert httpx.get(f"{plain_server.base_url}/").status_code == 404
    assert httpx.get(f"{plain_server.base_url}/demo/demo.js").status_code == 404
    plain_server.stop()

    server: ServerProcess = server_factory(["--demo", "--base-path", "/uploads"])
    page = httpx.get(f"{server.base_url}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert '<meta name="tus-endpoint" content="/uploads/">' in page.text
    assert re.search(r"%[A-Z_]+%", page.text) is None, "a placeholder was left in the page"

    for name, media_type in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
        prefix = f"/demo/{name}?v="
        start = page.text.index(prefix)
        asset_url = page.text[start : page.text.index('"', start)]
        asset = httpx.get(server.base_url + asset_url)
        assert asset.status_code == 200, asset_url
        assert asset.headers["content-type"] == f"{media_type}; charset=utf-8"
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert len(asset.content) > 10_000  # the real bundle, not a stub
        again = httpx.get(
            server.base_url + asset_url, headers={"If-None-Match": asset.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        # an unversioned URL gets the same bytes, but no cache may keep them for long
        plain = httpx.get(f"{server.base_url}/demo/{name}")
        assert plain.content == asset.content
        assert plain.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{server.base_url}/demo/nothing.js").status_code == 404


def test_uppy_uploads_three_files(server_factory: Any, browser: Browser, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(["--demo"])
    sources = [
        make_file(tmp_path, "tiny.bin", 1024),
        make_file(tmp_path, "small.bin", 3 * MiB),
        make_file(tmp_path, "larger.bin", 20 * MiB),
    ]

    result = BrowserRun(browser, f"{server.base_url}/", [s.path for s in sources]).result()

    assert result["status"] == "success", json.dumps(result)[:4000]
    assert_no_page_errors(result)
    assert len(events_of(result, "success")) == 3
    assert events_of(result, "error") == []
    assert len(stored_upload_ids(server)) == 3, "one upload per file, no more"

    links = {link["text"]: link for link in result["links"]}
    for source in sources:
        name = source.path.name
        (success,) = events_of(result, "success", name)
        url = success["url"]
        assert url.startswith(server.files_url), url
        assert success["bytesTotal"] == source.size

        # progress came, grew and reached the whole file
        progress = [e["bytesUploaded"] for e in events_of(result, "progress", name)]
        assert progress, f"no progress events for {name}"
        assert progress == sorted(progress), f"{name}: progress went back: {progress}"
        assert progress[-1] == source.size
        if source.size > CHUNK:
            steps = len(set(progress))
            assert steps >= source.size // CHUNK, f"{name}: only {steps} progress steps"

        # the stored bytes are the file's
        assert_download_matches(url, source.size, source.sha256)

        # and so are those behind the page's download link, with a plain GET
        link = links[name]
        assert link["href"] == url
        assert link["download"] == name
        response, digest = sha256_of_plain_get(link["href"])
        assert response.status_code == 200, response.headers
        assert int(response.headers["content-length"]) == source.size
        assert digest == source.sha256


def test_uppy_upload_survives_server_restart(
    server_factory: Any, browser: Browser, tmp_path: Path
) -> None:
    """The server is SIGKILLed while the browser is sending, and started again on the same
    port and state. Uppy's tus plugin retries, asks the server where to go on and finishes
    the same upload."""
    server: ServerProcess = server_factory(["--demo"])
    source = make_file(tmp_path, "restart.bin", 48 * MiB)
    kill_at = 12 * MiB
    # DevTools throttling keeps the upload running for several seconds, so the kill lands in
    # the middle of it however fast the machine is.
    run = BrowserRun(browser, f"{server.base_url}/", [source.path], timeout=150, throttle=8 * MiB)
    try:
        seen = run.wait_for(
            lambda e: e.get("type") == "progress" and e["bytesUploaded"] >= kill_at,
            f"progress past {kill_at} bytes",
        )
        server.kill()
        assert seen["url"], f"no upload URL yet at {seen}"
        assert seen["bytesUploaded"] <= source.size - 4 * CHUNK, (
            f"the upload was nearly done before the kill: {seen}"
        )
        upload_id = urlsplit(seen["url"]).path.rsplit("/", 1)[-1]
        restart(server)
        result = run.result()
    finally:
        run.kill()

    assert result["status"] == "success", json.dumps(result["events"][-20:])
    assert result["pageErrors"] == [], result["pageErrors"]
    # The browser logs each request that found no server: proof that the kill hit the upload.
    # Failed requests (a 423 from an upload still locked, say) are all it may log: the client
    # retries them; a script error would be another message.
    failed = result["consoleErrors"]
    assert any(text.startswith("Failed to load resource: net::ERR_") for text in failed), (
        f"no request failed while the server was down: {failed}"
    )
    assert all(text.startswith("Failed to load resource:") for text in failed), failed
    (success,) = events_of(result, "success")
    url = success["url"]
    assert url == seen["url"], "the upload went on at the same URL, not in a new upload"
    assert_download_matches(url, source.size, source.sha256)
    assert stored_upload_ids(server) == {upload_id}, "exactly one upload holds the file"
