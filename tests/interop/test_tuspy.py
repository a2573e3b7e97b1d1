"""tuspy (the official Python tus client, `tusclient`) against a real tusd-py server, on SQLite
and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tusclient.request
from tusclient import client
from tusclient.fingerprint.fingerprint import Fingerprint
from tusclient.storage.filestorage import FileStorage

from tests.interop._support import (
    MiB,
    assert_download_matches,
    decode_metadata,
    head,
    head_offset,
    write_random_file,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.s3_too]

CHUNK = 1 * MiB
SIZE = 10 * MiB + 4321  # the last chunk is a short one


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "tuspy-source.bin"
    return path, write_random_file(path, SIZE)


class PatchRecorder:
    """Records the Upload-Offset and status of every PATCH tuspy sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        real_patch = tusclient.request.requests.patch

        def patch(url: str, **kwargs: Any) -> Any:
            response = real_patch(url, **kwargs)
            self.calls.append((int(kwargs["headers"]["upload-offset"]), response.status_code))
            return response

        monkeypatch.setattr(tusclient.request.requests, "patch", patch)

    @property
    def offsets(self) -> list[int]:
        return [offset for offset, _ in self.calls]


def test_chunked_upload_roundtrip(
    shared_server: Any, source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = shared_server
    path, sha256 = source
    recorder = PatchRecorder(monkeypatch)
    metadata = {"filename": "tuspy source.bin", "filetype": "application/octet-stream"}

    uploader = client.TusClient(server.files_url).uploader(
        str(path), chunk_size=CHUNK, metadata=metadata
    )
    uploader.upload()

    url = uploader.url
    assert url is not None and url.startswith(server.files_url), url
    assert uploader.offset == SIZE
    assert recorder.offsets == list(range(0, SIZE, CHUNK))
    assert {status for _, status in recorder.calls} == {204}

    info = head(url)
    assert info.status_code == 200
    assert int(info.headers["Upload-Offset"]) == SIZE
    assert int(info.headers["Upload-Length"]) == SIZE
    assert decode_metadata(info.headers["Upload-Metadata"]) == metadata

    assert_download_matches(url, SIZE, sha256)


def test_upload_with_sha1_checksums(shared_server: Any, source: tuple[Path, str]) -> None:
    """upload_checksum=True: every PATCH carries `Upload-Checksum: sha1 ...` (and tuspy sends
    an empty Upload-Metadata header when there is no metadata)."""
    server = shared_server
    path, sha256 = source

    uploader = client.TusClient(server.files_url).uploader(
        str(path), chunk_size=CHUNK, upload_checksum=True
    )
    uploader.upload()

    assert uploader.offset == SIZE
    assert uploader.url is not None
    assert_download_matches(uploader.url, SIZE, sha256)


def test_resume_from_url_storage(
    shared_server: Any,
    source: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = shared_server
    path, sha256 = source
    tus = client.TusClient(server.files_url)
    storage_path = tmp_path / "tuspy-urls.json"
    stop_at = 4 * CHUNK

    storage = FileStorage(str(storage_path))
    first = tus.uploader(str(path), chunk_size=CHUNK, store_url=True, url_storage=storage)
    first.upload(stop_at=stop_at)
    url = first.url
    assert url is not None
    assert first.offset == stop_at
    storage.close()

    with open(path, "rb") as stream:
        key = Fingerprint().get_fingerprint(stream)
    storage = FileStorage(str(storage_path))
    assert storage.get_item(key) == url

    offset_before = head_offset(url)
    assert offset_before == stop_at > 0

    recorder = PatchRecorder(monkeypatch)
    second = tus.uploader(str(path), chunk_size=CHUNK, store_url=True, url_storage=storage)
    assert second.url == url, "the new uploader must take the stored URL"
    assert second.offset == stop_at, "the new uploader must start at the server's offset"
    second.upload()
    storage.close()

    assert second.url == url
    assert second.offset == SIZE
    assert recorder.offsets == list(range(stop_at, SIZE, CHUNK))
    assert {status for _, status in recorder.calls} == {204}
    assert head_offset(url) == SIZE
    assert_download_matches(url, SIZE, sha256)
