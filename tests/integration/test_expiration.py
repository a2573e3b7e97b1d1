"""expiration: PROTOCOL.md item 14 and the wire contract's sweeper and `tusd-py gc`."""

from __future__ import annotations

import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    IMF_FIXDATE,
    assert_error,
    bytes_file,
    create,
    patch,
    upload_all,
    wait_for,
)

TUS = {"Tus-Resumable": "1.0.0"}


def expires_at(response: httpx.Response) -> float:
    value = response.headers["upload-expires"]
    assert IMF_FIXDATE.match(value), f"not an IMF-fixdate: {value!r}"
    return parsedate_to_datetime(value).timestamp()


@pytest.fixture
def hour_server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(extra_args=["--expiration", "3600"])  # type: ignore[no-any-return]


@pytest.fixture
def short_server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(extra_args=["--expiration", "2"])  # type: ignore[no-any-return]


def tus_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=TUS, timeout=30)


def test_creation_response_carries_upload_expires(hour_server: ServerProcess) -> None:
    with tus_client(hour_server) as client:
        before = time.time()
        response = client.post("/files/", headers={"Upload-Length": "10"})
        assert response.status_code == 201
        assert before + 3600 - 2 <= expires_at(response) <= time.time() + 3600 + 2


def test_patch_response_carries_upload_expires(hour_server: ServerProcess) -> None:
    with tus_client(hour_server) as client:
        url = create(client, 10)
        response = patch(client, url, 0, b"abc")
        assert response.status_code == 204
        assert abs(expires_at(response) - (time.time() + 3600)) < 5


def test_head_carries_upload_expires_while_unfinished(hour_server: ServerProcess) -> None:
    with tus_client(hour_server) as client:
        url = create(client, 10)
        response = client.head(url)
        assert response.status_code == 200
        assert abs(expires_at(response) - (time.time() + 3600)) < 5


def test_finished_upload_carries_no_upload_expires(hour_server: ServerProcess) -> None:
    with tus_client(hour_server) as client:
        url = create(client, 3)
        final = patch(client, url, 0, b"abc")
        assert final.status_code == 204
        assert "upload-expires" not in final.headers
        assert "upload-expires" not in client.head(url).headers


def test_no_upload_expires_when_expiration_is_off(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--expiration", "0"])
    with tus_client(server) as client:
        created = client.post("/files/", headers={"Upload-Length": "10"})
        assert "upload-expires" not in created.headers
        url = created.headers["location"]
        assert "upload-expires" not in patch(client, url, 0, b"abc").headers
        assert "upload-expires" not in client.head(url).headers


def test_activity_extends_the_deadline(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--expiration", "3"])
    with tus_client(server) as client:
        start = time.monotonic()
        active_response = client.post("/files/", headers={"Upload-Length": "10"})
        idle = create(client, 10)
        active = active_response.headers["location"]
        first_deadline = expires_at(active_response)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - start)))
        touched = patch(client, active, 0, b"abc")
        assert touched.status_code == 204
        assert expires_at(touched) > first_deadline
        time.sleep(max(0.0, 3.8 - (time.monotonic() - start)))
        # The idle twin proves the first deadline has passed; the touched one lives on.
        assert client.head(idle).status_code == 410
        head = client.head(active)
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "3"


def test_expired_upload_answers_410_to_head(short_server: ServerProcess) -> None:
    with tus_client(short_server) as client:
        url = create(client, 10)
        time.sleep(3)
        response = client.head(url)
        assert response.status_code == 410
        assert "upload-offset" not in response.headers


