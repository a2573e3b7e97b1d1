"""tus 1.0.0 core protocol on the wire: PROTOCOL.md items 1-9.

Item 7 (interrupted PATCH) lives in test_interrupt.py, the integer grammar of item 8 in
depth in test_bad_input.py; the cases here are the core behaviours a client relies on.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    MAX_INT,
    OCTET,
    assert_error,
    create,
    json_error,
    metadata,
    offset_of,
    patch,
    payload,
    post,
    stored,
    stored_uploads,
    upload_all,
)

pytestmark = pytest.mark.s3_too

EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
}


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# --- 1: Tus-Resumable on every response ----------------------------------------------


def test_every_response_carries_tus_resumable(client: httpx.Client) -> None:
    url = create(client, 4)
    finished = create(client, 4)
    upload_all(client, finished, b"abcd")
    gone = create(client, 4)
    unknown = "/files/AAAAAAAAAAAAAAAAAAAAAA"
    responses = {
        "POST 201": lambda: post(client, 10),
        "POST 400": lambda: post(client, None),
        "HEAD 200": lambda: client.head(url),
        "HEAD 404": lambda: client.head(unknown),
        "PATCH 204": lambda: patch(client, url, 0, b"ab"),
        "PATCH 409": lambda: patch(client, url, 3, b"x"),
        "PATCH 404": lambda: patch(client, unknown, 0, b"x"),
        "GET 200": lambda: client.get(finished),
        "GET 409": lambda: client.get(url),
        "DELETE 204": lambda: client.delete(gone),
        "HEAD 410": lambda: client.head(gone),
        "OPTIONS 200": lambda: client.options("/files/"),
    }
    missing = []
    for name, send in responses.items():
        response = send()
        assert str(response.status_code) == name.split()[1], (
            name,
            response.status_code,
            response.text,
        )
        if response.headers.get("tus-resumable") != "1.0.0":
            missing.append(name)
    assert not missing, f"no Tus-Resumable: 1.0.0 on {missing}"


# --- 2: missing or unsupported Tus-Resumable ------------------------------------------


def test_post_without_supported_tus_resumable_is_412_and_creates_nothing(
    server: ServerProcess,
) -> None:
    for version in (None, "0.2.2", "1.0", "2.0.0", "1.0.0.0", ""):
        headers = {"Upload-Length": "10"}
        if version is not None:
            headers["Tus-Resumable"] = version
        response = httpx.post(server.files_url, headers=headers)
        assert response.status_code == 412, (version, response.status_code, response.text)
        assert_error(response, 412, "ERR_UNSUPPORTED_VERSION")
        assert "1.0.0" in split_list(response.headers["tus-version"]), version
        assert "location" not in response.headers, version
    assert stored_uploads(server) == set()


def test_request_without_tus_resumable_is_412_and_changes_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 6)
    upload_all(client, url, b"abcdef")
    before = stored(server, url)
    for method in ("HEAD", "PATCH", "DELETE"):
        headers = {**OCTET, "Upload-Offset": "0"} if method == "PATCH" else {}
        content = b"zz" if method == "PATCH" else None
        response = httpx.request(method, url, headers=headers, content=content)
        assert response.status_code == 412, (method, response.status_code, response.text)
        assert "1.0.0" in split_list(response.headers["tus-version"]), method
        if method != "HEAD":
            assert_error(response, 412, "ERR_UNSUPPORTED_VERSION")
        assert client.head(url).status_code == 200, method
        assert offset_of(client, url) == 6, method
        assert stored(server, url) == before, method


def test_get_is_a_plain_download_without_tus_resumable(
    server: ServerProcess, client: httpx.Client
) -> None:
    """PROTOCOL 2: a browser link, an <img> or curl cannot send Tus-Resumable."""
    url = create(client, 6)
    upload_all(client, url, b"abcdef")
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 200, (headers, response.text)
        assert response.content == b"abcdef"
        ranged = httpx.get(url, headers={**headers, "Range": "bytes=2-3"})
        assert (ranged.status_code, ranged.content) == (206, b"cd")


def test_patch_with_unsupported_tus_resumable_is_412_and_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 10)
    response = httpx.patch(
        url, headers={**OCTET, "Upload-Offset": "0", "Tus-Resumable": "0.2.2"}, content=b"abc"
    )
    assert_error(response, 412, "ERR_UNSUPPORTED_VERSION")
    assert offset_of(client, url) == 0


# --- 3: OPTIONS -------------------------------------------------------------------------


def test_options_needs_no_tus_resumable_and_answers_200(server: ServerProcess) -> None:
    response = httpx.options(server.files_url)
    assert response.status_code == 200
    assert "1.0.0" in split_list(response.headers["tus-version"])


def test_options_ignores_a_wrong_tus_resumable(server: ServerProcess) -> None:
    response = httpx.options(server.files_url, headers={"Tus-Resumable": "0.0.1"})
    assert response.status_code == 200
    assert "1.0.0" in split_list(response.headers["tus-version"])


def test_options_carries_tus_resumable(server: ServerProcess) -> None:
    response = httpx.options(server.files_url)
    assert response.headers.get("tus-resumable") == "1.0.0"


def test_options_advertises_exactly_the_supported_extensions(client: httpx.Client) -> None:
    response = client.options("/files/")
    assert set(split_list(response.headers["tus-extension"])) == EXTENSIONS


def test_options_advertises_checksum_algorithms(client: httpx.Client) -> None:
    response = client.options("/files/")
    assert "sha1" in split_list(response.headers["tus-checksum-algorithm"])


@pytest.mark.file_store
def test_options_omits_tus_max_size_without_a_limit(client: httpx.Client) -> None:
    response = client.options("/files/")
    assert "tus-max-size" not in response.headers


def test_options_advertises_tus_max_size_when_limited(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=["--max-size", "1048576"])
    response = httpx.options(server.files_url)
    assert response.status_code == 200
    assert response.headers["tus-max-size"] == "1048576"


def test_options_on_an_upload_url_answers_200(client: httpx.Client) -> None:
    url = create(client, 3)
    response = client.options(url)
    assert response.status_code == 200
    assert "1.0.0" in split_list(response.headers["tus-version"])


# --- 4: HEAD ------------------------------------------------------------------------------


def test_head_of_a_new_upload_reports_offset_zero_and_length(client: httpx.Client) -> None:
    url = create(client, 42)
    response = client.head(url)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert response.headers["upload-length"] == "42"
    assert "upload-defer-length" not in response.headers


def test_head_of_a_deferred_upload_sends_defer_length_instead_of_length(
    client: httpx.Client,
) -> None:
    url = create(client, defer=True)
    response = client.head(url)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert response.headers["upload-defer-length"] == "1"
    assert "upload-length" not in response.headers


def test_head_of_a_complete_upload_still_reports_offset(client: httpx.Client) -> None:
    url = create(client, 5)
    upload_all(client, url, b"hello")
    response = client.head(url)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "5"
    assert response.headers["upload-length"] == "5"


def test_head_echoes_metadata_exactly_as_sent(client: httpx.Client) -> None:
    meta = "filename d29ybGRfZG9taW5hdGlvbi5wZGY=,is_confidential,filetype YXBwbGljYXRpb24vcGRm"
    url = create(client, 1, meta=meta)
    assert client.head(url).headers["upload-metadata"] == meta


def test_head_omits_metadata_when_none_was_sent(client: httpx.Client) -> None:
    url = create(client, 1)
    assert "upload-metadata" not in client.head(url).headers


def test_head_is_not_cacheable(client: httpx.Client) -> None:
    url = create(client, 1)
    assert "no-store" in client.head(url).headers["cache-control"]


def test_head_of_an_unknown_upload_is_404_without_offset(client: httpx.Client) -> None:
    response = client.head("/files/AAAAAAAAAAAAAAAAAAAAAA")
    assert response.status_code == 404
    assert "upload-offset" not in response.headers


def test_head_has_no_body(server: ServerProcess, client: httpx.Client) -> None:
    from tests.integration._wire import RawConnection, path_of

    url = create(client, 7)
    with RawConnection(server) as connection:
        first = connection.request("HEAD", path_of(url))
        assert first.status == 200
        # A body after a HEAD response would be read as the start of the next response.
        second = connection.request("HEAD", path_of(url))
        assert second.status == 200
        assert second.headers["upload-offset"] == "0"


# --- 5: PATCH ---------------------------------------------------------------------------


def test_patch_appends_and_answers_204_with_new_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(300)
    url = create(client, 300)
    first = patch(client, url, 0, data[:100])
    assert first.status_code == 204
    assert first.headers["upload-offset"] == "100"
    second = patch(client, url, 100, data[100:])
    assert second.status_code == 204
    assert second.headers["upload-offset"] == "300"
    assert offset_of(client, url) == 300
    assert stored(server, url)[:300] == data  # type: ignore[index]


def test_patch_response_has_no_body(client: httpx.Client) -> None:
    url = create(client, 3)
    response = patch(client, url, 0, b"abc")
    assert response.status_code == 204
    assert response.content == b""


def test_patch_with_wrong_content_type_is_415(client: httpx.Client) -> None:
    url = create(client, 10)
    for content_type in (
        None,
        "application/octet-stream",
        "text/plain",
        "application/offset+octet-streamx",
    ):
        headers = {"Upload-Offset": "0"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = client.patch(url, headers=headers, content=b"abc")
        assert response.status_code == 415, (content_type, response.status_code, response.text)
        assert_error(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
        assert offset_of(client, url) == 0, content_type


def test_patch_without_upload_offset_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    response = client.patch(url, headers=OCTET, content=b"abc")
    assert_error(response, 400, "ERR_INVALID_OFFSET")
    assert offset_of(client, url) == 0


def test_patch_with_malformed_upload_offset_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, "zero", b"abc")
    assert_error(response, 400, "ERR_INVALID_OFFSET", "ERR_INVALID_INTEGER")
    assert offset_of(client, url) == 0


@pytest.mark.file_store
def test_patch_at_a_stale_offset_is_409_with_current_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abcd").status_code == 204
    response = patch(client, url, 0, b"XYZW")
    assert_error(response, 409, "ERR_OFFSET_MISMATCH")
    assert response.headers["upload-offset"] == "4"
    assert offset_of(client, url) == 4
    assert stored(server, url)[:4] == b"abcd"  # type: ignore[index]


@pytest.mark.file_store
def test_patch_ahead_of_the_offset_is_409_and_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 10)
    before = stored(server, url)
    response = patch(client, url, 5, b"abc")
    assert_error(response, 409, "ERR_OFFSET_MISMATCH")
    assert response.headers["upload-offset"] == "0"
    assert offset_of(client, url) == 0
    assert stored(server, url) == before


def test_patch_with_empty_body_keeps_offset(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, 0, b"")
    assert response.status_code == 204
    assert response.headers["upload-offset"] == "0"


@pytest.mark.parametrize("size", [3, 6 * 1024 * 1024], ids=["3-bytes", "6-MiB"])
def test_empty_patch_at_the_end_of_a_finished_upload_is_204(
    client: httpx.Client, size: int
) -> None:
    """A client that repeats its last PATCH after a lost response must not see a server
    fault (on S3 the multipart upload is already completed: nothing may be asked of it)."""
    data = payload(size)
    url = create(client, size)
    upload_all(client, url, data)
    for chunked in (False, True):
        body: bytes | list[bytes] = [] if chunked else b""
        response = client.patch(
            url,
            headers={**OCTET, "Upload-Offset": str(size)},
            content=iter(body) if chunked else body,
        )
        assert response.status_code == 204, (chunked, response.status_code, response.text)
        assert response.headers["upload-offset"] == str(size)
        assert "upload-expires" not in response.headers
    assert offset_of(client, url) == size
    assert client.get(url).content == data


def test_patch_on_a_finished_upload_is_rejected(client: httpx.Client) -> None:
    url = create(client, 3)
    upload_all(client, url, b"abc")
    response = patch(client, url, 3, b"d")
    # Item 6 (413, body passes the length) and ERR_UPLOAD_FINISHED (403) both describe this.
    if response.status_code == 413:
        assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    else:
        assert_error(response, 403, "ERR_UPLOAD_FINISHED")
    assert offset_of(client, url) == 3


def test_patch_to_an_unknown_upload_is_404(client: httpx.Client) -> None:
    response = patch(client, "/files/AAAAAAAAAAAAAAAAAAAAAA", 0, b"abc")
    assert_error(response, 404, "ERR_UPLOAD_NOT_FOUND")


# --- 6: the body may not pass Upload-Length --------------------------------------------


@pytest.mark.file_store
def test_patch_longer_than_the_remaining_length_is_413_and_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abcd").status_code == 204
    before = stored(server, url)
    response = patch(client, url, 4, b"0123456789")
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert offset_of(client, url) == 4
    assert stored(server, url) == before


def test_patch_exactly_to_the_length_completes(client: httpx.Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abcd").status_code == 204
    response = patch(client, url, 4, b"efghij")
    assert response.status_code == 204
    assert response.headers["upload-offset"] == "10"
    assert client.get(url).content == b"abcdefghij"


# --- 8: integers ----------------------------------------------------------------------------


@pytest.mark.file_store
def test_upload_length_of_two_to_the_63_minus_one_is_accepted(client: httpx.Client) -> None:
    # a valid length; no disk has that much room, so a creation declaring it meets the
    # free-disk reserve (507, deployment.md#admission-control), but a length declared later
    # is taken as it is
    assert_error(post(client, MAX_INT), 507, "ERR_INSUFFICIENT_STORAGE")
    url = create(client, defer=True)
    response = patch(client, url, 0, b"", {"Upload-Length": str(MAX_INT)})
    assert response.status_code == 204, response.text
    assert client.head(url).headers["upload-length"] == str(MAX_INT)


def test_upload_length_of_two_to_the_63_is_400(server: ServerProcess, client: httpx.Client) -> None:
    response = post(client, 2**63)
    assert_error(response, 400, "ERR_INVALID_LENGTH", "ERR_INVALID_INTEGER")
    assert stored_uploads(server) == set()


def test_upload_offset_with_a_sign_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, "+0", b"abc")
    assert_error(response, 400, "ERR_INVALID_OFFSET", "ERR_INVALID_INTEGER")
    assert offset_of(client, url) == 0


# --- 9: X-HTTP-Method-Override ----------------------------------------------------------


@pytest.mark.file_store
def test_method_override_patch_appends(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 6)
    response = client.post(
        url,
        headers={**OCTET, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"},
        content=b"abc",
    )
    assert response.status_code == 204, response.text
    assert response.headers["upload-offset"] == "3"
    assert offset_of(client, url) == 3
    assert stored(server, url)[:3] == b"abc"  # type: ignore[index]


def test_method_override_delete_terminates(client: httpx.Client) -> None:
    url = create(client, 6)
    response = client.post(url, headers={"X-HTTP-Method-Override": "DELETE"})
    assert response.status_code == 204, response.text
    assert client.head(url).status_code == 410


def test_method_override_head_reports_the_offset(client: httpx.Client) -> None:
    url = create(client, 6)
    assert patch(client, url, 0, b"ab").status_code == 204
    response = client.post(url, headers={"X-HTTP-Method-Override": "HEAD"})
    assert response.status_code == 200, response.text
    assert response.headers["upload-offset"] == "2"
    assert response.headers["upload-length"] == "6"


def test_method_override_patch_is_checked_like_a_patch(client: httpx.Client) -> None:
    url = create(client, 6)
    response = client.post(
        url,
        headers={**OCTET, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "2"},
        content=b"abc",
    )
    assert_error(response, 409, "ERR_OFFSET_MISMATCH")
    assert response.headers["upload-offset"] == "0"


# --- 25: error bodies ---------------------------------------------------------------------


def test_error_body_is_plain_text_code_and_sentence(client: httpx.Client) -> None:
    response = client.head("/files/AAAAAAAAAAAAAAAAAAAAAA")
    assert response.status_code == 404
    response = patch(client, "/files/AAAAAAAAAAAAAAAAAAAAAA", 0, b"x")
    assert_error(response, 404, "ERR_UPLOAD_NOT_FOUND")
    assert response.text.rstrip().endswith(".")
    assert len(response.content) < 1024


def test_error_body_is_json_when_asked(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, 7, b"abc", headers={"Accept": "application/json"})
    assert response.status_code == 409
    body = json_error(response)
    assert body["code"] == "ERR_OFFSET_MISMATCH"
    assert isinstance(body["message"], str) and body["message"]


def test_health_and_ready_answer_200(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_state_survives_a_server_restart(server_factory) -> None:  # type: ignore[no-untyped-def]
    first = server_factory()
    meta = metadata(filename="a.txt")
    with httpx.Client(headers={"Tus-Resumable": "1.0.0"}) as client:
        response = client.post(
            first.files_url, headers={"Upload-Length": "8", "Upload-Metadata": meta}
        )
        assert response.status_code == 201
        url = response.headers["location"]
        assert patch(client, url, 0, b"abcd").status_code == 204
        first.stop()
        second = server_factory(data_dir=first.data_dir, database_url=first.database_url)
        moved = url.replace(f":{first.port}/", f":{second.port}/")
        head = client.head(moved)
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "4"
        assert head.headers["upload-metadata"] == meta
        upload_all(client, moved, b"abcdefgh", offset=4)
        assert client.get(moved).content == b"abcdefgh"
