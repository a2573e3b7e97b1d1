"""What both drivers do the same way around a call: the checksum header, a response read
into a Reply, what an upload's HEAD says, and a download's partial file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tusd_protocol.checksums import new_hasher
from tusd_protocol.headers import Checksum, format_checksum, parse_metadata

from .errors import UploadFailed
from .flow import NO_ANSWER, TUS_VERSION, Reply

#: bytes of an answer's body kept (an error's "ERR_CODE: sentence")
ANSWER_TEXT = 2048


def checksum_header(algorithm: str, blocks: Iterable[bytes]) -> str:
    hasher = new_hasher(algorithm)
    for block in blocks:
        hasher.update(block)
    return format_checksum(Checksum(algorithm, hasher.digest()))


def reply_of(response: httpx.Response, text: bytes) -> Reply:
    return Reply(
        response.status_code,
        {name.lower(): value for name, value in response.headers.items()},
        text[:ANSWER_TEXT].decode("utf-8", "replace"),
    )


def no_answer(exc: BaseException) -> Reply:
    return Reply(NO_ANSWER, error=str(exc) or type(exc).__name__)


@dataclass(frozen=True)
class UploadInfo:
    """What HEAD says of an upload."""

    url: str
    offset: int
    length: int | None
    metadata: Mapping[str, str | None]
    expires: str | None
    concat: str | None

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset >= self.length


#: what a bodiless answer means
WHY = {
    404: ("ERR_NOT_FOUND", "There is no upload at this URL (or it is not yours)."),
    410: ("ERR_GONE", "The upload was terminated or has expired."),
    0: ("ERR_NO_ANSWER", "The server did not answer."),
}


def info_of(url: str, reply: Reply) -> UploadInfo:
    if not 200 <= reply.status < 300:
        code, _, sentence = reply.text.partition(": ")
        if not code.startswith("ERR_"):  # a HEAD answer has no body to say why
            code, sentence = WHY.get(reply.status, (f"HTTP_{reply.status}", reply.text))
        raise UploadFailed(reply.status, code, sentence.strip() or reply.error or "refused")
    offset = reply.header("upload-offset") or "0"
    length = reply.header("upload-length")
    raw = reply.header("upload-metadata")
    metadata = parse_metadata(raw) if raw else {}
    return UploadInfo(
        url=url,
        offset=int(offset),
        length=int(length) if length and length.isdigit() else None,
        metadata={
            key: None if value is None else value.decode("utf-8", "replace")
            for key, value in metadata.items()
        },
        expires=reply.header("upload-expires"),
        concat=reply.header("upload-concat"),
    )


def tus_headers(extra: Mapping[str, str]) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


class PartialDownload:
    """`FILE.part` holds what arrived so far; `FILE.part.json` says from which URL and
    which version (ETag) of it, so that a later run asks for the rest of the same bytes."""

    def __init__(self, target: Path, url: str) -> None:
        self.target = target
        self.part = target.with_name(target.name + ".part")
        self.sidecar = target.with_name(target.name + ".part.json")
        self.url = url
        self.etag: str | None = None
        self.have = 0
        if self.part.exists() and self.sidecar.exists():
            try:
                saved = json.loads(self.sidecar.read_text())
            except ValueError:
                saved = {}
            if saved.get("url") == url:
                self.etag = saved.get("etag")
                self.have = self.part.stat().st_size
        if self.have == 0:
            self.part.write_bytes(b"")

    def request_headers(self) -> dict[str, str]:
        if self.have == 0:
            return {}
        headers = {"Range": f"bytes={self.have}-"}
        if self.etag:
            headers["If-Range"] = self.etag
        return headers

    def begin(self, response: httpx.Response) -> int | None:
        """The answer to our GET: where its bytes go (None: nothing more to fetch)."""
        if response.status_code == 416 and self.have:
            return None  # we have it all already
        if response.status_code == 206:
            start = content_range_start(response.headers.get("content-range", ""))
            if start != self.have:
                raise UploadFailed(206, "ERR_BAD_RANGE", "The server sent another range.")
        elif response.status_code == 200:
            self.have = 0  # the whole file (it changed, or ranges are not offered)
            os.truncate(self.part, 0)
        else:
            raise UploadFailed(response.status_code, f"HTTP_{response.status_code}", "GET failed")
        self.etag = response.headers.get("etag")
        self.sidecar.write_text(json.dumps({"url": self.url, "etag": self.etag}))
        return self.have

    def finish(self) -> None:
        os.replace(self.part, self.target)
        self.sidecar.unlink(missing_ok=True)


def content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    unit, _, rest = value.partition(" ")
    first = rest.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


class TryAgain(Exception):
    """A download answer worth asking again (503, say)."""


def total_of(response: httpx.Response, start: int) -> int | None:
    """A download's whole size: where this answer starts, plus its Content-Length."""
    length = response.headers.get("content-length")
    return start + int(length) if length and length.isdigit() else None
