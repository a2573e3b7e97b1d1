"""concatenation and concatenation-unfinished: PROTOCOL.md items 19 and 20."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import (
    OCTET,
    assert_error,
    create,
    metadata,
    offset_of,
    patch,
    path_of,
    payload,
    stored_uploads,
    upload_all,
    upload_id,
    wait_for,
)

pytestmark = pytest.mark.s3_too


def partial(
    client: httpx.Client,
    data: bytes | None = None,
    length: int | None = None,
    meta: str | None = None,
) -> str:
    """A partial upload, finished with `data` when given."""
    headers = {
        "Upload-Concat": "partial",
        "Upload-Length": str(len(data) if data is not None else length),
    }
    if meta is not None:
        headers["Upload-Metadata"] = meta
    response = client.post("/files/", headers=headers)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    if data:
        upload_all(client, url, data)
    return url


def final(
    client: httpx.Client, *urls: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        "/files/", headers={"Upload-Concat": "final;" + " ".join(urls), **(headers or {})}
    )


# --- 19: concatenation ----------------------------------------------------------------------


def test_partial_upload_reports_upload_concat_partial(client: httpx.Client) -> None:
    url = partial(client, length=5)
    head = client.head(url)
    assert head.status_code == 200
    assert head.headers["upload-concat"] == "partial"
    assert head.headers["upload-offset"] == "0"


def test_partial_upload_with_deferred_length(client: httpx.Client) -> None:
    response = client.post(
        "/files/", headers={"Upload-Concat": "partial", "Upload-Defer-Length": "1"}
    )
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert patch(client, url, 0, b"abc", headers={"Upload-Length": "3"}).status_code == 204
    assert client.head(url).headers["upload-length"] == "3"


def test_final_upload_concatenates_partials_in_order(client: httpx.Client) -> None:
    a, b, c = payload(1000, 1), payload(3, 2), payload(5000, 3)
    urls = [partial(client, a), partial(client, b), partial(client, c)]
    response = final(client, *urls)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert url not in urls
    body = client.get(url)
    assert body.status_code == 200
    assert body.content == a + b + c


def test_final_upload_length_is_the_sum_and_offset_equals_length(client: httpx.Client) -> None:
    urls = [partial(client, b"abc"), partial(client, b"defgh")]
    url = final(client, *urls).headers["location"]
    head = client.head(url)
    assert head.status_code == 200
    assert head.headers["upload-length"] == "8"
    assert head.headers["upload-offset"] == "8"


def test_final_upload_echoes_upload_concat_as_received(client: httpx.Client) -> None:
    urls = [partial(client, b"abc"), partial(client, b"de")]
    value = "final;" + " ".join(urls)
    url = final(client, *urls).headers["location"]
    assert client.head(url).headers["upload-concat"] == value


def test_final_upload_accepts_relative_urls(client: httpx.Client) -> None:
    urls = [partial(client, b"abc"), partial(client, b"def")]
    relative = [path_of(url) for url in urls]
    response = final(client, *relative)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert client.get(url).content == b"abcdef"
    assert client.head(url).headers["upload-concat"] == "final;" + " ".join(relative)


def test_final_upload_may_repeat_a_partial(client: httpx.Client) -> None:
    a = partial(client, b"ab")
    b = partial(client, b"XY")
    response = final(client, a, b, a)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert client.head(url).headers["upload-length"] == "6"
    assert client.get(url).content == b"abXYab"


def test_final_upload_with_upload_length_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    urls = [partial(client, b"abc")]
    before = stored_uploads(server)
    response = final(client, *urls, headers={"Upload-Length": "3"})
    assert_error(
        response,
        400,
        "ERR_INVALID_CONCAT",
        "ERR_LENGTH_CONFLICT",
        "ERR_INVALID_LENGTH",
        "ERR_INVALID_PARTIAL",
    )
    assert stored_uploads(server) == before


def test_final_upload_with_an_unknown_partial_is_rejected(
    server: ServerProcess, client: httpx.Client
) -> None:
    known = partial(client, b"abc")
    before = stored_uploads(server)
    response = final(client, known, f"{server.files_url}AAAAAAAAAAAAAAAAAAAAAA")
    assert response.status_code in (400, 404), response.text
    if response.status_code == 404:
        assert_error(response, 404, "ERR_PARTIAL_NOT_FOUND")
    else:
        assert_error(response, 400, "ERR_INVALID_PARTIAL")
    assert stored_uploads(server) == before


def test_final_upload_with_a_url_not_of_this_server_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    known = partial(client, b"abc")
    before = stored_uploads(server)
    for foreign in (
        "https://elsewhere.example/other/{id}",
        "/other/{id}",
        "ftp://127.0.0.1/files/{id}",
        "/files/{id}/extra",
    ):
        value = foreign.format(id=upload_id(known))
        response = final(client, known, value)
        assert response.status_code in (400, 404), (value, response.status_code, response.text)
        if value.endswith("/extra") and response.status_code == 404:
            assert_error(response, 404, "ERR_PARTIAL_NOT_FOUND")
        else:
            assert_error(
                response, 400, "ERR_INVALID_PARTIAL", "ERR_INVALID_CONCAT", "ERR_INVALID_UPLOAD_ID"
            )
    assert stored_uploads(server) == before


def test_final_upload_of_a_regular_upload_is_400(client: httpx.Client) -> None:
    regular = create(client, 3)
    upload_all(client, regular, b"abc")
    response = final(client, regular)
    assert_error(response, 400, "ERR_INVALID_PARTIAL")


def test_final_upload_of_a_final_upload_is_400(client: httpx.Client) -> None:
    first = final(client, partial(client, b"abc")).headers["location"]
    response = final(client, first)
    assert_error(response, 400, "ERR_INVALID_PARTIAL")


def test_malformed_upload_concat_is_400(server: ServerProcess, client: httpx.Client) -> None:
    for value in ("final;", "final", "whole", "partial;x", "final ;/files/x", "partial final"):
        response = client.post("/files/", headers={"Upload-Concat": value, "Upload-Length": "3"})
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert_error(response, 400, "ERR_INVALID_CONCAT")
    assert stored_uploads(server) == set()


def test_patch_on_a_final_upload_is_403(client: httpx.Client) -> None:
    url = final(client, partial(client, b"abc")).headers["location"]
    response = patch(client, url, 3, b"d")
    assert_error(response, 403, "ERR_FINAL_UPLOAD_READ_ONLY")
    assert offset_of(client, url) == 3


def test_patch_on_an_unfinished_final_upload_is_403(client: httpx.Client) -> None:
    url = final(client, partial(client, length=3)).headers["location"]
    response = patch(client, url, 0, b"abc")
    assert_error(response, 403, "ERR_FINAL_UPLOAD_READ_ONLY")


def test_metadata_of_partials_is_not_carried_over(client: httpx.Client) -> None:
    a = partial(client, b"abc", meta=metadata(filename="part.bin"))
    url = final(client, a).headers["location"]
    assert "upload-metadata" not in client.head(url).headers


def test_final_upload_keeps_its_own_metadata(client: httpx.Client) -> None:
    a = partial(client, b"abc", meta=metadata(filename="part.bin"))
    meta = metadata(filename="whole.bin")
    url = final(client, a, headers={"Upload-Metadata": meta}).headers["location"]
    assert client.head(url).headers["upload-metadata"] == meta


def test_partial_upload_is_not_served_as_a_final_one(client: httpx.Client) -> None:
    a = partial(client, b"abc")
    head = client.head(a)
    assert head.headers["upload-concat"] == "partial"


def test_partials_stay_usable_after_concatenation(client: httpx.Client) -> None:
    a = partial(client, b"abc")
    b = partial(client, b"def")
    assert final(client, a, b).status_code == 201
    second = final(client, b, a)
    assert second.status_code == 201
    assert client.get(second.headers["location"]).content == b"defabc"


# --- 20: concatenation-unfinished -------------------------------------------------------------


def test_final_upload_may_be_created_before_partials_finish(client: httpx.Client) -> None:
    a = partial(client, length=3)
    b = partial(client, length=4)
    response = final(client, a, b)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    head = client.head(url)
    assert head.status_code == 200
    assert "upload-offset" not in head.headers
    assert head.headers["upload-concat"] == f"final;{a} {b}"


def test_unfinished_final_upload_is_not_served(client: httpx.Client) -> None:
    a = partial(client, length=3)
    url = final(client, a).headers["location"]
    response = client.get(url)
    assert_error(response, 409, "ERR_UPLOAD_NOT_FINISHED")


def test_final_upload_completes_when_the_last_partial_does(client: httpx.Client) -> None:
    a = partial(client, length=3)
    b = partial(client, length=4)
    url = final(client, a, b).headers["location"]
    upload_all(client, b, b"defg")
    assert "upload-offset" not in client.head(url).headers
    upload_all(client, a, b"abc")

    def finished() -> bool:
        return client.head(url).headers.get("upload-offset") == "7"

    assert wait_for(finished, timeout=5), client.head(url).headers
    assert client.head(url).headers["upload-length"] == "7"
    assert client.get(url).content == b"abcdefg"


def test_unfinished_final_upload_completes_from_chunked_partials(client: httpx.Client) -> None:
    data = payload(20_000, 5)
    a = partial(client, length=10_000)
    b = partial(client, length=10_000)
    url = final(client, a, b).headers["location"]
    for part, chunk in ((a, data[:10_000]), (b, data[10_000:])):
        for start in range(0, 10_000, 2_500):
            response = client.patch(
                part,
                headers={**OCTET, "Upload-Offset": str(start)},
                content=chunk[start : start + 2_500],
            )
            assert response.status_code == 204
    assert wait_for(lambda: client.head(url).headers.get("upload-offset") == "20000", timeout=5)
    assert client.get(url).content == data
