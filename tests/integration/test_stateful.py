"""Random tus request sequences against a live `tusd-py serve`, checked against a model.

A hypothesis RuleBasedStateMachine drives one real server process per test function (on
SQLite and on PostgreSQL). Every hypothesis example works on uploads it creates itself, so
examples never see each other's state even though they share the server.

Rules: create (random length, deferred length, creation-with-upload, checksum, metadata,
partial), PATCH a chunk (optionally with a correct checksum, optionally declaring a deferred
length), PATCH with a wrong checksum (460), at a wrong offset (409), past the length (413),
PATCH cut mid-body (FIN or RST), a stalled PATCH taken over by a HEAD, PATCH on a final
upload (403), concatenation (final from partials, finished or not), GET (with a Range), DELETE
and requests on deleted uploads (410).

Invariants after every step: no response was a 5xx (nor a broken connection); every live
upload's HEAD matches the model (offset, length or deferred length, metadata, concat); the
bytes file <data-dir>/uploads/<id> starts with the source's first `offset` bytes and never
holds bytes past the length; a finished upload's GET is exactly its source; a deleted upload
answers 410 and its bytes file is gone.

After a cut connection every HEAD must lie in [acknowledged, acknowledged + bytes sent] (no
movement at all with a checksum) and never go backwards; the model adopts the value once it
has stayed put for SETTLE seconds. (A HEAD on a kept-alive connection can reach the server
before it has accepted the cut connection, so the first HEAD may legitimately be lower.)

On failure the request trace of the first failing example (with timings) is printed: races
do not always replay, and hypothesis then reports a FlakyFailure without the sequence.

Knobs: TUSD_STATEFUL_EXAMPLES (default 50), TUSD_STATEFUL_STEPS (default 25).
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import os
import random
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import xxhash
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import ServerProcess, stored_upload_ids
from tests.integration._wire import check_s3_record
from tests.integration._wire import stored as stored_bytes

pytestmark = pytest.mark.s3_too

TUS_VERSION = "1.0.0"
OCTET = "application/offset+octet-stream"
BASE = "/files/"
ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

MAX_LENGTH = 256 * 1024
MAX_LIVE = 8  # live uploads per example (keeps the per-step invariant cheap)
TOO_LARGE_MAX_REST = 16 * 1024  # 413 bodies stay small so they fit the socket buffers
LOCK_PATIENCE = 5.0  # seconds a request may keep answering 423 before that is a failure
ASSEMBLY_PATIENCE = 3.0  # seconds a final upload may take to show its offset once complete
SETTLE = 0.1  # seconds the offset must stay still after a cut connection
STALLED_HEADS = 4  # HEADs sent to take over a stalled PATCH before that counts as a failure
STALLED_WAIT = 2.0  # seconds to wait for the stalled PATCH's answer after each HEAD

EXAMPLES = int(os.environ.get("TUSD_STATEFUL_EXAMPLES", "50"))
STEPS = int(os.environ.get("TUSD_STATEFUL_STEPS", "25"))

ALGORITHMS = ("sha1", "crc32", "md5", "sha256", "sha512", "xxh64", "xxh3", "xxh128")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


METADATA = (
    f"filename {_b64('hello.txt')},filetype {_b64('text/plain')}",
    "is_confidential",
    f"name {_b64('naïve ünïcode - file.bin')},empty_value_key,n {_b64('1')}",
    f"filename {_b64('report.pdf')}",
)

#: Counters across all examples of one test, printed at the end (run with -s to see them).
STATS: collections.Counter[str] = collections.Counter()


def digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "xxh64":
        return xxhash.xxh64(data).digest()
    if algorithm == "xxh3":
        return xxhash.xxh3_64(data).digest()
    if algorithm == "xxh128":
        return xxhash.xxh3_128(data).digest()
    return hashlib.new(algorithm, data).digest()


def checksum_header(algorithm: str, data: bytes, *, wrong: bool = False) -> str:
    raw = bytearray(digest(algorithm, data))
    if wrong:
        raw[0] ^= 0x01
    return f"{algorithm} {base64.b64encode(bytes(raw)).decode('ascii')}"


def corrupt(data: bytes) -> bytes:
    """Same length, every byte different: if any of it lands in the file, we notice."""
    return bytes(b ^ 0xFF for b in data)


def source_bytes(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


LENGTHS = st.one_of(
    st.integers(0, 64), st.integers(0, 4096), st.integers(0, MAX_LENGTH), st.just(MAX_LENGTH)
)
SEEDS = st.integers(0, 2**32 - 1)


def chunk_sizes(rest: int, minimum: int = 0) -> st.SearchStrategy[int]:
    if rest <= minimum:
        return st.just(rest)
    return st.one_of(
        st.just(rest), st.integers(minimum, rest), st.integers(minimum, min(rest, minimum + 1024))
    )


@dataclass(eq=False)
class Upload:
    label: str  # u0, u1, ... in creation order within one example
    id: str
    path: str
    url: str
    source: bytes  # every byte the upload will ever hold (final: the concatenation)
    kind: str  # "plain" | "partial" | "final"
    length_known: bool
    offset: int  # bytes acknowledged (final uploads: 0 until assembled, then the length)
    metadata: str | None = None
    concat: str | None = None  # the Upload-Concat header exactly as we sent it
    parts: tuple[str, ...] = ()  # labels of the partials of a final upload
    assembled: bool = False

    @property
    def length(self) -> int:
        return len(self.source)

    @property
    def finished(self) -> bool:
        if self.kind == "final":
            return self.assembled
        return self.length_known and self.offset == self.length

    def __repr__(self) -> str:  # short: hypothesis prints these in failing sequences
        return f"<{self.label} {self.kind} {self.id} off={self.offset}/{self.length}>"


@dataclass
class RawResult:
    status: int
    headers: dict[str, str]


def read_raw_response(sock: socket.socket, timeout: float) -> RawResult | None:
    """Status and headers of the next response on a raw socket; None if the server hung up."""
    sock.settimeout(timeout)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        buffer += chunk
    head = buffer.partition(b"\r\n\r\n")[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    result = RawResult(int(status_line.split(" ")[1]), headers)
    if 100 <= result.status < 200:  # an interim response: the final one follows
        rest = buffer.partition(b"\r\n\r\n")[2]
        assert not rest, "unexpected bytes after an interim response"
        return read_raw_response(sock, timeout)
    return result


#: The request trace of the first failing example of a run (a flaky failure may not replay).
FIRST_FAILURE: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])


def traced(method: F) -> F:
    """On failure, attach this example's request trace (with timings) to the exception."""

    @functools.wraps(method)
    def wrapper(self: TusMachine, *args: Any, **kwargs: Any) -> Any:
        self.note(f"== {method.__name__}")
        try:
            return method(self, *args, **kwargs)
        except AssertionError as exc:
            if not FIRST_FAILURE:
                trace = "\n".join(self.trace[-200:])
                FIRST_FAILURE.append(f"{exc}\nrequests (ms since the example began):\n{trace}")
            trace = "\n".join(self.trace[-60:])
            exc.add_note(f"last requests of this example (ms since it began):\n{trace}")
            raise

    return wrapper  # type: ignore[return-value]


