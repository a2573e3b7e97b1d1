"""The S3 store against real S3 servers (Ceph RGW, moto; TUSD_TEST_S3_ENDPOINT too).

Parts of 5 MiB (the smallest S3 allows) so that a few MiB cross part boundaries. What the
bucket holds is listed with a separate S3 client; what the state database recorded is read
with a separate database connection.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests import s3_servers
from tests.conftest import (
    TEST_BUCKET,
    TEST_PART_SIZE,
    ServerProcess,
    s3_arguments,
)
from tests.integration._wire import (
    TUS,
    RawConnection,
    assert_error,
    check_s3_record,
    create,
    offset_of,
    patch,
    path_of,
    state_rows,
    upload_id,
)
from tests.s3_proxy import TamperProxy
from tusd_storage.s3 import PARTS_IN_FLIGHT

pytestmark = pytest.mark.s3_only

MiB = 1024 * 1024
P = TEST_PART_SIZE


def data_of(size: int) -> bytes:
    return os.urandom(size)


def parts_of(server: ServerProcess, url: str) -> list[tuple[int, int, str, str]]:
    return [
        (int(n), int(size), str(etag), str(checksum))
        for n, size, etag, checksum in state_rows(
            server,
            "SELECT number, size, etag, checksum FROM upload_parts WHERE upload_id = ? "
            "ORDER BY number",
            upload_id(url),
        )
    ]


def fragments_of(server: ServerProcess, url: str) -> list[tuple[int, int]]:
    return [
        (int(offset), int(size))
        for offset, size in state_rows(
            server,
            'SELECT "offset", size FROM upload_fragments WHERE upload_id = ? ORDER BY "offset"',
            upload_id(url),
        )
    ]


def bucket_keys(server: ServerProcess, url: str | None = None) -> list[str]:
    """Object keys under the server's prefix (only those of one upload, given its URL)."""
    endpoint, prefix = s3_of(server)
    return [
        key
        for key in s3_servers.list_all(endpoint, TEST_BUCKET, prefix)
        if not key.endswith(".probe-checksum") and (url is None or upload_id(url) in key)
    ]


def open_multipart(server: ServerProcess, url: str | None = None) -> list[tuple[str, str]]:
    endpoint, prefix = s3_of(server)
    return [
        (key, handle)
        for key, handle in s3_servers.list_multipart_uploads(endpoint, TEST_BUCKET, prefix)
        if url is None or key.endswith(upload_id(url))
    ]


def s3_of(server: ServerProcess) -> tuple[Any, str]:
    assert server.s3 is not None
    return server.s3


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(url, headers={**TUS, **(headers or {})}, timeout=60)


def upload_in_chunks(
    client: httpx.Client, url: str, data: bytes, chunk: int, start: int = 0
) -> None:
    offset = start
    while offset < len(data):
        response = patch(client, url, offset, data[offset : offset + chunk])
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["upload-offset"])


@pytest.fixture
def s3_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        yield http


# --- parts and fragments ----------------------------------------------------------------


