"""What the server advertises and offers follows the configured store's capabilities
(PROTOCOL 3: "advertised only when they really work")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tusd_py.config import Settings
from tusd_py.http.app import build_app
from tusd_storage import Capability, FileStore

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


class StoreWithout(FileStore):
    """A file store that declares fewer capabilities than it has."""

    def __init__(self, root: Path, missing: set[Capability]) -> None:
        super().__init__(root)
        self.capabilities = frozenset(FileStore.capabilities - missing)


def client_for(tmp_path: Path, missing: set[Capability], **options: object) -> TestClient:
    settings = Settings(data_dir=tmp_path, **options)  # type: ignore[arg-type]
    store = StoreWithout(settings.uploads_dir, missing)
    return TestClient(build_app(settings, store=store), base_url="http://tus.test")


@pytest.fixture
def without_concatenation(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path, {Capability.CONCATENATION}) as client:
        yield client


def extensions(client: TestClient) -> list[str]:
    response = client.options("/files/")
    assert response.status_code == 200
    return response.headers["Tus-Extension"].split(",")


def test_a_full_store_advertises_every_extension(tmp_path: Path) -> None:
    with client_for(tmp_path, set()) as client:
        assert extensions(client) == [
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "expiration",
            "checksum",
            "termination",
            "concatenation",
            "concatenation-unfinished",
        ]


def test_a_store_without_concatenation_does_not_advertise_it(
    without_concatenation: TestClient,
) -> None:
    listed = extensions(without_concatenation)
    assert "concatenation" not in listed
    assert "concatenation-unfinished" not in listed
    assert "creation" in listed and "termination" in listed


@pytest.mark.parametrize("concat", ["partial", "final;/files/AAAAAAAAAAAAAAAAAAAAAA"])
def test_a_store_without_concatenation_refuses_upload_concat(
    without_concatenation: TestClient, tmp_path: Path, concat: str
) -> None:
    headers = {**TUS, "Upload-Concat": concat}
    if concat == "partial":
        headers["Upload-Length"] = "3"
    response = without_concatenation.post("/files/", headers=headers)
    assert response.status_code == 400, response.text
    assert response.text.startswith("ERR_EXTENSION_UNSUPPORTED:")
    assert "Location" not in response.headers
    assert list((tmp_path / "uploads").iterdir()) == []


def test_a_store_without_deferred_length_refuses_it_and_does_not_advertise_it(
    tmp_path: Path,
) -> None:
    with client_for(tmp_path, {Capability.DEFERRED_LENGTH}) as client:
        assert "creation-defer-length" not in extensions(client)
        response = client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
        assert response.status_code == 400
        assert response.text.startswith("ERR_EXTENSION_UNSUPPORTED:")
        # a known length still works
        assert client.post("/files/", headers={**TUS, "Upload-Length": "3"}).status_code == 201


def test_a_store_without_range_reads_serves_whole_bodies(tmp_path: Path) -> None:
    with client_for(tmp_path, {Capability.RANGE_READS}) as client:
        location = client.post("/files/", headers={**TUS, "Upload-Length": "6"}).headers["Location"]
        client.patch(location, content=b"abcdef", headers={**OCTET, "Upload-Offset": "0"})
        response = client.get(location, headers={"Range": "bytes=2-3"})
        assert response.status_code == 200
        assert response.content == b"abcdef"
        assert response.headers["Accept-Ranges"] == "none"


def test_expiration_is_advertised_only_when_uploads_expire(tmp_path: Path) -> None:
    with client_for(tmp_path, set(), expiration=0) as client:
        assert "expiration" not in extensions(client)
