"""Small helpers shared by the wire-level integration tests.

Everything here talks to a real `tusd-py serve` process (see tests/conftest.py); nothing
imports the server. `RawConnection` speaks HTTP/1.1 over a plain socket for the cases an
HTTP client library would not let us send: bodies cut short, stalled requests, malformed
header values, `Expect: 100-continue`, paths that must not be normalised.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, stored_upload_ids

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {"Content-Type": "application/offset+octet-stream"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)
MAX_INT = 2**63 - 1


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def metadata(**pairs: str | None) -> str:
    """Upload-Metadata from keyword pairs; None makes a key without a value."""
    return ",".join(key if value is None else f"{key} {b64(value)}" for key, value in pairs.items())


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (so misplaced bytes are noticed)."""
    return bytes((i * 131 + seed * 17 + (i >> 8) * 7) % 251 for i in range(size))


# --- requests -----------------------------------------------------------------------


def create(
    client: httpx.Client,
    length: int | None = None,
    *,
    defer: bool = False,
    meta: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """POST a new upload and return its absolute URL; asserts the 201."""
    response = post(client, length, defer=defer, meta=meta, body=body, headers=headers)
    assert response.status_code == 201, (response.status_code, response.text)
    location = response.headers["location"]
    assert location.startswith("http"), location
    return location


def post(
    client: httpx.Client,
    length: int | None = None,
    *,
    defer: bool = False,
    meta: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "/files/",
) -> httpx.Response:
    request_headers: dict[str, str] = {}
    if length is not None:
        request_headers["Upload-Length"] = str(length)
    if defer:
        request_headers["Upload-Defer-Length"] = "1"
    if meta is not None:
        request_headers["Upload-Metadata"] = meta
    if body is not None:
        request_headers.update(OCTET)
    request_headers.update(headers or {})
    return client.post(path, headers=request_headers, content=body)


def patch(
    client: httpx.Client,
    url: str,
    offset: int | str,
    data: bytes | Iterable[bytes] = b"",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    request_headers = {**OCTET, "Upload-Offset": str(offset), **(headers or {})}
    return client.patch(url, headers=request_headers, content=data)


def upload_all(client: httpx.Client, url: str, data: bytes, offset: int = 0) -> None:
    response = patch(client, url, offset, data[offset:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert response.headers["upload-offset"] == str(len(data))


def offset_of(client: httpx.Client, url: str) -> int:
    response = client.head(url)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["upload-offset"])


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode("ascii")


# --- error bodies -------------------------------------------------------------------


def error_code(response: httpx.Response | RawResponse) -> str:
    """The stable code of an error body (text/plain `ERR_X: Sentence.`)."""
    text = response.text
    match = re.match(r"^(ERR_[A-Z0-9_]+): \S", text)
    assert match, f"error body is not 'ERR_CODE: Sentence.': {text!r}"
    return match.group(1)


def assert_error(response: httpx.Response | RawResponse, status: int, *codes: str) -> None:
    """The response is `status` with one of `codes` in a text/plain error body."""
    got_status = response.status_code
    text = response.text
    assert got_status == status, f"expected {status} {codes}, got {got_status}: {text!r}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("text/plain"), content_type
    code = error_code(response)
    assert code in codes, f"expected one of {codes}, got {code}: {text!r}"


def assert_client_error(response: httpx.Response | RawResponse) -> None:
    status = response.status_code
    assert 400 <= status < 500, f"expected a 4xx, got {status}: {response.text!r}"


def json_error(response: httpx.Response) -> dict[str, str]:
    assert response.headers.get("content-type", "").startswith("application/json")
    body = json.loads(response.content)
    assert isinstance(body, dict)
    return body


# --- the file store -------------------------------------------------------------------


class NotOnFileStore(AssertionError):
    """A test looked at the file store's files on a server that keeps bytes in S3: mark it
    `@pytest.mark.file_store`."""


def uploads_dir(server: ServerProcess) -> Path:
    if server.s3 is not None:
        raise NotOnFileStore("this server keeps its bytes in S3")
    return server.data_dir / "uploads"


def bytes_file(server: ServerProcess, url: str) -> Path:
    return uploads_dir(server) / upload_id(url)


def stored(server: ServerProcess, url: str) -> bytes | None:
    """The bytes the store holds for an upload: its file, or (S3) its assembled object;
    None when the store holds nothing for it."""
    if server.s3 is None:
        path = bytes_file(server, url)
        return path.read_bytes() if path.exists() else None
    from tests.conftest import TEST_BUCKET

    endpoint, prefix = server.s3
    key = prefix + upload_id(url)
    client = endpoint.client()
    try:
        response = client.get_object(TEST_BUCKET, key)
    except Exception:
        if upload_id(url) in stored_upload_ids(server):
            raise NotOnFileStore("an unfinished S3 upload has no object to read yet") from None
        return None
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def state_rows(server: ServerProcess, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of the server's state database, read over a connection of our own ("?" params)."""
    if server.database_url:
        import psycopg

        dsn = server.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn) as conn:
            return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params)]  # type: ignore[arg-type]
    import sqlite3

    with sqlite3.connect(server.data_dir / "tusd.db") as conn:
        return list(conn.execute(sql, params))


def check_s3_record(server: ServerProcess, upload: str, source: bytes, offset: int) -> None:
    """An unfinished S3 upload's record covers exactly `offset` bytes of `source`: each
    recorded part's MD5 matches its bytes, each fragment object holds its bytes."""
    import hashlib

    from tests.conftest import TEST_BUCKET

    position = 0
    parts = state_rows(
        server,
        "SELECT number, size, checksum FROM upload_parts WHERE upload_id = ? ORDER BY number",
        upload,
    )
    for index, (number, size, checksum) in enumerate(parts, start=1):
        assert number == index, f"part numbers of {upload} are not 1..n: {parts}"
        chunk = source[position : position + int(size)]  # type: ignore[call-overload]
        expected = base64.b64encode(hashlib.md5(chunk).digest()).decode()
        assert checksum == expected, f"part {number} of {upload}: MD5 differs from the source"
        position += int(size)  # type: ignore[call-overload]
    assert server.s3 is not None
    client = server.s3[0].client()
    for start, size, key in state_rows(
        server,
        'SELECT "offset", size, key FROM upload_fragments WHERE upload_id = ? ORDER BY "offset"',
        upload,
    ):
        assert start == position, f"fragments of {upload} leave a gap at {position}"
        response = client.get_object(TEST_BUCKET, str(key))
        try:
            held = bytes(response.read())
        finally:
            response.close()
            response.release_conn()
        assert held == source[position : position + int(size)], (  # type: ignore[call-overload]
            f"fragment at {start} of {upload} differs from the source"
        )
        position += int(size)  # type: ignore[call-overload]
    assert position == offset, f"{upload}: parts and fragments hold {position}, offset {offset}"


def stored_uploads(server: ServerProcess) -> set[str]:
    # on a shared server, only the uploads this test created
    return stored_upload_ids(server) - server.uploads_baseline


def all_files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


@dataclass(frozen=True)
class Snapshot:
    """What a client and the disk can see of one upload."""

    status: int
    offset: str | None
    length: str | None
    defer: str | None
    meta: str | None
    concat: str | None
    data: bytes | None


def snapshot(client: httpx.Client, server: ServerProcess, url: str) -> Snapshot:
    head = client.head(url)
    return Snapshot(
        head.status_code,
        head.headers.get("upload-offset"),
        head.headers.get("upload-length"),
        head.headers.get("upload-defer-length"),
        head.headers.get("upload-metadata"),
        head.headers.get("upload-concat"),
        stored(server, url),
    )


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


# --- raw HTTP/1.1 -------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    header_list: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def status_code(self) -> int:
        return self.status


class RawConnection:
    """One TCP connection to the server; requests are written byte for byte."""

    def __init__(self, server: ServerProcess, timeout: float = 10.0) -> None:
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_head(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]] = (),
        *,
        tus: bool = True,
    ) -> None:
        """Request line and headers (bytes values are sent as they are, str as latin-1)."""
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        lines = [
            f"{method} {path} HTTP/1.1".encode(),
            f"Host: 127.0.0.1:{self.server.port}".encode(),
        ]
        if tus:
            lines.append(b"Tus-Resumable: 1.0.0")
        for name, value in items:
            raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
            lines.append(name.encode("latin-1") + b": " + raw)
        self.send(b"\r\n".join(lines) + b"\r\n\r\n")

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]] = (),
        body: bytes = b"",
        *,
        tus: bool = True,
    ) -> RawResponse:
        items: list[tuple[str, str | bytes]] = (
            list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        )
        if body and not any(
            name.lower() in ("content-length", "transfer-encoding") for name, _ in items
        ):
            items.append(("Content-Length", str(len(body))))
        self.send_head(method, path, items, tus=tus)
        if body:
            self.send(body)
        return self.read_response(head=method == "HEAD")

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a response body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_response(self, *, head: bool = False, timeout: float | None = None) -> RawResponse:
        """The next response (a 1xx is returned on its own; call again for the final one)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response: {self.buffer!r}")
        raw_head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        _version, status, *reason = status_line.split(" ", 2)
        response = RawResponse(int(status), reason[0] if reason else "")
        for line in header_lines:
            name, _, value = line.partition(":")
            response.header_list.append((name.strip().lower(), value.strip()))
            key = name.strip().lower()
            if key in response.headers:
                response.headers[key] += ", " + value.strip()
            else:
                response.headers[key] = value.strip()
        if head or response.status < 200 or response.status in (204, 304):
            return response
        if "content-length" in response.headers:
            response.body = self._read_exact(int(response.headers["content-length"]))
        elif response.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                body += self._read_exact(size)
                self._read_line()
            response.body = body
        else:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def raw_request(
    server: ServerProcess,
    method: str,
    path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]] = (),
    body: bytes = b"",
    *,
    tus: bool = True,
) -> RawResponse:
    with RawConnection(server) as connection:
        return connection.request(method, path, headers, body, tus=tus)


def chunked(data: bytes, size: int = 1000) -> bytes:
    """`data` in HTTP/1.1 chunked transfer coding, terminated."""
    out = b""
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"
