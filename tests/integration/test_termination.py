"""termination: PROTOCOL.md item 17."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    assert_error,
    bytes_file,
    create,
    offset_of,
    patch,
    upload_all,
)

pytestmark = pytest.mark.s3_too


def test_delete_answers_204_with_tus_resumable(client: httpx.Client) -> None:
    url = create(client, 10)
    response = client.delete(url)
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.content == b""


@pytest.mark.file_store
def test_delete_frees_the_bytes_file(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abcde").status_code == 204
    assert bytes_file(server, url).exists()
    assert client.delete(url).status_code == 204
    assert not bytes_file(server, url).exists()


def test_head_after_delete_is_410(client: httpx.Client) -> None:
    url = create(client, 10)
    assert client.delete(url).status_code == 204
    response = client.head(url)
    assert response.status_code == 410
    assert "upload-offset" not in response.headers


def test_requests_after_delete_are_410(client: httpx.Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abc").status_code == 204
    assert client.delete(url).status_code == 204
    for method in ("PATCH", "GET", "DELETE"):
        response = (
            patch(client, url, 3, b"def") if method == "PATCH" else client.request(method, url)
        )
        assert response.status_code == 410, (method, response.status_code, response.text)
        assert_error(response, 410, "ERR_UPLOAD_GONE")


@pytest.mark.file_store
def test_patch_at_offset_zero_after_delete_is_410(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 10)
    assert client.delete(url).status_code == 204
    response = patch(client, url, 0, b"abc")
    assert_error(response, 410, "ERR_UPLOAD_GONE")
    assert not bytes_file(server, url).exists()


@pytest.mark.file_store
def test_delete_of_a_finished_upload(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 3)
    upload_all(client, url, b"abc")
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 410
    assert not bytes_file(server, url).exists()


def test_delete_of_an_unknown_upload_is_404(client: httpx.Client) -> None:
    response = client.delete("/files/AAAAAAAAAAAAAAAAAAAAAA")
    assert_error(response, 404, "ERR_UPLOAD_NOT_FOUND")


@pytest.mark.file_store
def test_delete_leaves_other_uploads_alone(server: ServerProcess, client: httpx.Client) -> None:
    keep = create(client, 6)
    assert patch(client, keep, 0, b"abc").status_code == 204
    gone = create(client, 6)
    assert patch(client, gone, 0, b"xyz").status_code == 204
    assert client.delete(gone).status_code == 204
    assert offset_of(client, keep) == 3
    assert bytes_file(server, keep).read_bytes()[:3] == b"abc"
    upload_all(client, keep, b"abcdef", offset=3)
    assert client.get(keep).content == b"abcdef"


def test_delete_of_a_deferred_upload(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert client.delete(url).status_code == 204
    assert client.head(url).status_code == 410


def test_delete_of_a_final_upload(client: httpx.Client) -> None:
    partial = client.post("/files/", headers={"Upload-Length": "3", "Upload-Concat": "partial"})
    assert partial.status_code == 201
    part = partial.headers["location"]
    upload_all(client, part, b"abc")
    final = client.post("/files/", headers={"Upload-Concat": f"final;{part}"})
    assert final.status_code == 201, final.text
    url = final.headers["location"]
    assert client.delete(url).status_code == 204
    assert client.head(url).status_code == 410
