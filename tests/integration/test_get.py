"""GET of finished uploads: PROTOCOL.md item 24 and the wire contract's download rules."""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value

import httpx
import pytest

from tests.integration._wire import (
    assert_error,
    create,
    metadata,
    patch,
    payload,
    upload_all,
)

pytestmark = pytest.mark.s3_too

DATA = payload(1000, seed=7)


def finished(client: httpx.Client, data: bytes = DATA, **meta: str) -> str:
    url = create(client, len(data), meta=metadata(**meta) if meta else None)
    if data:
        upload_all(client, url, data)
    return url


def disposition(response: httpx.Response) -> tuple[str, str | None]:
    """(type, filename) of Content-Disposition, decoding filename* (RFC 6266/8187) too."""
    message = Message()
    message["Content-Disposition"] = response.headers["content-disposition"]
    params = message.get_params(header="content-disposition") or [("", "")]
    kind = params[0][0].lower()
    plain: str | None = None
    for key, value in params[1:]:
        if key.lower() != "filename":
            continue
        if isinstance(value, tuple):  # filename*= wins over the ASCII fallback
            return kind, collapse_rfc2231_value(value)
        plain = value
    return kind, plain


# --- the body -------------------------------------------------------------------------------


def test_get_serves_the_bytes_with_content_length(client: httpx.Client) -> None:
    response = client.get(finished(client))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == "1000"


def test_get_advertises_byte_ranges(client: httpx.Client) -> None:
    response = client.get(finished(client))
    assert response.headers["accept-ranges"] == "bytes"


def test_get_of_an_empty_upload_is_an_empty_200(client: httpx.Client) -> None:
    response = client.get(finished(client, b""))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def test_get_of_an_unfinished_upload_is_409(client: httpx.Client) -> None:
    url = create(client, 10)
    assert patch(client, url, 0, b"abc").status_code == 204
    assert_error(client.get(url), 409, "ERR_UPLOAD_NOT_FINISHED")


def test_get_of_a_deferred_upload_is_409_until_length_is_known(client: httpx.Client) -> None:
    url = create(client, defer=True)
    assert patch(client, url, 0, b"abc").status_code == 204
    assert_error(client.get(url), 409, "ERR_UPLOAD_NOT_FINISHED")
    assert patch(client, url, 3, b"", headers={"Upload-Length": "3"}).status_code == 204
    assert client.get(url).content == b"abc"


def test_get_of_an_unknown_upload_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/files/AAAAAAAAAAAAAAAAAAAAAA"), 404, "ERR_UPLOAD_NOT_FOUND")


def test_get_of_a_large_upload_is_served_whole(client: httpx.Client) -> None:
    data = payload(3 * 1024 * 1024, seed=8)
    response = client.get(finished(client, data))
    assert response.status_code == 200
    assert response.content == data


# --- ranges ---------------------------------------------------------------------------------


RANGES = [
    ("bytes=0-99", 0, 99),
    ("bytes=100-199", 100, 199),
    ("bytes=999-999", 999, 999),
    ("bytes=900-", 900, 999),
    ("bytes=0-", 0, 999),
    ("bytes=-10", 990, 999),
    ("bytes=950-5000", 950, 999),
    ("bytes=-5000", 0, 999),
]


def test_range_request_answers_206_with_content_range(client: httpx.Client) -> None:
    url = finished(client)
    for header, start, end in RANGES:
        response = client.get(url, headers={"Range": header})
        assert response.status_code == 206, (header, response.status_code, response.text)
        assert response.headers["content-range"] == f"bytes {start}-{end}/1000", header
        assert response.headers["content-length"] == str(end - start + 1), header
        assert response.content == DATA[start : end + 1], header


def test_unsatisfiable_range_is_416_with_the_length(client: httpx.Client) -> None:
    url = finished(client)
    for header in ("bytes=1000-", "bytes=1000-1001", "bytes=5000-6000"):
        response = client.get(url, headers={"Range": header})
        assert response.status_code == 416, (header, response.status_code)
        assert_error(response, 416, "ERR_RANGE_NOT_SATISFIABLE")
        assert response.headers["content-range"] == "bytes */1000", header


