"""checksum: PROTOCOL.md items 15 and 18."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Callable

import httpx
import pytest
import xxhash

from tests.conftest import ServerProcess
from tests.integration._wire import (
    OCTET,
    RawConnection,
    assert_error,
    create,
    offset_of,
    patch,
    path_of,
    payload,
    post,
    stored,
    upload_all,
)

pytestmark = pytest.mark.s3_too

DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "sha1": lambda data: hashlib.sha1(data).digest(),
    "md5": lambda data: hashlib.md5(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha512": lambda data: hashlib.sha512(data).digest(),
    "crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "xxh64": lambda data: xxhash.xxh64(data).digest(),
    "xxh3": lambda data: xxhash.xxh3_64(data).digest(),
    "xxh128": lambda data: xxhash.xxh3_128(data).digest(),
}


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(DIGESTS[algorithm](data)).decode()}"


def wrong_checksum(algorithm: str, data: bytes) -> str:
    return checksum(algorithm, data + b"!")


def test_options_lists_every_checksum_algorithm(client: httpx.Client) -> None:
    response = client.options("/files/")
    advertised = {item.strip() for item in response.headers["tus-checksum-algorithm"].split(",")}
    assert advertised == set(DIGESTS)


@pytest.mark.file_store
def test_patch_with_correct_checksum_is_stored_for_every_algorithm(
    server: ServerProcess, client: httpx.Client
) -> None:
    failed: list[tuple[object, ...]] = []
    for algorithm in DIGESTS:
        data = payload(5000, seed=len(algorithm))
        url = create(client, 10000)
        response = patch(
            client, url, 0, data, headers={"Upload-Checksum": checksum(algorithm, data)}
        )
        if response.status_code != 204 or response.headers.get("upload-offset") != "5000":
            failed.append((algorithm, response.status_code, response.text))
        elif stored(server, url)[:5000] != data:  # type: ignore[index]
            failed.append((algorithm, "stored bytes differ"))
    assert not failed, failed


@pytest.mark.file_store
def test_patch_with_wrong_checksum_is_460_and_offset_unchanged_for_every_algorithm(
    server: ServerProcess, client: httpx.Client
) -> None:
    failed: list[tuple[object, ...]] = []
    for algorithm in DIGESTS:
        url = create(client, 10000)
        assert patch(client, url, 0, b"head").status_code == 204
        data = payload(5000, seed=4)
        response = patch(
            client, url, 4, data, headers={"Upload-Checksum": wrong_checksum(algorithm, data)}
        )
        if response.status_code != 460 or not response.text.startswith("ERR_CHECKSUM_MISMATCH:"):
            failed.append((algorithm, response.status_code, response.text))
        if offset_of(client, url) != 4 or stored(server, url)[:4] != b"head":  # type: ignore[index]
            failed.append((algorithm, "offset or bytes changed"))
    assert not failed, failed


def test_checksum_mismatch_answer_is_plain_text_with_code(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(
        client, url, 0, b"abc", headers={"Upload-Checksum": wrong_checksum("sha1", b"abc")}
    )
    assert_error(response, 460, "ERR_CHECKSUM_MISMATCH")


def test_chunk_can_be_resent_after_a_checksum_mismatch(client: httpx.Client) -> None:
    data = payload(3000)
    url = create(client, 3000)
    bad = patch(client, url, 0, data, headers={"Upload-Checksum": wrong_checksum("sha1", data)})
    assert bad.status_code == 460
    good = patch(client, url, 0, data, headers={"Upload-Checksum": checksum("sha1", data)})
    assert good.status_code == 204, good.text
    assert client.get(url).content == data


def test_mismatch_discards_only_the_failing_chunk(client: httpx.Client) -> None:
    data = payload(3000)
    url = create(client, 3000)
    first = patch(
        client, url, 0, data[:1000], headers={"Upload-Checksum": checksum("sha256", data[:1000])}
    )
    assert first.status_code == 204
    bad = patch(
        client,
        url,
        1000,
        b"X" * 1000,
        headers={"Upload-Checksum": checksum("sha256", data[1000:2000])},
    )
    assert bad.status_code == 460
    upload_all(client, url, data, offset=1000)
    assert client.get(url).content == data


def test_checksum_of_an_empty_body(client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, 0, b"", headers={"Upload-Checksum": checksum("sha1", b"")})
    assert response.status_code == 204, response.text
    assert response.headers["upload-offset"] == "0"


@pytest.mark.parametrize(
    "digest",
    [b"\0" * 21, b"\0" * 19, b"\0", b"\0" * 64],
    ids=["21-bytes", "19-bytes", "1-byte", "64-bytes"],
)
def test_well_formed_digest_of_another_length_is_a_mismatch(
    client: httpx.Client, digest: bytes
) -> None:
    """PROTOCOL 15: `sha1 <valid base64>` whose digest cannot match the body is 460, like any
    other mismatch, and the chunk is discarded."""
    url = create(client, 10)
    value = "sha1 " + base64.b64encode(digest).decode()
    response = patch(client, url, 0, b"abc", headers={"Upload-Checksum": value})
    assert_error(response, 460, "ERR_CHECKSUM_MISMATCH")
    assert response.headers["upload-offset"] == "0"
    assert offset_of(client, url) == 0
    good = patch(client, url, 0, b"abc", headers={"Upload-Checksum": checksum("sha1", b"abc")})
    assert good.status_code == 204, good.text
    assert offset_of(client, url) == 3


def test_unknown_checksum_algorithm_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    for value in (
        "sha3 AAAA",
        "whirlpool 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "crc32c AAAAAA==",
    ):
        response = patch(client, url, 0, b"abc", headers={"Upload-Checksum": value})
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert_error(response, 400, "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
        assert offset_of(client, url) == 0, value


def test_malformed_checksum_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    for value in (
        "sha1",
        "SHA-1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "sha1 !!notbase64!!",
        "sha1:qZk+NkcGgWq6PiVxeFDCbJzQ2J0=",
        "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0= extra",
        "",
    ):
        response = patch(client, url, 0, b"abc", headers={"Upload-Checksum": value})
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert_error(response, 400, "ERR_INVALID_CHECKSUM", "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
        assert offset_of(client, url) == 0, value


def test_post_with_body_and_correct_checksum_is_stored(client: httpx.Client) -> None:
    data = payload(700)
    response = post(client, 1000, body=data, headers={"Upload-Checksum": checksum("sha1", data)})
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "700"
    assert offset_of(client, response.headers["location"]) == 700


def test_post_with_body_and_wrong_checksum_is_460(client: httpx.Client) -> None:
    data = payload(700)
    response = post(
        client, 1000, body=data, headers={"Upload-Checksum": wrong_checksum("sha1", data)}
    )
    assert_error(response, 460, "ERR_CHECKSUM_MISMATCH")
    if "location" in response.headers:
        assert offset_of(client, response.headers["location"]) == 0


# --- 18: an interrupted PATCH with a checksum stores nothing ---------------------------------


@pytest.mark.file_store
def test_interrupted_patch_with_checksum_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(100_000, seed=9)
    url = create(client, 200_000)
    assert patch(client, url, 0, b"prefix").status_code == 204
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(url),
            {
                **OCTET,
                "Upload-Offset": "6",
                "Content-Length": str(len(data)),
                "Upload-Checksum": checksum("sha256", data),
            },
        )
        connection.send(data[:40_000])
        time.sleep(0.3)
    # The connection is gone; give the server a moment, then the chunk must have left no trace.
    time.sleep(1.0)
    assert offset_of(client, url) == 6
    assert stored(server, url)[:6] == b"prefix"  # type: ignore[index]
    response = patch(client, url, 6, data, headers={"Upload-Checksum": checksum("sha256", data)})
    assert response.status_code == 204, response.text
    assert response.headers["upload-offset"] == str(6 + len(data))


def test_stalled_patch_with_checksum_taken_over_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = payload(100_000, seed=10)
    url = create(client, 100_000)
    with RawConnection(server, timeout=15) as connection:
        connection.send_head(
            "PATCH",
            path_of(url),
            {
                **OCTET,
                "Upload-Offset": "0",
                "Content-Length": str(len(data)),
                "Upload-Checksum": checksum("md5", data),
            },
        )
        connection.send(data[:50_000])
        time.sleep(0.5)
        started = time.monotonic()
        head = client.head(url, timeout=15)
        assert time.monotonic() - started < 5, "the stalled request was not taken over in time"
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "0"
        try:
            answer = connection.read_response(timeout=5)
        except ConnectionError:
            answer = None
        if answer is not None:
            assert answer.status != 204 or answer.headers.get("upload-offset") == "0", answer
    upload_all(client, url, data)
    assert client.get(url).content == data
