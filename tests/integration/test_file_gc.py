"""`tusd-py gc` on the file store: files no upload record keeps (a server killed between
creating an upload's file and writing its row) are removed once old enough; files of live
uploads, young files (a creation in flight) and names that are not upload ids stay."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import bytes_file, create, patch, upload_all, uploads_dir

pytestmark = [pytest.mark.file_store, pytest.mark.parametrize("backend", ["sqlite"])]

TUS = {"Tus-Resumable": "1.0.0"}
HOUR = 3600


def make_old(path: Path, seconds: float = 2 * HOUR) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def run_gc(server: ServerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tusd_py", "gc", "--data-dir", str(server.data_dir), *extra]
    if server.database_url:
        cmd += ["--database-url", server.database_url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_gc_removes_old_orphan_files_and_keeps_the_rest(server_factory) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory()
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        receiving = create(client, 10)
        assert patch(client, receiving, 0, b"abcde").status_code == 204
        finished = create(client, 3)
        upload_all(client, finished, b"xyz")
    # live files as old as the orphan: only the database's answer may protect them
    for url in (receiving, finished):
        make_old(bytes_file(server, url))
    directory = uploads_dir(server)
    old_orphan = directory / secrets.token_urlsafe(16)  # the file of a row never written
    old_orphan.touch()
    make_old(old_orphan)
    young_orphan = directory / secrets.token_urlsafe(16)  # a creation in flight
    young_orphan.touch()
    stranger = directory / "notes.txt"  # not an upload id: not the store's to judge
    stranger.write_text("kept by the operator")
    make_old(stranger)

    result = run_gc(server, "--orphan-age", "60")

    assert result.returncode == 0, result.stderr
    assert not old_orphan.exists()
    assert young_orphan.exists()
    assert stranger.read_text() == "kept by the operator"
    assert bytes_file(server, receiving).read_bytes() == b"abcde"
    assert bytes_file(server, finished).read_bytes() == b"xyz"
    with httpx.Client(headers=TUS, timeout=30) as client:
        head = client.head(receiving)
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "5"
        assert patch(client, receiving, 5, b"fghij").status_code == 204
        assert client.get(receiving).content == b"abcdefghij"
        assert client.get(finished).content == b"xyz"


def test_gc_removes_the_file_of_a_terminated_upload_left_behind(server_factory) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory()
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as client:
        url = create(client, 10)
        path = bytes_file(server, url)
        assert client.delete(url).status_code == 204
        assert not path.exists()
        path.write_bytes(b"left")  # as if the removal after the row's update had failed
        make_old(path)

        result = run_gc(server, "--orphan-age", "60")

        assert result.returncode == 0, result.stderr
        assert not path.exists()
        assert client.head(url).status_code in (404, 410)