def test_range_on_an_empty_upload_is_416(client: httpx.Client) -> None:
    response = client.get(finished(client, b""), headers={"Range": "bytes=0-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */0"


def test_range_is_served_from_a_concatenated_upload(client: httpx.Client) -> None:
    parts = []
    for piece in (DATA[:400], DATA[400:]):
        response = client.post(
            "/files/", headers={"Upload-Concat": "partial", "Upload-Length": str(len(piece))}
        )
        upload_all(client, response.headers["location"], piece)
        parts.append(response.headers["location"])
    url = client.post("/files/", headers={"Upload-Concat": "final;" + " ".join(parts)}).headers[
        "location"
    ]
    response = client.get(url, headers={"Range": "bytes=350-449"})
    assert response.status_code == 206
    assert response.content == DATA[350:450]


# --- ETag -----------------------------------------------------------------------------------


def test_get_carries_a_stable_etag(client: httpx.Client) -> None:
    url = finished(client)
    first = client.get(url).headers["etag"]
    second = client.get(url).headers["etag"]
    assert first
    assert first == second
    assert first.startswith(('"', 'W/"')) and first.endswith('"')


def test_different_uploads_have_different_etags(client: httpx.Client) -> None:
    assert (
        client.get(finished(client)).headers["etag"]
        != client.get(finished(client, b"other")).headers["etag"]
    )


def test_range_response_carries_the_same_etag(client: httpx.Client) -> None:
    url = finished(client)
    assert (
        client.get(url, headers={"Range": "bytes=0-9"}).headers["etag"]
        == client.get(url).headers["etag"]
    )


# --- Content-Type and Content-Disposition ----------------------------------------------------


def test_content_type_comes_from_filetype(client: httpx.Client) -> None:
    response = client.get(finished(client, filetype="image/png", filename="a.png"))
    assert response.headers["content-type"] == "image/png"


def test_content_type_without_filetype_is_octet_stream(client: httpx.Client) -> None:
    response = client.get(finished(client))
    assert response.headers["content-type"] == "application/octet-stream"


UNSAFE_FILETYPES = [
    "png",
    "image/",
    "/png",
    "image/png/x",
    "image png",
    "text/plain\r\nSet-Cookie: a=b",
    "text/html\nX-Injected: 1",
    'text/plain; charset="x\r\n"',
]
SAFE_FILETYPES = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "audio/mp4",
    "audio/webm",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
    "video/webm",
    "video/mpeg",
    "video/ogg",
]
OTHER_FILETYPES = [
    "text/html",
    "image/svg+xml",
    "application/pdf",
    "application/javascript",
    "text/xml",
    "application/xhtml+xml",
    "application/octet-stream",
    "text/javascript",
    "image/x-icon",
]


def test_content_type_from_unsafe_filetype_is_octet_stream(client: httpx.Client) -> None:
    wrong = []
    for filetype in UNSAFE_FILETYPES:
        response = client.get(finished(client, filetype=filetype))
        assert response.status_code == 200, filetype
        assert "set-cookie" not in response.headers, filetype
        assert "x-injected" not in response.headers, filetype
        if response.headers["content-type"] != "application/octet-stream":
            wrong.append((filetype, response.headers["content-type"]))
    assert not wrong, wrong


def test_safe_types_are_inline(client: httpx.Client) -> None:
    wrong = []
    for filetype in SAFE_FILETYPES:
        response = client.get(finished(client, filetype=filetype, filename="f"))
        got = (response.headers["content-type"].split(";")[0], disposition(response))
        if got != (filetype, ("inline", "f")):
            wrong.append((filetype, got))
    assert not wrong, wrong


def test_other_types_are_attachments(client: httpx.Client) -> None:
    wrong = []
    for filetype in OTHER_FILETYPES:
        response = client.get(finished(client, filetype=filetype, filename="page.html"))
        if disposition(response) != ("attachment", "page.html"):
            wrong.append((filetype, response.headers["content-disposition"]))
    assert not wrong, wrong


def test_missing_filetype_is_an_attachment(client: httpx.Client) -> None:
    response = client.get(finished(client, filename="data.bin"))
    assert disposition(response) == ("attachment", "data.bin")


def test_disposition_without_filename_has_no_filename(client: httpx.Client) -> None:
    response = client.get(finished(client, filetype="image/png"))
    assert disposition(response) == ("inline", None)


def test_filename_is_encoded_safely(client: httpx.Client) -> None:
    wrong = []
    for filename in (
        'quote"d.txt',
        "naïve résumé.txt",
        "semi;colon.txt",
        "日本語.png",
        "a,b.txt",
        "100% sure.txt",
    ):
        response = client.get(finished(client, filetype="text/plain", filename=filename))
        assert response.status_code == 200, filename
        if disposition(response) != ("inline", filename):
            wrong.append((filename, response.headers["content-disposition"]))
    assert not wrong, wrong


def test_filename_with_newline_cannot_inject_headers(client: httpx.Client) -> None:
    response = client.get(finished(client, filename="a.txt\r\nSet-Cookie: a=b"))
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    kind, _ = disposition(response)
    assert kind == "attachment"
