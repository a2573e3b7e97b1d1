"""The upload flow without I/O: what to send next, and what an answer means.

A flow is a generator. It yields steps (a `Call` to make, a `Pause` to wait, a `Created`
upload URL to remember) and is sent back a `Reply` for each `Call` (None for the others);
it returns the upload's URL. The drivers (sync.py with httpx.Client, aio.py with
httpx.AsyncClient) only carry steps out, so both behave the same by construction, and the
flow's decisions are tested without a network (tests/unit/test_client_flow.py).

Retries: connection errors, 409 (the offset moved: learn it again), 423 (a previous
request still holds the upload), 429 and 5xx are tried again after a pause, exponential
with full jitter and at least the server's `Retry-After`; after a failed PATCH the offset
is learnt again with HEAD, so nothing is sent twice and nothing is skipped. A request that
moved the upload forward resets the count: a long upload on a bad line may fail many
times, just never `max_retries` times in a row.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tusd_protocol.headers import format_metadata

from .errors import UploadFailed

TUS_VERSION = "1.0.0"
OFFSET_STREAM = "application/offset+octet-stream"
#: statuses after which the same request may succeed later
RETRYABLE = frozenset({409, 423, 429, 500, 502, 503, 504})
#: status 0: no answer at all (the connection failed or was cut)
NO_ANSWER = 0
#: the checksum algorithms we prefer, best first, when the server lists them
PREFERRED_CHECKSUMS = ("xxh3", "sha1")


@dataclass(frozen=True)
class Body:
    """Bytes [start, end) of the upload's source; `end` None: up to the end of a stream
    (deferred length), found while sending."""

    start: int
    end: int


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    headers: Mapping[str, str]
    body: Body | None = None
    #: the algorithm whose digest of the body the driver adds as Upload-Checksum
    checksum: str | None = None


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Created:
    """An upload exists at `url` (the driver remembers it for a later resume)."""

    url: str


@dataclass(frozen=True)
class Read:
    """A stream of unknown length: take its next bytes [start, up to end) into the spool
    (the bytes in flight, kept until the server acknowledged them); answered by Filled."""

    start: int
    end: int


@dataclass(frozen=True)
class Filled:
    #: where the spooled bytes end (less than Read.end at the stream's end)
    end: int
    #: the stream ended there
    last: bool


Step = Call | Pause | Created | Read


@dataclass(frozen=True)
class Reply:
    status: int
    #: names in lower case
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the start of the body (error answers: "ERR_CODE: sentence")
    text: str = ""
    #: why there was no answer (status 0)
    error: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class Capabilities:
    """What the server said in its OPTIONS answer."""

    extensions: frozenset[str] = frozenset()
    checksums: tuple[str, ...] = ()
    max_size: int | None = None

    @classmethod
    def from_reply(cls, reply: Reply) -> Capabilities:
        if not 200 <= reply.status < 300:
            return cls()  # a server that does not answer OPTIONS: the core protocol only
        extensions = _csv(reply.header("tus-extension"))
        checksums = tuple(_csv(reply.header("tus-checksum-algorithm")))
        max_size = reply.header("tus-max-size")
        return cls(
            frozenset(extensions),
            checksums,
            int(max_size) if max_size and max_size.isdigit() else None,
        )

    def checksum(self, wanted: str | None) -> str | None:
        """The algorithm to use: `wanted` ("auto": the best the server lists; "none": none)."""
        if wanted == "none" or wanted is None:
            return None
        if "checksum" not in self.extensions:
            if wanted == "auto":
                return None
            raise UploadFailed(0, "ERR_CHECKSUM_UNSUPPORTED", "The server takes no checksums.")
        if wanted == "auto":
            return next((a for a in PREFERRED_CHECKSUMS if a in self.checksums), None)
        if wanted not in self.checksums:
            raise UploadFailed(
                0,
                "ERR_CHECKSUM_UNSUPPORTED",
                f"The server does not take {wanted} checksums (it lists "
                f"{', '.join(self.checksums) or 'none'}).",
            )
        return wanted


def _csv(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 10
    first_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, reply: Reply, rng: random.Random) -> float:
        """Full jitter over an exponential ceiling, never shorter than Retry-After."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return max(rng.uniform(0, ceiling), retry_after(reply) or 0.0)