def test_12_mib_in_1_mib_patches_folds_fragments_into_equal_parts(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(12 * MiB)
    url = create(s3_client, len(data))
    upload_in_chunks(s3_client, url, data[: 7 * MiB], MiB)
    # 7 MiB in: one whole part, the other 2 MiB waiting as fragments (one per PATCH)
    assert [size for _, size, _, _ in parts_of(server, url)] == [P]
    assert fragments_of(server, url) == [(5 * MiB, MiB), (6 * MiB, MiB)]
    fragment_keys = [k for k in bucket_keys(server, url) if "/.fragments/" in k]
    assert len(fragment_keys) == 2

    upload_in_chunks(s3_client, url, data, MiB, start=7 * MiB)
    assert get(url).content == data
    # the object is whole: no fragment, no open multipart upload is left behind
    assert bucket_keys(server, url) == [s3_of(server)[1] + upload_id(url)]
    assert open_multipart(server, url) == []
    assert fragments_of(server, url) == []


def test_recorded_parts_are_equal_and_each_checksum_matches_its_bytes(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(17 * MiB)
    url = create(s3_client, len(data))
    # 3 MiB + 9 MiB + 4 MiB: parts cut at 5 MiB boundaries, not at request boundaries
    for start, end in ((0, 3 * MiB), (3 * MiB, 12 * MiB), (12 * MiB, 16 * MiB)):
        response = patch(s3_client, url, start, data[start:end])
        assert response.status_code == 204, response.text
    parts = parts_of(server, url)
    assert [(number, size) for number, size, _, _ in parts] == [(1, P), (2, P), (3, P)]
    for number, size, etag, checksum in parts:
        chunk = data[(number - 1) * P : (number - 1) * P + size]
        assert checksum == md5_b64(chunk)
        assert etag.strip('"') == hashlib.md5(chunk).hexdigest()
    assert fragments_of(server, url) == [(15 * MiB, MiB)]
    # the gateway's own list of parts agrees with our record
    endpoint, _ = s3_of(server)
    [(key, handle)] = open_multipart(server, url)
    listed = endpoint.client()._list_parts(TEST_BUCKET, key, handle)
    assert [(p.part_number, p.size) for p in listed.parts] == [(1, P), (2, P), (3, P)]

    upload_in_chunks(s3_client, url, data, 4 * MiB, start=16 * MiB)
    assert get(url).content == data


def test_deferred_length_ending_with_a_short_tail(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(11 * MiB + 123)
    url = create(s3_client, defer=True)
    assert patch(s3_client, url, 0, data[: 6 * MiB]).status_code == 204
    assert patch(s3_client, url, 6 * MiB, data[6 * MiB : 11 * MiB]).status_code == 204
    # the length comes with the last 123 bytes
    response = patch(
        s3_client, url, 11 * MiB, data[11 * MiB :], headers={"Upload-Length": str(len(data))}
    )
    assert response.status_code == 204, response.text
    assert get(url).content == data
    assert open_multipart(server, url) == []


def test_deferred_length_declared_by_an_empty_patch_after_the_last_bytes(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(5 * MiB + 7)
    url = create(s3_client, defer=True)
    assert patch(s3_client, url, 0, data).status_code == 204
    assert fragments_of(server, url) == [(5 * MiB, 7)]
    response = patch(s3_client, url, len(data), b"", headers={"Upload-Length": str(len(data))})
    assert response.status_code == 204, response.text
    assert get(url).content == data
    assert bucket_keys(server, url) == [s3_of(server)[1] + upload_id(url)]


def test_nine_small_fragments_are_merged_into_one(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(10 * 64 * 1024)
    url = create(s3_client, 20 * MiB)
    upload_in_chunks(s3_client, url, data[: 8 * 64 * 1024], 64 * 1024)
    assert len(fragments_of(server, url)) == 8
    # the ninth would make the next part cost nine GETs: it is merged with the eight
    upload_in_chunks(s3_client, url, data[: 9 * 64 * 1024], 64 * 1024, start=8 * 64 * 1024)
    assert fragments_of(server, url) == [(0, 9 * 64 * 1024)]
    assert len([k for k in bucket_keys(server, url) if "/.fragments/" in k]) == 1
    check_s3_record(server, upload_id(url), data, 9 * 64 * 1024)
    rest = data_of(20 * MiB - len(data))
    upload_in_chunks(s3_client, url, data + rest, 4 * MiB, start=9 * 64 * 1024)
    assert get(url).content == data + rest


def test_the_largest_upload_is_what_s3_can_hold(s3_client: httpx.Client) -> None:
    five_tib = 5 * 1024**4
    assert s3_client.options("/files/").headers["tus-max-size"] == str(five_tib)
    response = s3_client.post("/files/", headers={"Upload-Length": str(five_tib + 1)})
    assert_error(response, 413, "ERR_UPLOAD_TOO_LARGE")
    # the largest one gets parts large enough to stay within 10,000 of them
    assert create(s3_client, five_tib)


def test_zero_length_upload_is_an_empty_object(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    url = create(s3_client, 0)
    response = get(url)
    assert response.status_code == 200 and response.content == b""
    assert open_multipart(server, url) == []


def test_range_get_is_served_from_the_object(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(6 * MiB)
    url = create(s3_client, len(data), body=data)
    response = get(url, {"Range": f"bytes={P - 10}-{P + 9}"})
    assert response.status_code == 206
    assert response.content == data[P - 10 : P + 10]


def test_deferred_upload_may_not_pass_10000_parts(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    url = create(s3_client, defer=True)
    limit = 10_000 * P
    response = patch(s3_client, url, 0, b"", headers={"Upload-Length": str(limit + 1)})
    assert_error(response, 413, "ERR_STORAGE_ROOM_EXCEEDED")
    assert "10,000" not in response.text  # the sentence speaks of bytes, not of S3
    assert str(limit) in response.text
    # a body announced past the limit is refused before a byte is read
    with RawConnection(server) as connection:
        connection.send_head(
            "PATCH",
            path_of(url),
            {
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(limit + 1),
            },
        )
        answer = connection.read_response()
    assert answer.status_code == 413
    assert offset_of(s3_client, url) == 0


# --- interruption and restart -----------------------------------------------------------


def test_interrupted_mid_part_then_resumed_on_a_new_server_process(
    server_factory: Callable[..., ServerProcess],
) -> None:
    first = server_factory()
    data = data_of(12 * MiB)
    with httpx.Client(base_url=first.base_url, headers=TUS, timeout=60) as http:
        url = create(http, len(data))
    # 7 MiB of a 12 MiB body, then the connection drops
    with RawConnection(first, timeout=30) as connection:
        connection.send_head(
            "PATCH",
            path_of(url),
            {
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(len(data)),
            },
        )
        connection.send(data[: 7 * MiB])
        time.sleep(0.5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and offset_of_server(first, url) < 7 * MiB:
        time.sleep(0.1)
    assert offset_of_server(first, url) == 7 * MiB
    first.kill()

    # a fresh process on the same database and bucket finds the part and the fragment
    second = ServerProcess(first.data_dir, first.database_url, first.extra_args, first.env)
    second.s3 = first.s3
    second.launch()
    try:
        with httpx.Client(base_url=second.base_url, headers=TUS, timeout=60) as http:
            url2 = url.replace(str(first.port), str(second.port))
            assert offset_of(http, url2) == 7 * MiB
            assert fragments_of(second, url2) == [(5 * MiB, 2 * MiB)]
            upload_in_chunks(http, url2, data, 3 * MiB, start=7 * MiB)
        assert get(url2).content == data
    finally:
        second.stop()


def offset_of_server(server: ServerProcess, url: str) -> int:
    response = httpx.head(url, headers=TUS, timeout=10)
    return int(response.headers.get("upload-offset", -1))


# --- concatenation ----------------------------------------------------------------------


def create_partials(client: httpx.Client, pieces: list[bytes], *, send: bool) -> list[str]:
    """Partial uploads of these lengths; with `send`, their bytes come with the POST."""
    partials = []
    for piece in pieces:
        headers = {"Upload-Length": str(len(piece)), "Upload-Concat": "partial"}
        if send:
            headers["Content-Type"] = "application/offset+octet-stream"
        response = client.post("/files/", headers=headers, content=piece if send else None)
        assert response.status_code == 201, response.text
        partials.append(response.headers["location"])
    return partials


def create_final(client: httpx.Client, partials: list[str]) -> str:
    response = client.post(
        "/files/", headers={"Upload-Concat": "final;" + " ".join(map(path_of, partials))}
    )
    assert response.status_code == 201, response.text
    return str(response.headers["location"])


def test_concatenation_of_5_mib_7_mib_and_3_bytes(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    pieces = [data_of(5 * MiB), data_of(7 * MiB), data_of(3)]
    final = create_final(s3_client, create_partials(s3_client, pieces, send=True))
    assert get(final).content == b"".join(pieces)
    head = s3_client.head(final)
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(12 * MiB + 3)
    assert open_multipart(server, final) == []


def test_concatenation_of_small_partials_finishing_after_the_final(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    # parts of the final span partials (streamed through the server), partials repeat
    pieces = [data_of(3 * MiB), data_of(4 * MiB), data_of(MiB + 1)]
    partials = create_partials(s3_client, pieces, send=False)
    final = create_final(s3_client, partials * 2)
    assert "upload-offset" not in s3_client.head(final).headers
    for url, piece in zip(partials, pieces, strict=True):
        assert patch(s3_client, url, 0, piece).status_code == 204
    assert get(final).content == b"".join(pieces * 2)
    assert open_multipart(server, final) == []


# --- termination and garbage ------------------------------------------------------------


def test_termination_leaves_no_object_part_or_fragment(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    data = data_of(8 * MiB)
    url = create(s3_client, 20 * MiB)
    assert patch(s3_client, url, 0, data).status_code == 204
    assert len(parts_of(server, url)) == 1 and len(fragments_of(server, url)) == 1
    assert open_multipart(server, url) != []
    assert s3_client.delete(url).status_code == 204
    assert bucket_keys(server, url) == []
    assert open_multipart(server, url) == []
    assert s3_client.head(url).status_code == 410


def test_expired_upload_leaves_nothing_in_the_bucket(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(extra_args=["--expiration", "1"])
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        url = create(http, 20 * MiB)
        assert patch(http, url, 0, data_of(6 * MiB)).status_code == 204
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and http.head(url).status_code != 410:
            time.sleep(0.2)
        assert http.head(url).status_code == 410
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (bucket_keys(server) or open_multipart(server)):
        time.sleep(0.2)
    assert bucket_keys(server) == []
    assert open_multipart(server, url) == []


def test_gc_aborts_multipart_uploads_the_database_does_not_know(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    endpoint, prefix = s3_of(server)
    live = create(s3_client, 20 * MiB)
    assert patch(s3_client, live, 0, data_of(6 * MiB)).status_code == 204
    client = endpoint.client()
    stray_key = f"{prefix}stray-{uuid.uuid4().hex[:8]}"
    client._create_multipart_upload(TEST_BUCKET, stray_key, {})
    stray_fragment = f"{prefix}.fragments/gone-upload/00000000000000000000-3"
    client.put_object(TEST_BUCKET, stray_fragment, io.BytesIO(b"abc"), 3)
    # an object whose upload was never recorded (or whose DELETE failed half way)
    stray_object = f"{prefix}{'Z' * 22}"
    client.put_object(TEST_BUCKET, stray_object, io.BytesIO(b"xyz"), 3)
    finished = create(s3_client, 3, body=b"abc")
    args, env = s3_arguments(endpoint, prefix)
    command = [sys.executable, "-m", "tusd_py", "gc", "--data-dir", str(server.data_dir)]
    if server.database_url:
        command += ["--database-url", server.database_url]
    result = subprocess.run(
        [*command, *args, "--orphan-age", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    keys = [key for key, _ in open_multipart(server)]
    assert stray_key not in keys
    assert prefix + upload_id(live) in keys  # the live upload keeps its multipart upload
    assert stray_fragment not in bucket_keys(server)
    assert stray_object not in bucket_keys(server)
    assert get(finished).content == b"abc"  # a finished upload keeps its object
    # and it goes on
    assert patch(s3_client, live, 6 * MiB, data_of(MiB)).status_code == 204


# --- what one request costs the S3 server -----------------------------------------------


@pytest.fixture
def proxied(
    backend: str, server_factory: Callable[..., ServerProcess], s3_fleet: Any
) -> Iterator[tuple[ServerProcess, TamperProxy]]:
    """A server that reaches its S3 server through a proxy that counts and can tamper."""
    upstream = s3_fleet.endpoint(backend)
    with TamperProxy(upstream) as proxy:
        prefix = f"{uuid.uuid4().hex[:12]}/"
        args, env = s3_arguments(proxy.s3, prefix)
        server = server_factory(extra_args=args, env=env)
        server.s3 = (upstream, prefix)
        yield server, proxy


def test_head_never_calls_s3(proxied: tuple[ServerProcess, TamperProxy]) -> None:
    server, proxy = proxied
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        url = create(http, 20 * MiB)
        assert patch(http, url, 0, data_of(6 * MiB)).status_code == 204
        proxy.reset_counts()
        for _ in range(5):
            assert offset_of(http, url) == 6 * MiB
    assert sum(proxy.counts.values()) == 0


def test_a_part_corrupted_on_its_way_is_refused_and_the_upload_does_not_advance(
    proxied: tuple[ServerProcess, TamperProxy], backend: str, s3_fleet: Any
) -> None:
    if not s3_fleet.endpoint(backend).verifies_checksums:
        pytest.skip("moto's S3 server checks no checksums: nothing would refuse the part")
    server, proxy = proxied
    data = data_of(12 * MiB)
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        url = create(http, len(data))
        assert patch(http, url, 0, data[: 6 * MiB]).status_code == 204
        proxy.corrupt_next_part_upload()
        response = patch(http, url, 6 * MiB, data[6 * MiB :])
        assert response.status_code == 503, response.text
        assert proxy.corrupted == 1
        assert offset_of(http, url) == 6 * MiB
        assert [n for n, *_ in parts_of(server, url)] == [1]
        # the retry goes through and the bytes are exact
        response = patch(http, url, 6 * MiB, data[6 * MiB :])
        assert response.status_code == 204, response.text
    assert get(url).content == data


def test_rss_stays_bounded_for_a_256_mib_patch(
    proxied: tuple[ServerProcess, TamperProxy],
) -> None:
    server, _ = proxied
    size = 256 * MiB
    url = httpx.post(server.files_url, headers={**TUS, "Upload-Length": str(size)}).headers[
        "location"
    ]
    block = os.urandom(MiB)
    baseline = rss(server.pid())
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(server.pid()))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = httpx.patch(
            url,
            content=(block for _ in range(size // MiB)),
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(size),
            },
            timeout=600,
        )
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 204, response.text
    growth = peak - baseline
    # the bound: concurrent part uploads x part size + 32 MiB; one request has at
    # most PARTS_IN_FLIGHT parts in flight (the process-wide limit of 16 is not reached)
    assert growth < PARTS_IN_FLIGHT * P + 32 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
    print(f"RSS growth for a 256 MiB PATCH: {growth / MiB:.1f} MiB")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_s3_unreachable_answers_503_and_head_still_works(
    proxied: tuple[ServerProcess, TamperProxy],
) -> None:
    server, proxy = proxied
    data = data_of(7 * MiB)
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=60) as http:
        url = create(http, len(data))
        assert patch(http, url, 0, data[: 2 * MiB]).status_code == 204
        proxy.stop()  # the object store goes away
        response = patch(http, url, 2 * MiB, data[2 * MiB :])
        assert_error(response, 503, "ERR_UNAVAILABLE")
        assert response.headers["retry-after"]
        # HEAD is answered from the state database alone
        assert offset_of(http, url) == 2 * MiB


def test_serve_refuses_a_missing_bucket_with_a_sentence(
    backend: str, s3_fleet: Any, tmp_path: Any
) -> None:
    endpoint = s3_fleet.endpoint(backend)
    args, env = s3_arguments(endpoint, "x/")
    args[1] = f"s3://missing-{uuid.uuid4().hex[:8]}/x/"
    result = subprocess.run(
        [sys.executable, "-m", "tusd_py", "serve", "--data-dir", str(tmp_path), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "--s3-create-bucket" in result.stderr
    assert "Traceback" not in result.stderr


def test_deferred_upload_declared_empty_is_an_empty_object(
    server: ServerProcess, s3_client: httpx.Client
) -> None:
    url = create(s3_client, defer=True)
    response = patch(s3_client, url, 0, b"", headers={"Upload-Length": "0"})
    assert response.status_code == 204, response.text
    assert get(url).content == b""
    assert open_multipart(server, url) == []