class TusMachine(RuleBasedStateMachine):
    """The model: what every upload of this example must look like on the wire and on disk."""

    server: ServerProcess  # set on a subclass by the test

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(
            base_url=self.server.base_url,
            headers={"Tus-Resumable": TUS_VERSION},
            timeout=20,
            # several instances: each request may go to another one (tests/integration/
            # test_many_instances.py); Host stays the first's, as behind a load balancer
            transport=getattr(self.server, "transport", None),
        )
        self.uploads: dict[str, Upload] = {}  # live, by label
        self.deleted: dict[str, Upload] = {}
        self.server_errors: list[str] = []
        self.counter = 0
        self.t0 = time.monotonic()
        self.trace: list[str] = []
        STATS["examples"] += 1

    def note(self, text: str) -> None:
        self.trace.append(f"{(time.monotonic() - self.t0) * 1000:9.1f} {text}")

    def teardown(self) -> None:
        self.http.close()

    # --- helpers ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        what: str = "",
    ) -> httpx.Response:
        """One request; 5xx and transport failures fail at once, 423 is retried briefly."""
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            sent = self.describe(headers, content)
            try:
                response = self.http.request(method, path, headers=headers, content=content)
            except httpx.TransportError as exc:
                self.note(f"{method} {path}{sent} -> {exc!r}")
                self.server_errors.append(f"{what}: {method} {path}: {exc!r}")
                raise AssertionError(
                    f"{what}: {method} {path} broke at the transport level: {exc!r}"
                ) from exc
            self.note(
                f"{method} {path}{sent} -> {response.status_code}"
                + "".join(
                    f" {name}={response.headers[name]}"
                    for name in ("Upload-Offset", "Upload-Length", "Location")
                    if name in response.headers
                )
            )
            STATS[f"{method} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{what}: {method} {path} -> {response.status_code}")
                raise AssertionError(
                    f"{what}: {method} {path} answered {response.status_code}: "
                    f"{response.text[:500]!r}"
                )
            assert response.headers.get("Tus-Resumable") == TUS_VERSION, (
                f"{what}: {method} {path} -> {response.status_code} without Tus-Resumable"
            )
            if response.status_code == 423 and time.monotonic() < deadline:
                STATS["423 retried"] += 1
                time.sleep(0.05)
                continue
            return response

    @staticmethod
    def describe(headers: dict[str, str] | None, content: bytes | None) -> str:
        shown = [
            f"{name}={value.split(' ')[0] if name == 'Upload-Checksum' else value}"
            for name, value in (headers or {}).items()
            if name.startswith("Upload-") or name == "Range"
        ]
        if content is not None:
            shown.append(f"body={len(content)}")
        return f" [{' '.join(shown)}]" if shown else ""

    def expect(self, response: httpx.Response, status: int | Iterable[int], what: str) -> None:
        allowed = {status} if isinstance(status, int) else set(status)
        assert response.status_code in allowed, (
            f"{what}: expected {sorted(allowed)}, got {response.status_code} "
            f"{response.text[:300]!r} headers={dict(response.headers)}"
        )

    def pick(self, data: st.DataObject, candidates: list[Upload], label: str) -> Upload:
        chosen = data.draw(st.sampled_from([u.label for u in candidates]), label=label)
        return self.uploads[chosen]

    def bytes_file(self, upload: Upload) -> Path:
        return self.server.data_dir / "uploads" / upload.id

    def patch_headers(self, upload: Upload, offset: int | None = None) -> dict[str, str]:
        return {
            "Content-Type": OCTET,
            "Upload-Offset": str(upload.offset if offset is None else offset),
        }

    def head_offset(self, upload: Upload, what: str) -> int:
        response = self.request("HEAD", upload.path, what=what)
        self.expect(response, 200, f"{what}: HEAD {upload!r}")
        assert "Upload-Offset" in response.headers, f"{what}: HEAD without Upload-Offset"
        return int(response.headers["Upload-Offset"])

    def refresh_finals(self) -> None:
        for upload in self.uploads.values():
            if upload.kind == "final" and not upload.assembled:
                parts = [self.uploads[label] for label in upload.parts]
                if all(part.finished for part in parts):
                    upload.assembled = True
                    upload.offset = upload.length

    def register(self, response: httpx.Response, what: str, **fields: Any) -> Upload:
        location = response.headers.get("Location")
        assert location, f"{what}: 201 without Location"
        parsed = urlsplit(location)
        assert parsed.scheme in ("http", "https") and parsed.netloc, (
            f"{what}: Location is not absolute: {location!r}"
        )
        assert parsed.path.startswith(BASE), f"{what}: Location {location!r} not under {BASE}"
        upload_id = parsed.path[len(BASE) :]
        assert len(upload_id) == 22 and set(upload_id) <= ID_ALPHABET, (
            f"{what}: upload id {upload_id!r} is not 22 URL-safe base64 characters"
        )
        known = {u.id for u in self.uploads.values()} | {u.id for u in self.deleted.values()}
        assert upload_id not in known, f"{what}: server reused upload id {upload_id}"
        upload = Upload(
            label=f"u{self.counter}", id=upload_id, path=parsed.path, url=location, **fields
        )
        self.counter += 1
        self.uploads[upload.label] = upload
        return upload

    # --- rules: creation ----------------------------------------------------------------

    @initialize(data=st.data())
    @traced
    def start(self, data: st.DataObject) -> None:
        """Every example starts with a few uploads, so the steps go to more than creation."""
        for _ in range(data.draw(st.integers(1, 3), label="initial uploads")):
            self._create(data)

    @precondition(lambda self: len(self.uploads) < MAX_LIVE)
    @rule(data=st.data())
    @traced
    def create(self, data: st.DataObject) -> None:
        STATS["rule create"] += 1
        self._create(data)

    def _create(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["plain", "plain", "partial"]), label="kind")
        length = data.draw(LENGTHS, label="length")
        source = source_bytes(data.draw(SEEDS, label="seed"), length)
        deferred = kind == "plain" and data.draw(st.booleans(), label="deferred")
        first = 0
        if length and data.draw(st.booleans(), label="creation-with-upload"):
            first = data.draw(chunk_sizes(length, minimum=1), label="first chunk")
        algorithm = (
            data.draw(st.none() | st.sampled_from(ALGORITHMS), label="checksum") if first else None
        )
        meta = data.draw(st.none() | st.sampled_from(METADATA), label="metadata")

        headers: dict[str, str] = {}
        if deferred:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(length)
        if kind == "partial":
            headers["Upload-Concat"] = "partial"
        if meta is not None:
            headers["Upload-Metadata"] = meta
        body = None
        if first:
            body = source[:first]
            headers["Content-Type"] = OCTET
            if algorithm:
                headers["Upload-Checksum"] = checksum_header(algorithm, body)
        what = f"create {kind} len={length} deferred={deferred} first={first} alg={algorithm}"
        response = self.request("POST", BASE, headers=headers, content=body, what=what)
        self.expect(response, 201, what)
        if first:
            assert response.headers.get("Upload-Offset") == str(first), (
                f"{what}: 201 Upload-Offset {response.headers.get('Upload-Offset')!r}"
            )
        elif "Upload-Offset" in response.headers:
            assert response.headers["Upload-Offset"] == "0", what
        self.register(
            response,
            what,
            source=source,
            kind=kind,
            length_known=not deferred,
            offset=first,
            metadata=meta,
            concat="partial" if kind == "partial" else None,
        )
        self.refresh_finals()

    def _partials(self) -> list[Upload]:
        return [u for u in self.uploads.values() if u.kind == "partial"]

    @precondition(lambda self: len(self.uploads) < MAX_LIVE and self._partials())
    @rule(data=st.data())
    @traced
    def create_final(self, data: st.DataObject) -> None:
        STATS["rule create_final"] += 1
        labels = data.draw(
            st.lists(st.sampled_from([u.label for u in self._partials()]), min_size=1, max_size=4),
            label="parts",
        )
        parts = [self.uploads[label] for label in labels]
        urls = [
            part.url if data.draw(st.booleans(), label="absolute url") else part.path
            for part in parts
        ]
        concat = "final;" + " ".join(urls)
        headers = {"Upload-Concat": concat}
        meta = data.draw(st.none() | st.sampled_from(METADATA), label="metadata")
        if meta is not None:
            headers["Upload-Metadata"] = meta
        what = f"create final of {labels}"
        response = self.request("POST", BASE, headers=headers, what=what)
        self.expect(response, 201, what)
        self.register(
            response,
            what,
            source=b"".join(part.source for part in parts),
            kind="final",
            length_known=True,
            offset=0,
            metadata=meta,
            concat=concat,
            parts=tuple(labels),
        )
        self.refresh_finals()

    # --- rules: PATCH -------------------------------------------------------------------

    def _patchable(self, min_rest: int = 0) -> list[Upload]:
        return [
            u
            for u in self.uploads.values()
            if u.kind != "final" and not u.finished and u.length - u.offset >= min_rest
        ]

    @precondition(lambda self: self._patchable())
    @rule(data=st.data())
    @traced
    def patch_chunk(self, data: st.DataObject) -> None:
        STATS["rule patch_chunk"] += 1
        upload = self.pick(data, self._patchable(), "upload")
        size = data.draw(chunk_sizes(upload.length - upload.offset), label="size")
        declare = not upload.length_known and data.draw(st.booleans(), label="declare length")
        algorithm = data.draw(st.none() | st.sampled_from(ALGORITHMS), label="checksum")
        self._patch(upload, size, declare, algorithm)

    @precondition(lambda self: self._patchable())
    @rule(data=st.data())
    @traced
    def finish_upload(self, data: st.DataObject) -> None:
        """PATCH the rest in one to three chunks (declaring a deferred length on the last)."""
        STATS["rule finish_upload"] += 1
        upload = self.pick(data, self._patchable(), "upload")
        pieces = data.draw(st.integers(1, 3), label="chunks")
        algorithm = data.draw(st.none() | st.sampled_from(ALGORITHMS), label="checksum")
        for piece in range(pieces, 0, -1):
            rest = upload.length - upload.offset
            size = rest if piece == 1 else rest // piece
            self._patch(upload, size, not upload.length_known and piece == 1, algorithm)
        assert upload.finished

    def _patch(self, upload: Upload, size: int, declare: bool, algorithm: str | None) -> None:
        body = upload.source[upload.offset : upload.offset + size]
        headers = self.patch_headers(upload)
        if declare:
            headers["Upload-Length"] = str(upload.length)
        if algorithm:
            headers["Upload-Checksum"] = checksum_header(algorithm, body)
        what = f"PATCH {upload!r} +{size} declare={declare} alg={algorithm}"
        response = self.request("PATCH", upload.path, headers=headers, content=body, what=what)
        self.expect(response, 204, what)
        assert response.headers.get("Upload-Offset") == str(upload.offset + size), (
            f"{what}: 204 Upload-Offset {response.headers.get('Upload-Offset')!r}, "
            f"expected {upload.offset + size}"
        )
        upload.offset += size
        if declare:
            upload.length_known = True
        self.refresh_finals()

    @precondition(lambda self: self._patchable(min_rest=1))
    @rule(data=st.data())
    @traced
    def patch_bad_checksum(self, data: st.DataObject) -> None:
        STATS["rule patch_bad_checksum"] += 1
        upload = self.pick(data, self._patchable(min_rest=1), "upload")
        size = data.draw(chunk_sizes(upload.length - upload.offset, minimum=1), label="size")
        algorithm = data.draw(st.sampled_from(ALGORITHMS), label="checksum")
        how = data.draw(st.sampled_from(["wrong digest", "corrupted body"]), label="how")
        chunk = upload.source[upload.offset : upload.offset + size]
        headers = self.patch_headers(upload)
        if how == "wrong digest":
            body = chunk
            headers["Upload-Checksum"] = checksum_header(algorithm, chunk, wrong=True)
        else:
            body = corrupt(chunk)
            headers["Upload-Checksum"] = checksum_header(algorithm, chunk)
        what = f"PATCH {upload!r} +{size} {algorithm} {how}"
        response = self.request("PATCH", upload.path, headers=headers, content=body, what=what)
        self.expect(response, 460, what)
        if "Upload-Offset" in response.headers:
            assert response.headers["Upload-Offset"] == str(upload.offset), (
                f"{what}: 460 carries Upload-Offset {response.headers['Upload-Offset']}"
            )

    @precondition(lambda self: self._patchable())
    @rule(data=st.data())
    @traced
    def patch_wrong_offset(self, data: st.DataObject) -> None:
        STATS["rule patch_wrong_offset"] += 1
        upload = self.pick(data, self._patchable(), "upload")
        top = upload.length if upload.length_known else upload.length + 16
        wrong = data.draw(
            st.integers(0, max(top, upload.offset + 1)).filter(lambda o: o != upload.offset),
            label="wrong offset",
        )
        room = max(0, upload.length - wrong) if upload.length_known else 1024
        size = data.draw(st.integers(0, min(room, 1024)), label="size")
        padded = upload.source + bytes(wrong + size)
        body = corrupt(padded[wrong : wrong + size])
        what = f"PATCH {upload!r} at wrong offset {wrong} +{size}"
        response = self.request(
            "PATCH", upload.path, headers=self.patch_headers(upload, wrong), content=body, what=what
        )
        self.expect(response, 409, what)
        assert response.headers.get("Upload-Offset") == str(upload.offset), (
            f"{what}: 409 Upload-Offset {response.headers.get('Upload-Offset')!r}, "
            f"expected the current {upload.offset}"
        )

    def _too_large_targets(self) -> list[Upload]:
        return [
            u
            for u in self.uploads.values()
            if u.kind != "final" and u.length_known and u.length - u.offset <= TOO_LARGE_MAX_REST
        ]

    @precondition(lambda self: self._too_large_targets())
    @rule(data=st.data())
    @traced
    def patch_past_length(self, data: st.DataObject) -> None:
        STATS["rule patch_past_length"] += 1
        upload = self.pick(data, self._too_large_targets(), "upload")
        extra = data.draw(st.integers(1, 2048), label="bytes past the length")
        size = upload.length - upload.offset + extra
        body = corrupt((upload.source + bytes(extra))[upload.offset : upload.offset + size])
        what = f"PATCH {upload!r} +{size} (passes the length by {extra})"
        response = self.request(
            "PATCH", upload.path, headers=self.patch_headers(upload), content=body, what=what
        )
        # a finished upload may also say "finished" (403); either way nothing is stored
        self.expect(response, (403, 413) if upload.finished else 413, what)

    @precondition(lambda self: any(u.kind == "final" for u in self.uploads.values()))
    @rule(data=st.data())
    @traced
    def patch_final(self, data: st.DataObject) -> None:
        STATS["rule patch_final"] += 1
        finals = [u for u in self.uploads.values() if u.kind == "final"]
        upload = self.pick(data, finals, "final upload")
        what = f"PATCH final {upload!r}"
        response = self.request(
            "PATCH", upload.path, headers=self.patch_headers(upload), content=b"", what=what
        )
        self.expect(response, 403, what)

    # --- rules: interrupted PATCH -------------------------------------------------------

    def _raw_patch_head(self, upload: Upload, declared: int, checksum: str | None) -> bytes:
        lines = [
            f"PATCH {upload.path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.server.port}",
            f"Tus-Resumable: {TUS_VERSION}",
            f"Content-Type: {OCTET}",
            f"Upload-Offset: {upload.offset}",
            f"Content-Length: {declared}",
        ]
        if checksum:
            lines.append(f"Upload-Checksum: {checksum}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _settle(self, upload: Upload, low: int, high: int, what: str) -> int:
        """HEAD until the offset stays put for SETTLE seconds; every answer within bounds."""
        last = self.head_offset(upload, what)
        first = last
        assert low <= last <= high, (
            f"{what}: first HEAD after the cut says offset {last}, "
            f"expected {low} <= offset <= {high}"
        )
        deadline = time.monotonic() + 5
        still_since = time.monotonic()
        while time.monotonic() - still_since < SETTLE:
            assert time.monotonic() < deadline, f"{what}: offset still moving after 5 s"
            time.sleep(0.02)
            current = self.head_offset(upload, what)
            assert last <= current <= high, (
                f"{what}: offset went from {last} to {current} (bounds {low}..{high})"
            )
            if current != last:
                last, still_since = current, time.monotonic()
        if last != first:
            STATS["cut: offset moved after the first HEAD"] += 1
        return last

    @precondition(lambda self: self._patchable(min_rest=1))
    @rule(data=st.data())
    @traced
    def patch_cut(self, data: st.DataObject) -> None:
        STATS["rule patch_cut"] += 1
        upload = self.pick(data, self._patchable(min_rest=1), "upload")
        rest = upload.length - upload.offset
        declared = data.draw(chunk_sizes(rest, minimum=1), label="Content-Length")
        sent = data.draw(chunk_sizes(declared - 1), label="bytes sent")
        algorithm = data.draw(st.none() | st.sampled_from(ALGORITHMS), label="checksum")
        mode = data.draw(st.sampled_from(["close", "reset", "pause+close"]), label="cut")
        intended = upload.source[upload.offset : upload.offset + declared]
        checksum = checksum_header(algorithm, intended) if algorithm else None
        what = f"cut PATCH {upload!r} sent {sent}/{declared} alg={algorithm} {mode}"

        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        try:
            sock.sendall(self._raw_patch_head(upload, declared, checksum) + intended[:sent])
            self.note(
                f"raw PATCH {upload.path} [Upload-Offset={upload.offset} "
                f"Content-Length={declared} checksum={algorithm}] sent {sent} bytes"
            )
            if mode == "pause+close":
                time.sleep(0.05)
            if mode == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()
            self.note(f"raw PATCH connection {'reset' if mode == 'reset' else 'closed'}")

        acked = upload.offset
        high = acked if algorithm else acked + sent
        upload.offset = self._settle(upload, acked, high, what)
        STATS["cut: bytes kept"] += upload.offset - acked
        STATS["cut: bytes sent"] += sent

    @precondition(lambda self: self._patchable(min_rest=1))
    @rule(data=st.data())
    @traced
    def patch_stalled_then_head(self, data: st.DataObject) -> None:
        """A PATCH stops sending mid-body but keeps the connection; a HEAD takes it over."""
        STATS["rule patch_stalled_then_head"] += 1
        upload = self.pick(data, self._patchable(min_rest=1), "upload")
        rest = upload.length - upload.offset
        declared = data.draw(chunk_sizes(rest, minimum=1), label="Content-Length")
        sent = data.draw(chunk_sizes(declared - 1), label="bytes sent")
        intended = upload.source[upload.offset : upload.offset + declared]
        what = f"stalled PATCH {upload!r} sent {sent}/{declared}, then HEAD"
        acked = upload.offset

        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        try:
            sock.sendall(self._raw_patch_head(upload, declared, None) + intended[:sent])
            self.note(
                f"raw PATCH {upload.path} [Upload-Offset={upload.offset} "
                f"Content-Length={declared}] sent {sent} bytes, connection kept open"
            )
            time.sleep(0.05)  # the server is (most likely) reading the body by now
            seen = acked
            # A HEAD that reaches the server before it has even accepted the stalled
            # connection cannot take anything over; later HEADs must.
            for _ in range(STALLED_HEADS):
                offset = self.head_offset(upload, what)
                assert seen <= offset <= acked + sent, (
                    f"{what}: HEAD says {offset} (before: {seen}), expected <= {acked + sent}"
                )
                seen = offset
                if select.select([sock], [], [], STALLED_WAIT)[0]:
                    break
                STATS["stalled: HEAD repeated"] += 1
            else:
                raise AssertionError(
                    f"{what}: the stalled PATCH was not answered although {STALLED_HEADS} HEADs "
                    f"({STALLED_WAIT} s apart) asked for the upload"
                )
            answer = read_raw_response(sock, timeout=10)
            self.note(f"stalled PATCH answered: {answer}")
        except TimeoutError:
            raise AssertionError(f"{what}: the stalled PATCH's answer did not complete") from None
        finally:
            sock.close()
        assert answer is not None, f"{what}: the stalled PATCH got no answer (connection closed)"
        assert answer.status == 204, f"{what}: the stalled PATCH answered {answer.status}"
        saved = int(answer.headers.get("upload-offset", "-1"))
        # the HEAD that took the upload over reports what the stalled PATCH saved
        assert saved == seen, (
            f"{what}: stalled PATCH answered Upload-Offset {saved}, "
            f"the HEAD that took over said {seen}"
        )
        after = self.head_offset(upload, what)
        assert after == saved, f"{what}: stalled PATCH said it saved {saved}, HEAD now {after}"
        upload.offset = saved
        STATS["stalled: bytes kept"] += saved - acked
        STATS["stalled: bytes sent"] += sent

    # --- rules: reading and termination ---------------------------------------------------

    @precondition(lambda self: self.uploads)
    @rule(data=st.data())
    @traced
    def get(self, data: st.DataObject) -> None:
        STATS["rule get"] += 1
        upload = self.pick(data, list(self.uploads.values()), "upload")
        what = f"GET {upload!r}"
        if not upload.finished:
            response = self.request("GET", upload.path, what=what)
            self.expect(response, 409, what)
            return
        self.check_get(upload, what)
        if upload.length:
            start = data.draw(st.integers(0, upload.length - 1), label="range start")
            end = data.draw(st.integers(start, upload.length - 1), label="range end")
            response = self.request(
                "GET", upload.path, headers={"Range": f"bytes={start}-{end}"}, what=what
            )
            self.expect(response, 206, f"{what} Range {start}-{end}")
            assert response.headers.get("Content-Range") == (
                f"bytes {start}-{end}/{upload.length}"
            ), f"{what}: Content-Range {response.headers.get('Content-Range')!r}"
            assert response.content == upload.source[start : end + 1], (
                f"{what}: Range {start}-{end} body differs from the source"
            )

    def _deletable(self) -> list[Upload]:
        # A partial still needed by an unfinished final stays: what a final should do when a
        # part disappears before it is complete is not specified.
        needed = {
            label
            for u in self.uploads.values()
            if u.kind == "final" and not u.assembled
            for label in u.parts
        }
        return [u for u in self.uploads.values() if u.label not in needed]

    @precondition(lambda self: self._deletable())
    @rule(data=st.data())
    @traced
    def delete(self, data: st.DataObject) -> None:
        STATS["rule delete"] += 1
        upload = self.pick(data, self._deletable(), "upload")
        what = f"DELETE {upload!r}"
        response = self.request("DELETE", upload.path, what=what)
        self.expect(response, 204, what)
        del self.uploads[upload.label]
        self.deleted[upload.label] = upload

    @precondition(lambda self: self.deleted)
    @rule(data=st.data())
    @traced
    def use_deleted(self, data: st.DataObject) -> None:
        STATS["rule use_deleted"] += 1
        chosen = data.draw(st.sampled_from(sorted(self.deleted)), label="deleted upload")
        upload = self.deleted[chosen]
        method = data.draw(st.sampled_from(["HEAD", "PATCH", "GET", "DELETE"]), label="method")
        headers = self.patch_headers(upload) if method == "PATCH" else None
        content = b"" if method == "PATCH" else None
        what = f"{method} deleted {upload!r}"
        response = self.request(method, upload.path, headers=headers, content=content, what=what)
        self.expect(response, 410, what)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    @traced
    def no_server_errors(self) -> None:
        assert not self.server_errors, self.server_errors

    @invariant()
    @traced
    def uploads_match_model(self) -> None:
        for upload in list(self.uploads.values()):
            self.check_head(upload)
            self.check_file(upload)
            if upload.finished:
                self.check_get(upload, f"invariant GET {upload!r}")
        for upload in self.deleted.values():
            what = f"invariant HEAD deleted {upload!r}"
            response = self.request("HEAD", upload.path, what=what)
            self.expect(response, 410, what)
            assert "Upload-Offset" not in response.headers, f"{what}: 410 with Upload-Offset"
            assert upload.id not in stored_upload_ids(self.server), (
                f"{what}: bytes file still exists after DELETE"
            )

    def check_head(self, upload: Upload) -> None:
        what = f"invariant HEAD {upload!r}"

        def head() -> httpx.Response:
            response = self.request("HEAD", upload.path, what=what)
            self.expect(response, 200, what)
            return response

        response = head()
        if upload.kind == "final" and upload.assembled and "Upload-Offset" not in response.headers:
            # concatenation may finish just after the last partial's PATCH was answered
            deadline = time.monotonic() + ASSEMBLY_PATIENCE
            while "Upload-Offset" not in response.headers and time.monotonic() < deadline:
                STATS["final: waited for assembly"] += 1
                time.sleep(0.05)
                response = head()
        h = response.headers
        assert "no-store" in h.get("Cache-Control", ""), (
            f"{what}: Cache-Control {h.get('Cache-Control')!r}"
        )
        if upload.length_known:
            assert h.get("Upload-Length") == str(upload.length), (
                f"{what}: Upload-Length {h.get('Upload-Length')!r}, expected {upload.length}"
            )
            assert "Upload-Defer-Length" not in h, f"{what}: Upload-Defer-Length on a known length"
        else:
            assert h.get("Upload-Defer-Length") == "1", f"{what}: no Upload-Defer-Length: 1"
            assert "Upload-Length" not in h, f"{what}: Upload-Length {h['Upload-Length']!r}"
        assert h.get("Upload-Metadata") == upload.metadata, (
            f"{what}: Upload-Metadata {h.get('Upload-Metadata')!r}, sent {upload.metadata!r}"
        )
        assert h.get("Upload-Concat") == upload.concat, (
            f"{what}: Upload-Concat {h.get('Upload-Concat')!r}, sent {upload.concat!r}"
        )
        if upload.kind == "final" and not upload.assembled:
            assert "Upload-Offset" not in h, (
                f"{what}: unfinished final upload shows Upload-Offset {h['Upload-Offset']}"
            )
        else:
            assert h.get("Upload-Offset") == str(upload.offset), (
                f"{what}: Upload-Offset {h.get('Upload-Offset')!r}, model says {upload.offset}"
            )

    def check_file(self, upload: Upload) -> None:
        what = f"bytes file of {upload!r}"
        if upload.kind == "final" and not upload.assembled:
            return
        if self.server.s3 is not None:
            # S3: a finished upload is one object; an unfinished one, recorded parts and
            # fragments that must cover exactly the acknowledged bytes
            if upload.finished:
                assert stored_bytes(self.server, upload.url) == upload.source, f"{what}: differs"
            else:
                check_s3_record(self.server, upload.id, upload.source, upload.offset)
            return
        path = self.bytes_file(upload)
        if not path.exists():
            assert upload.offset == 0, f"{what}: {path} missing at offset {upload.offset}"
            return
        stored = path.read_bytes()
        assert len(stored) >= upload.offset, (
            f"{what}: file holds {len(stored)} bytes, offset is {upload.offset}"
        )
        prefix = stored[: upload.offset]
        if prefix != upload.source[: upload.offset]:
            first_bad = next(
                i for i, (a, b) in enumerate(zip(prefix, upload.source, strict=False)) if a != b
            )
            raise AssertionError(
                f"{what}: stored byte {first_bad} differs from the source "
                f"(offset {upload.offset}, file size {len(stored)})"
            )
        assert len(stored) <= upload.length, (
            f"{what}: file holds {len(stored)} bytes, more than the upload's {upload.length}"
        )

    def check_get(self, upload: Upload, what: str) -> None:
        response = self.request("GET", upload.path, what=what)
        self.expect(response, 200, what)
        assert response.headers.get("Content-Length") == str(upload.length), (
            f"{what}: Content-Length {response.headers.get('Content-Length')!r}"
        )
        if response.content != upload.source:
            raise AssertionError(
                f"{what}: body ({len(response.content)} bytes) differs from the source "
                f"({upload.length} bytes)"
            )


def run_machine(server: ServerProcess) -> None:
    machine = type("LiveTusMachine", (TusMachine,), {"server": server})
    STATS.clear()
    FIRST_FAILURE.clear()
    started = time.monotonic()
    try:
        for attempt in (1, 2, 3):
            try:
                run_state_machine_as_test(
                    machine,
                    settings=settings(
                        # every step against S3 costs round trips to the gateway: fewer
                        # examples
                        max_examples=EXAMPLES if server.s3 is None else max(5, EXAMPLES // 5),
                        stateful_step_count=STEPS,
                        deadline=None,
                        suppress_health_check=list(HealthCheck),
                        print_blob=True,
                    ),
                )
                break
            except FlakyStrategyDefinition:
                # The model adopts the server's offset after a cut connection, and how many
                # bytes a cut kept depends on timing; later draws are bounded by that offset,
                # so a choice sequence hypothesis replays can draw differently. That is the
                # model's nature, not a server fault (every assertion still fails the test):
                # run again, a few times at most.
                if attempt == 3:
                    raise
                STATS["runs again after an inconsistent draw"] += 1
    except BaseException:
        if FIRST_FAILURE:
            print(f"--- first failure seen (it may not have replayed) ---\n{FIRST_FAILURE[0]}")
        log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        print(f"--- server log (last 4000 chars) ---\n{log[-4000:]}")
        raise
    finally:
        print(f"stateful run: {time.monotonic() - started:.1f}s; {dict(sorted(STATS.items()))}")
    assert server.process is not None and server.process.poll() is None, "server exited"


def test_random_request_sequences(server_factory: Callable[..., ServerProcess]) -> None:
    """Every backend (the backend fixture parametrizes server_factory)."""
    run_machine(server_factory())


def test_checks_can_fail(tmp_path: Path) -> None:
    """The model notices a wrong byte on disk (guards against a check that never fires)."""
    machine = TusMachine.__new__(TusMachine)
    machine.server = ServerProcess(tmp_path)
    (tmp_path / "uploads").mkdir()
    upload = Upload(
        "u0",
        "A" * 22,
        BASE + "A" * 22,
        "http://x" + BASE + "A" * 22,
        source=b"abcdef",
        kind="plain",
        length_known=True,
        offset=4,
    )
    (tmp_path / "uploads" / upload.id).write_bytes(b"abXd")
    with pytest.raises(AssertionError, match="stored byte 2 differs"):
        machine.check_file(upload)
    (tmp_path / "uploads" / upload.id).write_bytes(b"abcdefg")
    with pytest.raises(AssertionError, match="more than the upload"):
        machine.check_file(upload)
    (tmp_path / "uploads" / upload.id).write_bytes(b"abcd")
    machine.check_file(upload)
