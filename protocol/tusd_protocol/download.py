"""Reading a finished upload back: plain HTTP GET, the same in every dialect (PROTOCOL 24).

Which bytes to send and with which status (200, 206, 304, 416) is decided here from the
stored upload and the request's Range, If-None-Match and If-Range; so are the entity tag
and the safe Content-Type and Content-Disposition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from .commands import Download
from .errors import RangeNotSatisfiable, UploadNotFinished
from .headers import metadata_text
from .rules import check_available
from .state import Upload, UploadStatus


@dataclass(frozen=True)
class ByteRange:
    start: int
    #: inclusive
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(value: str | None, length: int) -> ByteRange | None:
    """PROTOCOL 24: one byte range, or None to send everything.

    Multiple ranges and syntax we do not understand are ignored (RFC 9110 allows serving
    the whole representation); an unsatisfiable range raises 416.
    """
    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if len(first) > 19 or len(last) > 19:
        return None
    if first:
        start = int(first)
        end = min(int(last), length - 1) if last else length - 1
        if last and int(last) < start:
            return None
        if start >= length:
            raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{length}"})
    else:
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{length}"})
        start = max(length - suffix, 0)
        end = length - 1
    return ByteRange(start, end)


def check_downloadable(upload: Upload, now: datetime) -> None:
    check_available(upload, now)
    if upload.status is not UploadStatus.FINISHED:
        raise UploadNotFinished()


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
#: types a browser may show in place without running anything of the uploader's
INLINE_TYPES = frozenset(
    {
        "text/plain",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/webm",
        "audio/mp4",
        "video/mpeg",
        "video/mp4",
        "video/webm",
        "video/ogg",
    }
)


def content_headers(metadata: dict[str, bytes | None]) -> dict[str, str]:
    """PROTOCOL 24: Content-Type from `filetype` when safe; Content-Disposition."""
    filetype = (metadata_text(metadata, "filetype") or "").strip().lower()
    content_type = filetype if _MEDIA_TYPE.fullmatch(filetype) else "application/octet-stream"
    disposition = "inline" if content_type in INLINE_TYPES else "attachment"
    filename = metadata_text(metadata, "filename")
    if filename:
        disposition += _disposition_filename(filename)
    return {"Content-Type": content_type, "Content-Disposition": disposition}


def _disposition_filename(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1][:255]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@dataclass(frozen=True)
class DownloadPlan:
    """What a GET answers: status, the bytes [start, end) to send, and its headers."""

    status: int
    start: int
    end: int
    headers: dict[str, str]

    @property
    def sends_body(self) -> bool:
        return self.status in (200, 206)


def entity_tag(upload: Upload) -> str:
    """Strong, and stable for the life of the upload: a finished upload never changes."""
    return f'"{upload.id}-{upload.length}"'


def decide_download(
    upload: Upload,
    command: Download,
    metadata: dict[str, bytes | None],
    now: datetime,
    ranges: bool = True,
) -> DownloadPlan:
    """PROTOCOL 24: 200 with everything, 206 with one range, 304 when the client's copy is
    current (If-None-Match), or 416; `ranges` False when the store cannot read ranges."""
    check_downloadable(upload, now)
    assert upload.length is not None
    etag = entity_tag(upload)
    headers = {
        **content_headers(metadata),
        "ETag": etag,
        "Accept-Ranges": "bytes" if ranges else "none",
        "Cache-Control": "private, max-age=0, must-revalidate",
        "X-Content-Type-Options": "nosniff",
    }
    if command.if_none_match is not None and _matches(command.if_none_match, etag):
        return DownloadPlan(304, 0, 0, headers)
    # If-Range that does not name the current entity: the client's partial copy is of
    # another one, so the Range is ignored, even an unsatisfiable one (RFC 9110 13.1.5)
    range_applies = ranges and (command.if_range is None or command.if_range.strip() == etag)
    byte_range = parse_range(command.range, upload.length) if range_applies else None
    if byte_range is None:
        start, end, status = 0, upload.length, 200
    else:
        start, end, status = byte_range.start, byte_range.end + 1, 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{upload.length}"
    headers["Content-Length"] = str(end - start)
    return DownloadPlan(status, start, end, headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match: `*` or a list of tags, weak ones compared weakly (RFC 9110 13.1.2)."""
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