def test_expired_upload_answers_410(short_server: ServerProcess) -> None:
    with tus_client(short_server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abc").status_code == 204
        time.sleep(3)
        for method in ("PATCH", "GET", "DELETE"):
            response = (
                patch(client, url, 3, b"def") if method == "PATCH" else client.request(method, url)
            )
            assert response.status_code == 410, (method, response.status_code, response.text)
            assert_error(response, 410, "ERR_UPLOAD_GONE")


def test_sweeper_removes_the_bytes_file_of_an_expired_upload(short_server: ServerProcess) -> None:
    with tus_client(short_server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abcde").status_code == 204
        path = bytes_file(short_server, url)
        assert path.exists()
        assert wait_for(lambda: not path.exists(), timeout=8), f"{path} still exists after expiry"
        assert client.head(url).status_code == 410


def test_finished_upload_does_not_expire(short_server: ServerProcess) -> None:
    with tus_client(short_server) as client:
        url = create(client, 5)
        upload_all(client, url, b"hello")
        time.sleep(3.5)
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "5"
        assert client.get(url).content == b"hello"
        assert bytes_file(short_server, url).exists()


def run_gc(server: ServerProcess, *extra: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "tusd_py", "gc", "--data-dir", str(server.data_dir), *extra]
    if server.database_url:
        cmd += ["--database-url", server.database_url]
    return subprocess.run(cmd, capture_output=True, timeout=60)


def test_gc_command_reclaims_an_expired_upload(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--expiration", "2"])
    with tus_client(server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abcde").status_code == 204
    # Stop the server so that only the gc command can reclaim the upload.
    server.stop()
    path = bytes_file(server, url)
    assert path.exists()
    time.sleep(2.5)
    result = run_gc(server)
    assert result.returncode == 0, result.stderr.decode()
    assert not path.exists()
    again = server_factory(
        extra_args=["--expiration", "2"], data_dir=server.data_dir, database_url=server.database_url
    )
    with tus_client(again) as client:
        moved = url.replace(f":{server.port}/", f":{again.port}/")
        assert client.head(moved).status_code == 410


def test_gc_command_keeps_uploads_that_have_not_expired(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--expiration", "3600"])
    with tus_client(server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abcde").status_code == 204
        finished = create(client, 3)
        upload_all(client, finished, b"xyz")
    server.stop()
    result = run_gc(server)
    assert result.returncode == 0, result.stderr.decode()
    assert bytes_file(server, url).exists()
    assert bytes_file(server, finished).exists()
    again = server_factory(
        extra_args=["--expiration", "3600"],
        data_dir=server.data_dir,
        database_url=server.database_url,
    )
    with tus_client(again) as client:
        moved = url.replace(f":{server.port}/", f":{again.port}/")
        assert client.head(moved).headers["upload-offset"] == "5"
        upload_all(client, moved, b"abcdefghij", offset=5)
        assert client.get(moved).content == b"abcdefghij"


def test_gc_command_accepts_the_expiration_option(server_factory) -> None:  # type: ignore[no-untyped-def]
    # wire contract: `tusd-py gc --data-dir D [--database-url URL] [--expiration N]`
    server = server_factory(extra_args=["--expiration", "3600"])
    with tus_client(server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abc").status_code == 204
    server.stop()
    result = run_gc(server, "--expiration", "3600")
    assert result.returncode == 0, result.stderr.decode()
    assert bytes_file(server, url).exists()


def test_gc_beside_a_running_server_leaves_it_no_stale_state(server_factory) -> None:  # type: ignore[no-untyped-def]
    """gc reclaims an idle upload while the server runs and has the upload's state in
    memory: the server must learn of it (gc takes the upload's lock, and the server's
    memory of an upload lasts only while no other process has held it), so the next HEAD
    and PATCH answer that the upload is gone instead of writing into a removed file."""
    server = server_factory()  # no expiry of its own: only gc's --max-idle reclaims
    with tus_client(server) as client:
        url = create(client, 10)
        assert patch(client, url, 0, b"abcde").status_code == 204
        assert client.head(url).headers["upload-offset"] == "5"  # in the server's memory now
        time.sleep(1.5)
        result = run_gc(server, "--max-idle", "1")
        assert result.returncode == 0, result.stderr.decode()
        assert b"reclaimed 1 expired upload" in result.stdout
        assert not bytes_file(server, url).exists()
        assert client.head(url).status_code in (404, 410)
        response = patch(client, url, 5, b"fghij")
        assert response.status_code in (404, 410), response.text