def retry_after(reply: Reply, now: datetime | None = None) -> float | None:
    value = reply.header("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def is_retryable(reply: Reply) -> bool:
    return reply.status == NO_ANSWER or reply.status in RETRYABLE


def failure(reply: Reply, doing: str) -> UploadFailed:
    """The error of an answer that ends the upload, with the server's code and sentence."""
    if reply.status == NO_ANSWER:
        return UploadFailed(0, "ERR_NO_ANSWER", f"{doing}: no answer ({reply.error}).")
    code, _, sentence = reply.text.partition(": ")
    if not code.startswith("ERR_"):
        code, sentence = f"HTTP_{reply.status}", reply.text
    return UploadFailed(reply.status, code, f"{doing}: {sentence.strip() or 'refused'}")


@dataclass(frozen=True)
class UploadJob:
    """One upload (or one partial of a parallel upload): which bytes, where, how."""

    endpoint: str
    #: the bytes' count, None for a stream of unknown length (deferred length)
    size: int | None
    #: where this job's bytes begin in the source (partials of a parallel upload)
    source_start: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: bytes per PATCH (None: the rest in one request)
    chunk_size: int | None = None
    #: "auto", "none" or an algorithm name
    checksum: str | None = "auto"
    #: resume this upload instead of creating one
    resume_url: str | None = None
    #: "partial" for a piece of a parallel upload
    concat: str | None = None
    #: send the first bytes with the POST (creation-with-upload, when offered): a small
    #: file needs one request. At most CREATION_BODY: a POST cut in its body loses its
    #: bytes and leaves an upload behind that the client never learns the URL of
    data_during_creation: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class UploadFlow:
    """The steps of one upload. `offset` is what the server acknowledged so far."""

    def __init__(
        self, job: UploadJob, capabilities: Capabilities, rng: random.Random | None = None
    ) -> None:
        self.job = job
        self.capabilities = capabilities
        self.rng = rng or random.Random()
        self.algorithm = capabilities.checksum(job.checksum)
        #: bytes per PATCH: a checksum covers one request, and an interrupted request that
        #: carries one keeps nothing (PROTOCOL.md 18), so with checksums the default is
        #: CHECKSUMMED_CHUNK rather than the whole rest
        self.chunk_size = job.chunk_size or (CHECKSUMMED_CHUNK if self.algorithm else None)
        #: what chunk_size grows back to after it was cut down (see send_chunk)
        self.full_chunk = self.chunk_size
        #: failed requests in a row, without progress in between
        self.failures = 0
        self.url: str | None = None
        self.offset = 0
        #: the length once known (a stream's is learnt at its end)
        self.length = job.size
        #: whether the server knows the length (a stream's is told with its last PATCH)
        self.length_told = job.size is not None
        #: a stream: where the spooled bytes begin and end
        self.spooled_start = 0
        self.spooled_end = 0
        #: the upload was resumed (not created by this flow), from this offset
        self.resumed = False
        self.resumed_from = 0

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION, **self.job.headers, **extra}

    @property
    def done(self) -> bool:
        return self.length_told and self.length is not None and self.offset >= self.length

    # --- the whole flow ----------------------------------------------------------------

    def run(self) -> Generator[Step, Reply | Filled | None, str]:
        job = self.job
        limit = self.capabilities.max_size
        if job.size is not None and limit is not None and job.size > limit:
            raise UploadFailed(
                413,
                "ERR_UPLOAD_TOO_LARGE",
                f"The file has {job.size} bytes; the server takes at most {limit}.",
            )
        if job.resume_url is not None:
            offset = yield from self.learn_offset(job.resume_url)
            if offset is not None:
                self.url, self.offset, self.resumed = job.resume_url, offset, True
                self.resumed_from = offset
        if self.url is None:
            yield from self.create()
        assert self.url is not None
        while not self.done:
            if not self.length_told and self.offset >= self.spooled_end:
                if self.resumed and self.offset > 0:
                    raise UploadFailed(
                        0,
                        "ERR_STREAM_NOT_RESUMABLE",
                        "A stream cannot be resumed from the middle: its bytes are gone.",
                    )
                filled = yield Read(self.offset, self.offset + (self.chunk_size or STREAM_CHUNK))
                assert isinstance(filled, Filled)
                self.spooled_start, self.spooled_end = self.offset, filled.end
                if filled.last:
                    self.length = filled.end
            yield from self.send_chunk()
        return self.url

    # --- creating ----------------------------------------------------------------------

    def create(self) -> Generator[Step, Reply | Filled | None, None]:
        job = self.job
        extra: dict[str, str] = {}
        if job.size is None:
            if "creation-defer-length" not in self.capabilities.extensions:
                raise UploadFailed(
                    0,
                    "ERR_DEFER_UNSUPPORTED",
                    "The server needs each upload's length up front; this source has none.",
                )
            extra["Upload-Defer-Length"] = "1"
        else:
            extra["Upload-Length"] = str(job.size)
        if job.metadata:
            extra["Upload-Metadata"] = format_metadata(
                {key: value.encode() for key, value in job.metadata.items()}
            )
        if job.concat:
            extra["Upload-Concat"] = job.concat
        body: Body | None = None
        if (
            job.data_during_creation
            and job.size
            and "creation-with-upload" in self.capabilities.extensions
        ):
            body = Body(0, min(self.chunk_end(0), CREATION_BODY))
            extra["Content-Type"] = OFFSET_STREAM
        attempt = 0
        while True:
            reply = yield Call("POST", job.endpoint, self.headers(**extra), body, self.sum(body))
            assert isinstance(reply, Reply)
            if reply.status != 201 and body is not None:
                # a POST cut in its body may or may not have created an upload, and on a
                # line that drops it would be cut again: create without bytes from now on
                body = None
                extra.pop("Content-Type")
            if reply.status == 201 and reply.header("location"):
                self.url = absolute(job.endpoint, reply.header("location") or "")
                offset = reply.header("upload-offset")
                self.offset = int(offset) if offset and offset.isdigit() else 0
                yield Created(self.url)
                return
            if reply.status == 201:
                raise UploadFailed(201, "ERR_NO_LOCATION", "The server created no upload URL.")
            attempt = yield from self.pause_or_fail(reply, attempt, "Creating the upload")

    # --- sending -----------------------------------------------------------------------

    def chunk_end(self, start: int) -> int:
        """Where the PATCH that begins at `start` ends."""
        end = self.spooled_end if not self.length_told else self.length
        assert end is not None
        return end if self.chunk_size is None else min(end, start + self.chunk_size)

    def send_chunk(self) -> Generator[Step, Reply | Filled | None, None]:
        """One PATCH from the acknowledged offset. After a failure: a pause, then the
        offset learnt again with HEAD (the next call sends from there).

        A request that carries a checksum keeps nothing when it is cut (PROTOCOL.md 18), so
        on a line that drops every few MiB a large checksummed chunk would never get
        through: a chunk lost whole halves the chunk size (down to MIN_CHUNK), and each
        chunk that gets through doubles it again, up to the size asked for.
        """
        assert self.url is not None
        start = self.offset
        body = Body(start, self.chunk_end(start))
        extra = {"Upload-Offset": str(start), "Content-Type": OFFSET_STREAM}
        telling = not self.length_told and self.length == body.end
        if telling:
            extra["Upload-Length"] = str(self.length)  # a stream's last PATCH
        reply = yield Call("PATCH", self.url, self.headers(**extra), body, self.sum(body))
        assert isinstance(reply, Reply)
        if reply.status == 204:
            told = reply.header("upload-offset")
            if told is None or not told.isdigit() or int(told) < start:
                raise UploadFailed(204, "ERR_BAD_OFFSET", "The server's answer has no offset.")
            self.offset = int(told)
            self.length_told = self.length_told or telling
            self.failures = 0
            if self.chunk_size is not None and self.full_chunk is not None:
                self.chunk_size = min(self.full_chunk, self.chunk_size * 2)
            return
        if reply.status in (404, 410):
            raise failure(reply, "The upload is gone")
        self.failures = yield from self.pause_or_fail(reply, self.failures, "Sending bytes")
        offset = yield from self.learn_offset(self.url)
        if offset is None:
            raise UploadFailed(404, "ERR_UPLOAD_GONE", "The upload is gone.")
        if offset > start:
            self.failures = 0  # bytes were kept: progress
        elif self.algorithm and self.chunk_size is not None:
            self.chunk_size = max(MIN_CHUNK, (body.end - body.start) // 2)
        if not self.length_told and offset < self.spooled_start:
            raise UploadFailed(
                0,
                "ERR_STREAM_NOT_RESUMABLE",
                f"The server went back to offset {offset}; those bytes of the stream are gone.",
            )
        self.offset = offset

    def learn_offset(self, url: str) -> Generator[Step, Reply | Filled | None, int | None]:
        """HEAD: the server's offset, or None when the upload is gone (or not ours)."""
        attempt = 0
        while True:
            reply = yield Call("HEAD", url, self.headers())
            assert isinstance(reply, Reply)
            if 200 <= reply.status < 300:
                offset = reply.header("upload-offset")
                if offset is None or not offset.isdigit():
                    raise UploadFailed(reply.status, "ERR_BAD_OFFSET", "HEAD gave no offset.")
                length = reply.header("upload-length")
                if length and length.isdigit():
                    self.length_told = True
                    self.length = int(length)
                return int(offset)
            if reply.status in (403, 404, 410):
                return None  # gone, or not ours: a resume starts anew (as tus-js-client does)
            attempt = yield from self.pause_or_fail(reply, attempt, "Asking for the offset")

    def pause_or_fail(
        self, reply: Reply, attempt: int, doing: str
    ) -> Generator[Step, Reply | Filled | None, int]:
        if not is_retryable(reply) or attempt >= self.job.retry.max_retries:
            raise failure(reply, doing)
        attempt += 1
        yield Pause(self.job.retry.delay(attempt, reply, self.rng))
        return attempt

    def sum(self, body: Body | None) -> str | None:
        return self.algorithm if body is not None and body.end > body.start else None


#: bytes per PATCH of a stream of unknown length: each is kept in a spool file until the
#: server acknowledged it, so that it can be sent again
STREAM_CHUNK = 8 * 1024 * 1024
#: bytes per PATCH by default when each request carries a checksum
CHECKSUMMED_CHUNK = 32 * 1024 * 1024
#: the smallest a checksummed chunk is cut down to on a line that keeps dropping
MIN_CHUNK = 256 * 1024
#: the most bytes sent with the POST (creation-with-upload)
CREATION_BODY = 1024 * 1024


def absolute(base: str, location: str) -> str:
    import urllib.parse

    return urllib.parse.urljoin(base, location)


def create_final(
    job: UploadJob, partial_urls: list[str], rng: random.Random | None = None
) -> Generator[Step, Reply | Filled | None, str]:
    """The POST that joins a parallel upload's partials (concatenation); its URL."""
    headers = {
        "Tus-Resumable": TUS_VERSION,
        **job.headers,
        "Upload-Concat": "final;" + " ".join(partial_urls),
    }
    if job.metadata:
        headers["Upload-Metadata"] = format_metadata(
            {key: value.encode() for key, value in job.metadata.items()}
        )
    rng = rng or random.Random()
    attempt = 0
    while True:
        reply = yield Call("POST", job.endpoint, headers)
        assert isinstance(reply, Reply)
        if reply.status == 201 and reply.header("location"):
            url = absolute(job.endpoint, reply.header("location") or "")
            yield Created(url)
            return url
        if not is_retryable(reply) or attempt >= job.retry.max_retries:
            raise failure(reply, "Joining the pieces")
        attempt += 1
        yield Pause(job.retry.delay(attempt, reply, rng))


def split(size: int, parts: int, minimum: int = 5 * 1024 * 1024) -> list[tuple[int, int]]:
    """[start, end) ranges for a parallel upload: `parts` near-equal pieces, none smaller
    than `minimum` (fewer pieces for a small file)."""
    count = max(1, min(parts, size // minimum if minimum else parts))
    step, extra = divmod(size, count)
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in range(count):
        end = start + step + (1 if index < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges
