"""The S3 test servers and the tamper proxy do what the storage tests will rely on.

Why test test helpers: the S3 storage tests trust two claims -- that RGW refuses a part whose
bytes do not match its digest (so a pass there means our digests are right), and that the
proxy's corruption really reaches the server while unarmed traffic goes through unchanged. If
either claim broke, those tests would pass for the wrong reason.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error
from minio.helpers import DictType

from tests.conftest import free_port, missing_service
from tests.s3_proxy import TamperProxy, classify
from tests.s3_servers import (
    MotoServer,
    RgwServer,
    S3Endpoint,
    external_endpoint,
    list_all,
    list_multipart_uploads,
    make_bucket,
    start_moto,
    start_rgw,
    tools_available_rgw,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    reason = tools_available_rgw()
    if reason:
        missing_service(reason)
    server: RgwServer = start_rgw(tmp_path_factory.mktemp("rgw"), free_port())
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    server: MotoServer = start_moto(tmp_path_factory.mktemp("moto"), free_port())
    yield server.endpoint
    server.stop()


@pytest.fixture(params=["moto", "rgw"])
def s3(request: pytest.FixtureRequest) -> S3Endpoint:
    endpoint: S3Endpoint = request.getfixturevalue(request.param)
    return endpoint


def new_bucket(endpoint: S3Endpoint) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    make_bucket(endpoint, name)
    return name


def no_retry_client(endpoint: S3Endpoint) -> Minio:
    """minio retries dropped connections and 5xx itself; a cut must surface here."""
    return Minio(
        endpoint.endpoint,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        secure=endpoint.secure,
        region=endpoint.region,
        http_client=urllib3.PoolManager(retries=False),
    )


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- the servers ------------------------------------------------------------------------


def test_put_get_and_list(s3: S3Endpoint) -> None:
    client = s3.client()
    bucket = new_bucket(s3)
    client.put_object(bucket, "dir/a", io.BytesIO(b"hello"), 5)
    client.put_object(bucket, "other", io.BytesIO(b""), 0)
    response = client.get_object(bucket, "dir/a")
    try:
        assert response.read() == b"hello"
    finally:
        response.close()
        response.release_conn()
    assert list_all(s3, bucket) == ["dir/a", "other"]
    assert list_all(s3, bucket, prefix="dir/") == ["dir/a"]


def test_multipart_uploads_are_listed_until_aborted(s3: S3Endpoint) -> None:
    client = s3.client()
    bucket = new_bucket(s3)
    first = client._create_multipart_upload(bucket, "x/one", {})
    second = client._create_multipart_upload(bucket, "y/two", {})
    assert sorted(list_multipart_uploads(s3, bucket)) == sorted(
        [("x/one", first), ("y/two", second)]
    )
    assert list_multipart_uploads(s3, bucket, prefix="x/") == [("x/one", first)]
    client._abort_multipart_upload(bucket, "x/one", first)
    assert list_multipart_uploads(s3, bucket) == [("y/two", second)]


def test_verifies_checksums_tells_the_truth_about_content_md5(s3: S3Endpoint) -> None:
    client = s3.client()
    bucket = new_bucket(s3)
    upload_id = client._create_multipart_upload(bucket, "k", {})
    body = b"part body" * 1000
    wrong: DictType = {"Content-MD5": md5_b64(b"something else")}
    if s3.verifies_checksums:
        with pytest.raises(S3Error) as refused:
            client._upload_part(bucket, "k", body, wrong, upload_id, 1)
        assert (refused.value.response.status, refused.value.code) == (400, "BadDigest")
    else:  # moto stores it: its acceptance proves nothing about our digests
        client._upload_part(bucket, "k", body, wrong, upload_id, 1)
    etag = client._upload_part(bucket, "k", body, {"Content-MD5": md5_b64(body)}, upload_id, 1)
    assert etag == hashlib.md5(body).hexdigest()
    client._abort_multipart_upload(bucket, "k", upload_id)


def test_rgw_refuses_small_non_final_parts(rgw: S3Endpoint) -> None:
    from minio.datatypes import Part

    client = rgw.client()
    bucket = new_bucket(rgw)
    upload_id = client._create_multipart_upload(bucket, "k", {})
    parts = [
        Part(n, client._upload_part(bucket, "k", b"x" * 1000, None, upload_id, n)) for n in (1, 2)
    ]
    with pytest.raises(S3Error) as refused:
        client._complete_multipart_upload(bucket, "k", upload_id, parts)
    assert refused.value.code == "EntityTooSmall"


# --- the proxy --------------------------------------------------------------------------


def test_proxy_corruption_is_refused_by_rgw_and_clean_parts_pass(rgw: S3Endpoint) -> None:
    bucket = new_bucket(rgw)
    body = bytes(range(256)) * (5 * MiB // 256)
    with TamperProxy(rgw) as proxy:
        client = proxy.s3.client()
        upload_id = client._create_multipart_upload(bucket, "k", {})
        good = client._upload_part(bucket, "k", body, None, upload_id, 1)
        assert good == hashlib.md5(body).hexdigest()

        proxy.corrupt_next_part_upload()
        with pytest.raises(S3Error) as refused:
            client._upload_part(bucket, "k", body, None, upload_id, 2)
        # minio signs the payload's sha256 over plain HTTP; RGW checks it
        assert refused.value.response.status == 400, refused.value
        assert refused.value.code in ("XAmzContentSHA256Mismatch", "BadDigest")
        assert proxy.corrupted == 1

        # disarmed after one shot: the same part goes through, on the same connection pool
        assert client._upload_part(bucket, "k", body, None, upload_id, 2) == good
        parts = client._list_parts(bucket, "k", upload_id).parts
        assert [(p.part_number, p.size) for p in parts] == [(1, len(body)), (2, len(body))]
        counts = proxy.counts
        assert counts["PUT", "part"] == 3
        assert counts["POST", "create-multipart"] == 1
        assert counts["GET", "list-parts"] == 1
        assert proxy.corrupted == 1
        client._abort_multipart_upload(bucket, "k", upload_id)
        assert proxy.counts["DELETE", "abort"] == 1


def test_proxy_corruption_reaches_moto_unnoticed(moto: S3Endpoint) -> None:
    """The reason moto cannot stand in for RGW in digest tests."""
    bucket = new_bucket(moto)
    body = b"m" * MiB
    with TamperProxy(moto) as proxy:
        client = proxy.s3.client()
        upload_id = client._create_multipart_upload(bucket, "k", {})
        proxy.corrupt_next_part_upload()
        etag = client._upload_part(bucket, "k", body, None, upload_id, 1)
        assert proxy.corrupted == 1
        assert etag != hashlib.md5(body).hexdigest()  # it stored the damaged bytes


def test_proxy_cut_drops_the_part(s3: S3Endpoint) -> None:
    bucket = new_bucket(s3)
    body = b"c" * (5 * MiB)
    with TamperProxy(s3) as proxy:
        client = no_retry_client(proxy.s3)
        upload_id = client._create_multipart_upload(bucket, "k", {})
        proxy.cut_next_part_upload()
        with pytest.raises(urllib3.exceptions.HTTPError):
            client._upload_part(bucket, "k", body, None, upload_id, 1)
        assert proxy.cut == 1
        assert client._list_parts(bucket, "k", upload_id).parts == []

        # minio's default client retries a dropped connection by itself: one cut is invisible
        proxy.cut_next_part_upload()
        retrying = proxy.s3.client()
        assert retrying._upload_part(bucket, "k", body, None, upload_id, 1) == (
            hashlib.md5(body).hexdigest()
        )
        assert proxy.cut == 2
        assert proxy.counts["PUT", "part"] == 3
        client._abort_multipart_upload(bucket, "k", upload_id)


def recorder() -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A fake upstream that records every byte it gets and answers nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            while piece := conn.recv(65536):
                received.append(piece)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, received, thread


def test_proxy_frames_keep_alive_requests_and_leaves_chunked_bodies_alone() -> None:
    listener, received, thread = recorder()
    upstream = S3Endpoint(
        "recorder",
        f"127.0.0.1:{listener.getsockname()[1]}",
        "",
        "",
        "",
        secure=False,
        verifies_checksums=False,
    )
    chunked = (
        b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    body = bytes(range(200))
    sized = (
        b"PUT /b/k?partNumber=2&uploadId=u HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 200\r\n\r\n" + body
    )
    get = b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
    with listener, TamperProxy(upstream) as proxy:
        proxy.corrupt_next_part_upload()  # the chunked part passes; the sized one takes it
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(chunked + sized + get)
            sock.shutdown(socket.SHUT_WR)  # the proxy passes the half-close on
            thread.join(10)
        assert not thread.is_alive()
        flipped = bytearray(sized)
        flipped[len(sized) - 200 + 100] ^= 0xFF
        assert b"".join(received) == chunked + bytes(flipped) + get
        assert proxy.counts == {("PUT", "part"): 2, ("GET", "get"): 1}
        assert proxy.corrupted == 1


def test_proxy_passes_a_chunked_put_to_moto(moto: S3Endpoint) -> None:
    """End to end; moto takes unsigned requests (and closes every connection after one)."""
    bucket = new_bucket(moto)
    with TamperProxy(moto) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(
            f"PUT /{bucket}/chunked HTTP/1.1\r\nHost: {proxy.endpoint}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode()
        )
        sock.settimeout(10)
        received = b""
        while piece := sock.recv(65536):
            received += piece
        assert received.startswith(b"HTTP/1.1 200"), received
        assert proxy.counts == {("PUT", "put"): 1}
    response = moto.client().get_object(bucket, "chunked")
    try:
        assert response.read() == b"hello world"
    finally:
        response.close()
        response.release_conn()


@pytest.mark.parametrize(
    ("method", "target", "kind"),
    [
        ("PUT", "/b/k?partNumber=3&uploadId=u", "part"),
        ("PUT", "/b/k", "put"),
        ("PUT", "/b", "other"),
        ("GET", "/b/k", "get"),
        ("HEAD", "/b/k", "get"),
        ("POST", "/b/k?uploads=", "create-multipart"),
        ("POST", "/b/k?uploadId=u", "complete"),
        ("DELETE", "/b/k?uploadId=u", "abort"),
        ("GET", "/b/k?max-parts=1000&uploadId=u", "list-parts"),
        ("GET", "/b?list-type=2&prefix=x", "list"),
        ("GET", "/b?uploads=&prefix=", "list"),
        ("GET", "/b?location=", "other"),
        ("DELETE", "/b/k", "delete"),
        ("POST", "/b?delete=", "delete"),
    ],
)
def test_classify(method: str, target: str, kind: str) -> None:
    assert classify(method, target) == kind


def test_external_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUSD_TEST_S3_ENDPOINT", raising=False)
    assert external_endpoint() is None
    monkeypatch.setenv("TUSD_TEST_S3_ENDPOINT", "https://s3.example.com")
    monkeypatch.setenv("TUSD_TEST_S3_ACCESS_KEY", "AK")
    monkeypatch.setenv("TUSD_TEST_S3_SECRET_KEY", "SK")
    monkeypatch.delenv("TUSD_TEST_S3_REGION", raising=False)
    endpoint = external_endpoint()
    assert endpoint is not None
    assert (endpoint.endpoint, endpoint.secure, endpoint.region) == (
        "s3.example.com",
        True,
        "us-east-1",
    )
    assert endpoint.url == "https://s3.example.com"
    assert endpoint.verifies_checksums
    monkeypatch.setenv("TUSD_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("TUSD_TEST_S3_REGION", "eu-west-1")
    endpoint = external_endpoint()
    assert endpoint is not None
    assert (endpoint.endpoint, endpoint.secure, endpoint.region) == (
        "127.0.0.1:9000",
        False,
        "eu-west-1",
    )
