"""Bad input on the wire: always a 4xx with its documented code, never a 5xx, never a change.

Every test takes a snapshot of an upload (HEAD and the bytes file) before the bad request
and compares after it. Requests whose bytes matter are written on a raw socket so that no
client library tidies them up first. Value lists are looped inside one test (one behaviour,
one server) and each failure names the value.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    MAX_INT,
    OCTET,
    RawConnection,
    RawResponse,
    assert_client_error,
    assert_error,
    chunked,
    create,
    error_code,
    offset_of,
    patch,
    path_of,
    payload,
    raw_request,
    snapshot,
    stored,
    stored_uploads,
)

LENGTH = 100
WRITTEN = payload(10, seed=1)


@pytest.fixture
def upload(client: httpx.Client) -> str:
    """An unfinished upload of LENGTH bytes holding WRITTEN."""
    url = create(client, LENGTH)
    assert patch(client, url, 0, WRITTEN).status_code == 204
    return url


def data_files(server: ServerProcess) -> set[str]:
    """Every file under the data directory, minus the embedded database's own files."""
    return {
        str(path.relative_to(server.data_dir))
        for path in server.data_dir.rglob("*")
        if path.is_file() and not path.name.startswith("tusd.db")
    }


def assert_healthy(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200


BAD_INTEGERS: list[str | bytes] = [
    "-1",
    "-0",
    "+10",
    "+0",
    "1.0",
    "10.",
    "0x0a",
    "1e1",
    "abc",
    "ten",
    "1 0",
    "1\t0",
    "10,10",
    "10;",
    "0b1",
    str(2**63),
    "99999999999999999999999999999",
    "-9223372036854775808",
    "\u00bd",
    "\u0661\u0660".encode(),
    b"1\xff",
    "",
]


def describe(value: str | bytes) -> str:
    return repr(value)


# --- integers -----------------------------------------------------------------------------


def test_malformed_upload_offset_is_400_and_changes_nothing(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    for value in BAD_INTEGERS:
        response = raw_request(
            server,
            "PATCH",
            path_of(upload),
            [
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", value),
            ],
            b"XYZ",
        )
        assert response.status == 400, (describe(value), response.status, response.text)
        assert error_code(response) in ("ERR_INVALID_OFFSET", "ERR_INVALID_INTEGER"), describe(
            value
        )
        assert snapshot(client, server, upload) == before, describe(value)


def test_malformed_upload_length_is_400_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    for value in BAD_INTEGERS:
        response = raw_request(server, "POST", "/files/", [("Upload-Length", value)])
        assert response.status == 400, (describe(value), response.status, response.text)
        codes = ["ERR_INVALID_LENGTH", "ERR_INVALID_INTEGER"] + (
            ["ERR_LENGTH_REQUIRED"] if value == "" else []
        )
        assert error_code(response) in codes, describe(value)
        assert "location" not in response.headers
    assert stored_uploads(server) == set()


def test_malformed_upload_length_on_patch_is_400_and_changes_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, WRITTEN).status_code == 204
    before = snapshot(client, server, url)
    for value in BAD_INTEGERS:
        if value == "":
            continue  # an empty Upload-Length on PATCH may be read as absent
        response = raw_request(
            server,
            "PATCH",
            path_of(url),
            [
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", "10"),
                ("Upload-Length", value),
            ],
            b"XYZ",
        )
        assert response.status == 400, (describe(value), response.status, response.text)
        assert error_code(response) in ("ERR_INVALID_LENGTH", "ERR_INVALID_INTEGER"), describe(
            value
        )
        assert snapshot(client, server, url) == before, describe(value)


def test_upload_length_of_max_int_plus_one_on_patch_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    url = create(client, defer=True)
    before = snapshot(client, server, url)
    response = patch(client, url, 0, b"", headers={"Upload-Length": str(MAX_INT + 1)})
    assert_error(response, 400, "ERR_INVALID_LENGTH", "ERR_INVALID_INTEGER")
    assert snapshot(client, server, url) == before


def test_huge_upload_offset_is_409_with_the_current_offset(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    response = patch(client, upload, MAX_INT, b"XYZ")
    assert_error(response, 409, "ERR_OFFSET_MISMATCH")
    assert response.headers["upload-offset"] == "10"
    assert snapshot(client, server, upload) == before


def test_conflicting_duplicate_upload_length_headers_are_400(server: ServerProcess) -> None:
    response = raw_request(
        server, "POST", "/files/", [("Upload-Length", "10"), ("Upload-Length", "20")]
    )
    assert_error(response, 400, "ERR_INVALID_LENGTH", "ERR_INVALID_INTEGER", "ERR_INVALID_HEADER")
    assert stored_uploads(server) == set()


def test_conflicting_duplicate_upload_offset_headers_are_400(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    response = raw_request(
        server,
        "PATCH",
        path_of(upload),
        [
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "10"),
            ("Upload-Offset", "0"),
        ],
        b"XYZ",
    )
    assert_error(response, 400, "ERR_INVALID_OFFSET", "ERR_INVALID_INTEGER", "ERR_INVALID_HEADER")
    assert snapshot(client, server, upload) == before


# --- metadata -----------------------------------------------------------------------------


BAD_METADATA: list[str | bytes] = [
    "filename !!!",  # not base64
    "filename YQ=*",  # not base64
    "filename Y",  # impossible base64 length
    "a YQ==,a Yg==",  # duplicate key
    "a YQ==,b Yg==,a",  # duplicate key, the second without value
    "my key YQ==",  # key with a space (or three tokens)
    "a YQ== Yg==",  # three tokens
    ",a YQ==",  # empty pair
    "a YQ==,,b Yg==",  # empty pair in the middle
    "k\u00e9y YQ==".encode(),  # non-ASCII key
    "a\tb YQ==",  # control character in the key
]


def test_invalid_metadata_is_400_and_creates_nothing(server: ServerProcess) -> None:
    for value in BAD_METADATA:
        response = raw_request(
            server, "POST", "/files/", [("Upload-Length", "10"), ("Upload-Metadata", value)]
        )
        assert response.status == 400, (describe(value), response.status, response.text)
        assert error_code(response) == "ERR_INVALID_METADATA", (describe(value), response.text)
        assert "location" not in response.headers
    assert stored_uploads(server) == set()


def test_metadata_error_names_the_problem(server: ServerProcess) -> None:
    response = raw_request(
        server, "POST", "/files/", [("Upload-Length", "10"), ("Upload-Metadata", "a YQ==,a Yg==")]
    )
    assert response.status == 400
    sentence = response.text.split(":", 1)[1].lower()
    assert "duplicate" in sentence or "twice" in sentence or "more than once" in sentence, (
        response.text
    )


def test_metadata_header_over_16_kib_is_431_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    value = "big " + "QUFB" * 4200  # 16,804 bytes
    response = client.post("/files/", headers={"Upload-Length": "10", "Upload-Metadata": value})
    assert_error(response, 431, "ERR_HEADER_TOO_LARGE")
    assert stored_uploads(server) == set()


# --- oversized and malformed HTTP ------------------------------------------------------------


def test_oversized_header_is_a_4xx_and_changes_nothing(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    response = raw_request(
        server,
        "PATCH",
        path_of(upload),
        [
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "10"),
            ("X-Junk", "j" * 200_000),
        ],
        b"XYZ",
    )
    assert_client_error(response)
    assert_healthy(server)
    assert snapshot(client, server, upload) == before


def test_header_line_without_colon_is_a_4xx(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    with RawConnection(server) as connection:
        connection.send(
            f"PATCH {path_of(upload)} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset 10\r\nContent-Type: application/offset+octet-stream\r\n"
            "Content-Length: 3\r\n\r\nXYZ".encode()
        )
        response = connection.read_response(timeout=10)
    assert_client_error(response)
    assert_healthy(server)
    assert snapshot(client, server, upload) == before


def test_malformed_content_length_is_a_4xx(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    for value in ("-3", "abc", "3, 4", "0x3"):
        with RawConnection(server) as connection:
            connection.send_head(
                "PATCH", path_of(upload), {**OCTET, "Upload-Offset": "10", "Content-Length": value}
            )
            connection.send(b"XYZ")
            response = connection.read_response(timeout=10)
        assert_client_error(response)
        assert_healthy(server)
        assert snapshot(client, server, upload) == before, value


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
def test_unknown_upload_is_404(server: ServerProcess, client: httpx.Client, method: str) -> None:
    headers = {**OCTET, "Upload-Offset": "0"} if method == "PATCH" else {}
    response = client.request(
        method,
        "/files/Zm9vYmFyYmF6cXV4cXV1eA",
        headers=headers,
        content=b"abc" if method == "PATCH" else None,
    )
    assert response.status_code == 404
    assert "upload-offset" not in response.headers
    if method != "HEAD":
        assert_error(response, 404, "ERR_UPLOAD_NOT_FOUND")
    assert stored_uploads(server) == set()


BAD_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2Fevil",
    "..%2f..%2fevil",
    "%2e%2e%2fevil",
    "a/b",
    "a%2Fb",
    "..",
    "%2e%2e",
    "A" * 300,
    "abc.def",
    "AAAAAAAAAAAAAAAAAAAAA%00",
    "AAAAAAAAAAAAAAAAAAAAAA%20",
    "%C3%A9AAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAA;x=1",
    "AAAAAAAA%5CAAAAAAAAAAAAA",
]


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
def test_ids_with_path_characters_are_404_and_touch_no_file(
    server: ServerProcess, client: httpx.Client, upload: str, method: str
) -> None:
    before = snapshot(client, server, upload)
    files = data_files(server)
    outside = set(server.data_dir.parent.iterdir())
    for bad in BAD_IDS:
        headers = [("Content-Type", "application/offset+octet-stream"), ("Upload-Offset", "0")]
        body = b"EVIL" if method == "PATCH" else b""
        response = raw_request(
            server, method, f"/files/{bad}", headers if method == "PATCH" else [], body
        )
        assert response.status == 404, (bad, response.status, response.text)
        if method != "HEAD":
            assert error_code(response) == "ERR_UPLOAD_NOT_FOUND", (bad, response.text)
    assert data_files(server) == files
    created_outside = set(server.data_dir.parent.iterdir()) - outside
    assert all(path.name.startswith("server-") for path in created_outside), created_outside
    assert snapshot(client, server, upload) == before


def test_real_id_with_extra_path_segment_is_404(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    response = raw_request(
        server,
        "PATCH",
        f"{path_of(upload)}/x",
        [("Content-Type", "application/offset+octet-stream"), ("Upload-Offset", "10")],
        b"XYZ",
    )
    assert response.status == 404, response.text
    assert error_code(response) == "ERR_UPLOAD_NOT_FOUND"
    assert snapshot(client, server, upload) == before


def test_method_not_allowed_is_405(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    for method, target in (
        ("PUT", path_of(upload)),
        ("POST", path_of(upload)),
        ("PATCH", "/files/"),
        ("DELETE", "/files/"),
        ("PUT", "/files/"),
    ):
        response = raw_request(
            server,
            method,
            target,
            [("Content-Type", "application/offset+octet-stream"), ("Upload-Offset", "10")],
            b"XYZ",
        )
        assert response.status == 405, (method, target, response.status, response.text)
        assert_error(response, 405, "ERR_METHOD_NOT_ALLOWED")
        assert snapshot(client, server, upload) == before, (method, target)


# --- bodies -----------------------------------------------------------------------------------


def test_content_length_past_the_remaining_length_is_413_and_stores_nothing(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    response = patch(client, upload, 10, payload(LENGTH - 10 + 1, seed=2))
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert snapshot(client, server, upload) == before


def test_huge_content_length_is_413_without_waiting_for_the_body(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(upload),
            {**OCTET, "Upload-Offset": "10", "Content-Length": str(10**12)},
        )
        connection.send(b"x" * 1000)
        response = connection.read_response(timeout=10)
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert snapshot(client, server, upload) == before


def test_chunked_body_past_the_length_is_413_and_stores_nothing_past_it(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(upload),
            {**OCTET, "Upload-Offset": "10", "Transfer-Encoding": "chunked"},
        )
        connection.send(chunked(payload(500, seed=3), size=50))
        response = connection.read_response(timeout=10)
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert offset_of(client, upload) == 10
    data = stored(server, upload) or b""
    assert data[:10] == WRITTEN
    assert len(data) <= LENGTH, f"{len(data)} bytes on disk for an upload of {LENGTH}"


def test_chunked_body_within_the_length_is_stored(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    body = payload(LENGTH - 10, seed=4)
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(upload),
            {**OCTET, "Upload-Offset": "10", "Transfer-Encoding": "chunked"},
        )
        connection.send(chunked(body, size=7))
        response = connection.read_response(timeout=10)
    assert response.status == 204, response.text
    assert response.headers["upload-offset"] == str(LENGTH)
    assert client.get(upload).content == WRITTEN + body


def test_wrong_content_type_is_415_and_changes_nothing(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    for content_type in (
        None,
        "application/octet-stream",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/offset+octet-streamx",
    ):
        headers = {"Upload-Offset": "10"}
        if content_type:
            headers["Content-Type"] = content_type
        response = client.patch(upload, headers=headers, content=b"XYZ")
        assert response.status_code == 415, (content_type, response.status_code, response.text)
        assert_error(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
        assert snapshot(client, server, upload) == before, content_type


def test_creation_with_wrong_content_type_is_415_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = client.post(
        "/files/", headers={"Upload-Length": "10", "Content-Type": "text/plain"}, content=b"abc"
    )
    assert_error(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
    assert stored_uploads(server) == set()


def test_creation_body_past_the_length_is_413_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = client.post("/files/", headers={"Upload-Length": "3", **OCTET}, content=b"abcdef")
    assert_error(response, 413, "ERR_BODY_EXCEEDS_LENGTH")
    assert stored_uploads(server) == set()


# --- other headers ----------------------------------------------------------------------------


def test_invalid_method_override_is_400_and_changes_nothing(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    for value in ("PUT", "TRACE", "CONNECT", "POST", "PATCH DELETE"):
        response = raw_request(
            server,
            "POST",
            path_of(upload),
            [
                ("X-HTTP-Method-Override", value),
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", "10"),
            ],
            b"XYZ",
        )
        assert response.status == 400, (value, response.status, response.text)
        assert_error(response, 400, "ERR_INVALID_METHOD_OVERRIDE")
        assert snapshot(client, server, upload) == before, value


def test_concat_with_urls_that_are_not_ours_is_400_and_creates_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    for value in [
        "final;https://evil.example/other/AAAAAAAAAAAAAAAAAAAAAA",
        "final;/other/AAAAAAAAAAAAAAAAAAAAAA",
        "final;ftp://127.0.0.1/x",
        "final;javascript:alert(1)",
        "final;http://[::1",
    ]:
        response = client.post("/files/", headers={"Upload-Concat": value})
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert error_code(response) in (
            "ERR_INVALID_PARTIAL",
            "ERR_INVALID_CONCAT",
            "ERR_INVALID_UPLOAD_ID",
        ), value
    assert stored_uploads(server) == set()


def test_malformed_range_is_never_a_5xx(client: httpx.Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"0123456789").status_code == 204
    for value in [
        "bytes=abc",
        "bytes=5-2",
        "bytes=-0",
        "items=0-5",
        "bytes=0-1,3-4",
        "bytes=" + "9" * 40 + "-",
        "bytes=--1",
        "bytes=",
    ]:
        response = client.get(url, headers={"Range": value})
        assert response.status_code in (200, 206, 416), (value, response.status_code, response.text)
        if response.status_code == 200:
            assert response.content == b"0123456789", value


def test_bad_input_does_not_break_the_connection_for_the_next_request(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    with RawConnection(server) as connection:
        first = connection.request(
            "PATCH", path_of(upload), {**OCTET, "Upload-Offset": "abc"}, b"XYZ"
        )
        assert first.status == 400
        second = connection.request("HEAD", path_of(upload))
        assert second.status == 200
        assert second.headers["upload-offset"] == "10"


def test_server_survives_a_burst_of_bad_requests(
    server: ServerProcess, client: httpx.Client, upload: str
) -> None:
    before = snapshot(client, server, upload)
    started = time.monotonic()
    for index in range(50):
        response: RawResponse | httpx.Response = raw_request(
            server,
            "PATCH",
            path_of(upload),
            [("Content-Type", "application/offset+octet-stream"), ("Upload-Offset", f"-{index}")],
            b"X",
        )
        assert response.status_code == 400
    assert time.monotonic() - started < 60
    assert_healthy(server)
    assert snapshot(client, server, upload) == before
