"""The client examples run as their READMEs say: examples/client-script and
examples/fastapi-mount."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, TUS, ServerProcess, free_port
from tusd_py.client import TusClient, UploadFailed

pytestmark = pytest.mark.any_backend

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


def test_the_client_script_prints_progress_and_the_url(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "notes.txt"
    data = os.urandom(3 * 1024 * 1024 + 1)
    source.write_bytes(data)
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples/client-script/upload.py"), server.files_url,
         str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"notes.txt: 0% (0 of {len(data)} bytes)"
    assert lines[-2] == f"notes.txt: 100% ({len(data)} of {len(data)} bytes)"
    url = lines[-1]
    assert httpx.get(url, timeout=30).content == data
    assert (tmp_path / "cache" / "tusd-py" / "uploads.sqlite3").exists()  # the resume store


@pytest.fixture
def fastapi_app(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fastapi_mount.app:app", "--port", str(port)],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO_ROOT / "examples/fastapi-mount"),
                "FASTAPI_MOUNT_DATA_DIR": str(tmp_path / "data"),
            },
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/whoami", timeout=1)
            break
        except httpx.HTTPError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    try:
        yield base
    finally:
        process.terminate()
        process.wait(15)


def test_tusd_py_mounted_in_fastapi_uses_the_apps_authentication(fastapi_app: str) -> None:
    assert httpx.get(f"{fastapi_app}/whoami", headers=ALICE).json()["user"] == "alice"
    assert httpx.get(f"{fastapi_app}/whoami").status_code == 401
    endpoint = f"{fastapi_app}/uploads/files/"
    data = hashlib.sha256(b"x").digest() * 1000
    with TusClient(headers=ALICE, resume_store=None) as alice:
        import io

        result = alice.upload(io.BytesIO(data), endpoint)
        assert result.url.startswith(endpoint)  # the Location knows where it is mounted
        assert alice.status(result.url).offset == len(data)
    anonymous = httpx.post(endpoint, headers={**TUS, "Upload-Length": "5"})
    assert anonymous.status_code == 401
    assert "ERR_SIGN_IN" in anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    with TusClient(headers=BOB, resume_store=None) as bob:  # not his: as if it did not exist
        with pytest.raises(UploadFailed) as hidden:
            bob.status(result.url)
        assert hidden.value.status == 404
    assert httpx.get(result.url, headers=ALICE).content == data
