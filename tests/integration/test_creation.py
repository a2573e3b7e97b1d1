"""creation, metadata, creation-with-upload and creation-defer-length: PROTOCOL.md items 10-13."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    ID_PATTERN,
    OCTET,
    RawConnection,
    assert_error,
    bytes_file,
    create,
    metadata,
    offset_of,
    patch,
    path_of,
    payload,
    post,
    stored,
    stored_uploads,
    upload_all,
    upload_id,
)

pytestmark = pytest.mark.s3_too

# --- 10: creation -------------------------------------------------------------------------


def test_post_with_length_answers_201_with_absolute_location(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = post(client, 100)
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith(server.files_url), location
    assert ID_PATTERN.match(upload_id(location)), location


def test_new_upload_starts_at_offset_zero(client: httpx.Client) -> None:
    response = post(client, 100)
    assert response.headers.get("upload-offset", "0") == "0"
    assert offset_of(client, response.headers["location"]) == 0


def test_every_upload_gets_a_new_id(client: httpx.Client) -> None:
    ids = {upload_id(create(client, 1)) for _ in range(20)}
    assert len(ids) == 20


def test_post_with_length_and_defer_length_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = post(client, 10, defer=True)
    assert_error(response, 400, "ERR_LENGTH_CONFLICT")
    assert stored_uploads(server) == set()


def test_post_without_length_or_defer_length_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = post(client)
    assert_error(response, 400, "ERR_LENGTH_REQUIRED")
    assert stored_uploads(server) == set()


def test_zero_length_upload_is_finished_at_once(client: httpx.Client) -> None:
    url = create(client, 0)
    head = client.head(url)
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == "0"
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == b""


def test_length_over_the_maximum_is_413(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--max-size", "1000"])
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(server.files_url, headers={"Upload-Length": "1001"})
        assert_error(response, 413, "ERR_UPLOAD_TOO_LARGE")
        assert stored_uploads(server) == set()


def test_length_equal_to_the_maximum_is_accepted(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--max-size", "1000"])
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(server.files_url, headers={"Upload-Length": "1000"})
        assert response.status_code == 201, response.text


def test_deferred_upload_may_not_grow_past_the_maximum(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--max-size", "1000"])
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(server.files_url, headers={"Upload-Defer-Length": "1"})
        assert response.status_code == 201
        url = response.headers["location"]
        assert patch(client, url, 0, payload(600)).status_code == 204
        response = patch(client, url, 600, payload(600))
        assert_error(response, 413, "ERR_UPLOAD_TOO_LARGE", "ERR_BODY_EXCEEDS_LENGTH")
        assert offset_of(client, url) == 600


def test_deferred_upload_may_not_declare_a_length_past_the_maximum(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--max-size", "1000"])
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(server.files_url, headers={"Upload-Defer-Length": "1"})
        url = response.headers["location"]
        response = patch(client, url, 0, b"abc", headers={"Upload-Length": "5000"})
        assert_error(response, 413, "ERR_UPLOAD_TOO_LARGE")
        head = client.head(url)
        assert head.headers["upload-offset"] == "0"
        assert head.headers["upload-defer-length"] == "1"


def test_location_uses_the_configured_base_path(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--base-path", "/api/uploads/"])
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(f"{server.base_url}/api/uploads/", headers={"Upload-Length": "3"})
        assert response.status_code == 201, response.text
        location = response.headers["location"]
        assert location.startswith(f"{server.base_url}/api/uploads/"), location
        upload_all(client, location, b"abc")
        assert client.get(location).content == b"abc"


def test_location_is_built_from_the_host_header(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = post(client, 3, headers={"Host": "uploads.example.test:8080"})
    assert response.status_code == 201
    assert response.headers["location"].startswith("http://uploads.example.test:8080/files/")


# --- 11: metadata -----------------------------------------------------------------------


def test_metadata_key_without_value_is_accepted(client: httpx.Client) -> None:
    url = create(client, 1, meta="is_confidential")
    assert client.head(url).headers["upload-metadata"] == "is_confidential"


def test_metadata_is_echoed_byte_for_byte(client: httpx.Client) -> None:
    meta = "b Yg==,a YQ==,utf8 " + metadata(x="héllo wörld ✓")[2:]
    url = create(client, 1, meta=meta)
    assert client.head(url).headers["upload-metadata"] == meta


def test_metadata_of_ten_kib_is_accepted(client: httpx.Client) -> None:
    meta = metadata(big="x" * 7500)
    assert 9000 < len(meta) < 16384
    url = create(client, 1, meta=meta)
    assert client.head(url).headers["upload-metadata"] == meta


# --- 12: creation-with-upload --------------------------------------------------------------


@pytest.mark.file_store
def test_post_with_body_stores_it_and_reports_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(500)
    response = post(client, 1000, body=data)
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "500"
    url = response.headers["location"]
    assert offset_of(client, url) == 500
    assert stored(server, url)[:500] == data  # type: ignore[index]


def test_post_with_whole_body_finishes_the_upload(client: httpx.Client) -> None:
    data = payload(300)
    response = post(client, 300, body=data)
    assert response.status_code == 201
    assert response.headers["upload-offset"] == "300"
    assert client.get(response.headers["location"]).content == data


def test_upload_created_with_body_can_be_continued(client: httpx.Client) -> None:
    data = payload(800)
    response = post(client, 800, body=data[:300])
    url = response.headers["location"]
    upload_all(client, url, data, offset=300)
    assert client.get(url).content == data


def test_post_with_body_and_deferred_length(client: httpx.Client) -> None:
    response = post(client, defer=True, body=b"hello")
    assert response.status_code == 201
    assert response.headers["upload-offset"] == "5"
    head = client.head(response.headers["location"])
    assert head.headers["upload-offset"] == "5"
    assert head.headers["upload-defer-length"] == "1"


def test_post_with_body_and_wrong_content_type_is_415(
    server: ServerProcess, client: httpx.Client
) -> None:
    for content_type in ("application/octet-stream", "text/plain"):
        response = client.post(
            "/files/", headers={"Upload-Length": "10", "Content-Type": content_type}, content=b"abc"
        )
        assert response.status_code == 415, (content_type, response.status_code, response.text)
        assert_error(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
    assert stored_uploads(server) == set()


def test_post_with_body_longer_than_length_is_413_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = post(client, 5, body=b"0123456789")
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert stored_uploads(server) == set()


def test_post_with_expect_100_continue_gets_continue_then_201(server: ServerProcess) -> None:
    data = payload(2000)
    with RawConnection(server) as connection:
        connection.send_head(
            "POST",
            "/files/",
            {
                "Upload-Length": "2000",
                **OCTET,
                "Content-Length": "2000",
                "Expect": "100-continue",
            },
        )
        interim = connection.read_response(timeout=5)
        assert interim.status == 100, (interim.status, interim.text)
        connection.send(data)
        final = connection.read_response(timeout=10)
    assert final.status == 201, final.text
    assert final.headers["upload-offset"] == "2000"
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        assert client.get(final.headers["location"]).content == data


def test_patch_with_expect_100_continue_gets_continue_then_204(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 100)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(url),
            {
                **OCTET,
                "Upload-Offset": "0",
                "Content-Length": "100",
                "Expect": "100-continue",
            },
        )
        interim = connection.read_response(timeout=5)
        assert interim.status == 100, (interim.status, interim.text)
        connection.send(payload(100))
        final = connection.read_response(timeout=10)
    assert final.status == 204, final.text
    assert final.headers["upload-offset"] == "100"
    assert client.get(url).content == payload(100)


# --- 13: creation-defer-length --------------------------------------------------------------


def test_defer_length_other_than_1_is_400(server: ServerProcess, client: httpx.Client) -> None:
    for value in ("0", "2", "true", "01", "1.0", "-1"):
        response = client.post("/files/", headers={"Upload-Defer-Length": value})
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert_error(response, 400, "ERR_INVALID_DEFER_LENGTH")
    assert stored_uploads(server) == set()


def test_patch_may_declare_the_deferred_length(client: httpx.Client) -> None:
    url = create(client, defer=True)
    response = patch(client, url, 0, b"abc", headers={"Upload-Length": "6"})
    assert response.status_code == 204, response.text
    head = client.head(url)
    assert head.headers["upload-length"] == "6"
    assert "upload-defer-length" not in head.headers


def test_deferred_upload_finishes_when_offset_reaches_declared_length(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"abc").status_code == 204
    assert patch(client, url, 3, b"def", headers={"Upload-Length": "6"}).status_code == 204
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == b"abcdef"


def test_deferred_length_declared_with_an_empty_patch(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"abcd").status_code == 204
    response = patch(client, url, 4, b"", headers={"Upload-Length": "4"})
    assert response.status_code == 204, response.text
    assert client.get(url).content == b"abcd"


def test_repeating_the_same_length_is_accepted(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"ab", headers={"Upload-Length": "6"}).status_code == 204
    response = patch(client, url, 2, b"cd", headers={"Upload-Length": "6"})
    assert response.status_code == 204, response.text
    assert response.headers["upload-offset"] == "4"


def test_a_different_second_length_is_400(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"ab", headers={"Upload-Length": "6"}).status_code == 204
    response = patch(client, url, 2, b"cd", headers={"Upload-Length": "8"})
    assert_error(response, 400, "ERR_LENGTH_ALREADY_SET")
    head = client.head(url)
    assert head.headers["upload-offset"] == "2"
    assert head.headers["upload-length"] == "6"


def test_length_on_patch_of_an_upload_with_known_length_must_match(client: httpx.Client) -> None:
    url = create(client, 6)
    response = patch(client, url, 0, b"ab", headers={"Upload-Length": "9"})
    assert_error(response, 400, "ERR_LENGTH_ALREADY_SET")
    assert offset_of(client, url) == 0


def test_declared_length_smaller_than_received_bytes_is_400(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"abcdef").status_code == 204
    response = patch(client, url, 6, b"", headers={"Upload-Length": "3"})
    assert_error(response, 400, "ERR_LENGTH_TOO_SMALL")
    head = client.head(url)
    assert head.headers["upload-offset"] == "6"
    assert head.headers["upload-defer-length"] == "1"


@pytest.mark.file_store
def test_declared_length_smaller_than_offset_plus_body_is_413(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"abc").status_code == 204
    before = stored(server, url)
    response = patch(client, url, 3, b"defgh", headers={"Upload-Length": "5"})
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    head = client.head(url)
    assert head.headers["upload-offset"] == "3"
    assert stored(server, url) == before


@pytest.mark.file_store
def test_bytes_file_holds_the_upload_bytes(server: ServerProcess, client: httpx.Client) -> None:
    data = payload(4096)
    url = create(client, 4096)
    upload_all(client, url, data)
    assert bytes_file(server, url).read_bytes()[:4096] == data
