"""Everything a tus request may do, decided without I/O.

Each function takes the stored upload (when there is one), the request's headers (any
mapping looked up with lower-case names, such as starlette's Headers or a plain dict) and
the server's limits, and returns a decision or raises a ProtocolError. The server executes
decisions; it never re-derives them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from urllib.parse import quote

from .checksums import new_hasher
from .errors import (
    BodyExceedsLength,
    ChecksumMismatch,
    EntityTooLarge,
    FinalUploadNotPatchable,
    HeaderTooLarge,
    InvalidChecksum,
    InvalidDeferLength,
    InvalidLength,
    InvalidOffset,
    InvalidPartial,
    LengthAlreadySet,
    LengthConflict,
    LengthRequired,
    LengthTooSmall,
    MethodOverrideNotAllowed,
    OffsetMismatch,
    ProtocolError,
    RangeNotSatisfiable,
    ServerFault,
    StorageRoomExceeded,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadGone,
    UploadNotFinished,
)
from .headers import (
    ChecksumHeader,
    ConcatFinal,
    ConcatHeader,
    ConcatPartial,
    format_http_date,
    format_uint,
    metadata_text,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_uint,
)
from .state import GONE_STATUSES, ConcatKind, Upload, UploadStatus

Headers = Mapping[str, str]

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA_HEADER = 16 * 1024
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)


@dataclass(frozen=True)
class Limits:
    """What this server accepts: the knobs the decisions depend on."""

    #: largest upload in bytes; None = no limit
    max_size: int | None = None
    #: how long an idle unfinished upload lives; None = forever
    expiration: timedelta | None = None


# --- version, method ------------------------------------------------------------------


def check_tus_resumable(method: str, headers: Headers) -> None:
    """PROTOCOL 2/3: every request but OPTIONS must speak 1.0.0."""
    if method == "OPTIONS":
        return
    if headers.get("tus-resumable") != TUS_VERSION:
        raise UnsupportedVersion(
            f"This server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION}.",
            headers={"Tus-Version": TUS_VERSION},
        )


_OVERRIDABLE = frozenset({"PATCH", "DELETE", "HEAD", "GET", "OPTIONS"})


def effective_method(method: str, headers: Headers) -> str:
    """PROTOCOL 9: X-HTTP-Method-Override on a POST replaces the method."""
    override = headers.get("x-http-method-override")
    if method != "POST" or override is None:
        return method
    override = override.strip().upper()
    if override not in _OVERRIDABLE:
        raise MethodOverrideNotAllowed(
            f"X-HTTP-Method-Override {override[:20]!r} is not one of PATCH, DELETE, HEAD, GET."
        )
    return override


# --- shared pieces --------------------------------------------------------------------


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    return parse_uint(value, InvalidLength, "Content-Length")


def has_body(headers: Headers) -> bool:
    length = _content_length(headers)
    if length is not None:
        return length > 0
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _checksum(headers: Headers) -> ChecksumHeader | None:
    value = headers.get("upload-checksum")
    if value is None:
        return None
    checksum = parse_checksum(value)
    expected = len(new_hasher(checksum.algorithm).digest())  # raises for unknown algorithms
    if len(checksum.digest) != expected:
        raise InvalidChecksum(
            f"An {checksum.algorithm} digest has {expected} bytes;"
            f" Upload-Checksum carries {len(checksum.digest)}."
        )
    return checksum


def _require_offset_content_type(headers: Headers) -> None:
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType()


def check_available(upload: Upload, now: datetime) -> None:
    """PROTOCOL 4/14/17: a terminated or expired upload answers 410."""
    if upload.status in GONE_STATUSES or is_expired(upload, now):
        raise UploadGone()


def is_expired(upload: Upload, now: datetime) -> bool:
    return (
        upload.expires_at is not None
        and upload.status in (UploadStatus.RECEIVING, UploadStatus.CONCATENATING)
        and now >= upload.expires_at
    )


def next_expiry(limits: Limits, now: datetime, status: UploadStatus) -> datetime | None:
    """PROTOCOL 14: activity moves the deadline; finished uploads never expire."""
    if limits.expiration is None or status not in (
        UploadStatus.RECEIVING,
        UploadStatus.CONCATENATING,
    ):
        return None
    return now + limits.expiration


def _max_bytes(offset: int, length: int | None, limits: Limits) -> int | None:
    if length is not None:
        return length - offset
    if limits.max_size is not None:
        return max(limits.max_size - offset, 0)
    return None


# --- append (PATCH, and the body of a creation-with-upload POST) ------------------------


@dataclass(frozen=True)
class AppendPlan:
    """Store at most `max_bytes` bytes at `offset`; then conclude_append decides the rest."""

    offset: int
    #: the body must not pass this many bytes (None: unbounded)
    max_bytes: int | None
    #: the Content-Length, when the client sent one
    body_length: int | None
    #: Upload-Length declared on this request for a deferred upload
    declare_length: int | None = None
    checksum: ChecksumHeader | None = None
    #: max_bytes was lowered to what the store can still take (see limit_to_store_room)
    store_limited: bool = False


def decide_append(upload: Upload, headers: Headers, limits: Limits, now: datetime) -> AppendPlan:
    """PROTOCOL 5, 6, 13, 15, 19: may this PATCH append, where, and how much?"""
    _require_offset_content_type(headers)
    offset_value = headers.get("upload-offset")
    if offset_value is None:
        raise InvalidOffset("PATCH needs an Upload-Offset header.")
    offset = parse_uint(offset_value, InvalidOffset, "Upload-Offset")
    checksum = _checksum(headers)
    body_length = _content_length(headers)
    check_available(upload, now)
    if upload.is_final:
        raise FinalUploadNotPatchable()
    if offset != upload.offset:
        raise OffsetMismatch(
            f"Upload-Offset is {offset} but the upload is at {upload.offset}; resume from there.",
            headers={"Upload-Offset": format_uint(upload.offset)},
        )
    declare_length = _declared_length_on_append(upload, headers, limits)
    length = upload.length if upload.length is not None else declare_length
    max_bytes = _max_bytes(offset, length, limits)
    if body_length is not None and max_bytes is not None and body_length > max_bytes:
        raise _too_much(length, limits)
    return AppendPlan(offset, max_bytes, body_length, declare_length, checksum)


def _declared_length_on_append(upload: Upload, headers: Headers, limits: Limits) -> int | None:
    value = headers.get("upload-length")
    if value is None:
        return None
    length = parse_uint(value, InvalidLength, "Upload-Length")
    if upload.length is not None:
        if length != upload.length:
            raise LengthAlreadySet(
                f"The upload's length is already {upload.length}; it cannot become {length}."
            )
        return None
    if length < upload.offset:
        raise LengthTooSmall(
            f"Upload-Length {length} is smaller than the {upload.offset} bytes already received."
        )
    _check_max_size(length, limits)
    return length


def _too_much(length: int | None, limits: Limits) -> EntityTooLarge:
    if length is not None:
        return BodyExceedsLength(
            f"The body would pass Upload-Length {length}; nothing of it was stored."
        )
    return EntityTooLarge(
        f"The upload would pass this server's maximum size of {limits.max_size} bytes."
    )


def limit_to_store_room(plan: AppendPlan, room: int | None) -> AppendPlan:
    """A store may not grow an upload of unknown length without bound (S3: at most 10,000
    parts of a size fixed when the upload was created). `room` is how many more bytes it
    can take; a declared length or a body past that is 413, and nothing is stored."""
    if room is None:
        return plan
    limit = plan.offset + room
    if plan.declare_length is not None and plan.declare_length > limit:
        raise _past_store_room(limit)
    if plan.max_bytes is not None and plan.max_bytes <= room:
        return plan
    if plan.body_length is not None and plan.body_length > room:
        raise _past_store_room(limit)
    return replace(plan, max_bytes=room, store_limited=True)


def _past_store_room(limit: int) -> StorageRoomExceeded:
    return StorageRoomExceeded(
        f"This upload can hold at most {limit} bytes: its length was not declared when it "
        f"was created, and the storage sized it for that many. Declare Upload-Length at "
        f"creation to send more; nothing of this request was stored."
    )


def body_overrun(plan: AppendPlan, upload_length: int | None, limits: Limits) -> EntityTooLarge:
    """The error for a body (without Content-Length) that kept coming past plan.max_bytes."""
    if plan.store_limited:
        return _past_store_room(plan.offset + (plan.max_bytes or 0))
    return _too_much(
        plan.declare_length if plan.declare_length is not None else upload_length, limits
    )


@dataclass(frozen=True)
class AppendOutcome:
    """What a finished (or interrupted) append does to the upload."""

    new_offset: int
    new_length: int | None
    new_status: UploadStatus
    #: how many received bytes become part of the upload
    kept: int


def conclude_append(
    upload: Upload,
    plan: AppendPlan,
    received: int,
    body_complete: bool,
    digest: bytes | None,
) -> AppendOutcome:
    """PROTOCOL 7, 15, 18: which of the received bytes count.

    `received` bytes arrived and were stored at plan.offset; `body_complete` says whether the
    client sent the whole body; `digest` is the hash of what arrived when a checksum was asked.
    """
    if plan.checksum is not None:
        if not body_complete:
            kept = 0  # an interrupted chunk cannot be verified: keep none of it
        elif digest != plan.checksum.digest:
            raise ChecksumMismatch(
                f"The body's {plan.checksum.algorithm} does not match Upload-Checksum; "
                f"the chunk was discarded and the offset stays at {plan.offset}.",
                headers={"Upload-Offset": format_uint(plan.offset)},
            )
        else:
            kept = received
    else:
        kept = received
    new_offset = plan.offset + kept
    new_length = upload.length if upload.length is not None else plan.declare_length
    if plan.declare_length is not None and new_offset > plan.declare_length:
        raise ServerFault("Stored past the declared length.")
    finished = new_length is not None and new_offset == new_length
    new_status = UploadStatus.FINISHED if finished else UploadStatus.RECEIVING
    return AppendOutcome(new_offset, new_length, new_status, kept)


# --- creation (POST) ------------------------------------------------------------------


@dataclass(frozen=True)
class CreationPlan:
    length: int | None
    concat_kind: ConcatKind
    #: the partial URLs of a final upload, in order, as the client wrote them
    partial_urls: tuple[str, ...] = ()
    metadata_header: str | None = None
    metadata: dict[str, bytes | None] = field(default_factory=dict)
    concat_header: str | None = None
    #: an append to run with the creation (creation-with-upload), or None
    initial_append: AppendPlan | None = None


def decide_creation(headers: Headers, limits: Limits) -> CreationPlan:
    """PROTOCOL 10-13, 19: what a POST creates."""
    metadata_header = headers.get("upload-metadata")
    metadata: dict[str, bytes | None] = {}
    if metadata_header is not None:
        if len(metadata_header) > MAX_METADATA_HEADER:
            raise HeaderTooLarge(
                f"Upload-Metadata is longer than {MAX_METADATA_HEADER} characters."
            )
        metadata = parse_metadata(metadata_header)
    concat_value = headers.get("upload-concat")
    concat: ConcatHeader | None = parse_concat(concat_value) if concat_value is not None else None
    length_value = headers.get("upload-length")
    defer_value = headers.get("upload-defer-length")
    body = has_body(headers)

    if isinstance(concat, ConcatFinal):
        if length_value is not None or defer_value is not None:
            raise InvalidPartial(
                "A final upload must not carry Upload-Length; its length is the partials' sum."
            )
        if body:
            raise ProtocolError("A final upload is assembled from its partials; send no body.")
        return CreationPlan(
            None, ConcatKind.FINAL, concat.urls, metadata_header, metadata, concat_value
        )

    if length_value is not None and defer_value is not None:
        raise LengthConflict()
    if defer_value is not None:
        if defer_value != "1":
            raise InvalidDeferLength(f"Upload-Defer-Length must be 1, got {defer_value[:20]!r}.")
        length: int | None = None
    elif length_value is not None:
        length = parse_uint(length_value, InvalidLength, "Upload-Length")
        _check_max_size(length, limits)
    else:
        raise LengthRequired()

    initial_append = None
    if body:
        _require_offset_content_type(headers)
        body_length = _content_length(headers)
        max_bytes = _max_bytes(0, length, limits)
        if body_length is not None and max_bytes is not None and body_length > max_bytes:
            raise _too_much(length, limits)
        initial_append = AppendPlan(0, max_bytes, body_length, None, _checksum(headers))
    kind = ConcatKind.PARTIAL if isinstance(concat, ConcatPartial) else ConcatKind.NONE
    return CreationPlan(length, kind, (), metadata_header, metadata, concat_value, initial_append)


def _check_max_size(length: int, limits: Limits) -> None:
    if limits.max_size is not None and length > limits.max_size:
        raise EntityTooLarge(
            f"Upload-Length {length} is larger than this server's maximum of {limits.max_size}."
        )


def initial_status(plan: CreationPlan) -> UploadStatus:
    if plan.concat_kind is ConcatKind.FINAL:
        return UploadStatus.CONCATENATING
    if plan.length == 0:
        return UploadStatus.FINISHED
    return UploadStatus.RECEIVING


_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def is_valid_upload_id(value: str) -> bool:
    return _UPLOAD_ID.fullmatch(value) is not None


def partial_id_from_url(url: str, base_path: str, own_hosts: frozenset[str]) -> str:
    """PROTOCOL 19: a partial named by absolute or relative URL; only URLs of this server."""
    path = url
    if "://" in url:
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        path = slash + path
        if scheme not in ("http", "https") or host.lower() not in own_hosts:
            raise InvalidPartial(f"Upload-Concat names {url[:80]!r}, which is not on this server.")
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(base_path):
        raise InvalidPartial(f"Upload-Concat names {url[:80]!r}, which is not an upload URL here.")
    upload_id = path[len(base_path) :]
    if not is_valid_upload_id(upload_id):
        raise InvalidPartial(f"Upload-Concat names {url[:80]!r}, which is not an upload URL here.")
    return upload_id


def decide_final_length(partials: list[Upload], limits: Limits, now: datetime) -> int | None:
    """PROTOCOL 19/20: the final's length is the partials' sum, known once every length is."""
    total = 0
    for partial in partials:
        check_partial(partial, now)
        if partial.length is None:
            return None
        total += partial.length
    _check_max_size(total, limits)
    return total


def check_partial(partial: Upload, now: datetime) -> None:
    if partial.status in GONE_STATUSES or is_expired(partial, now):
        raise InvalidPartial(f"Partial upload {partial.id} was terminated or has expired.")
    if partial.concat_kind is not ConcatKind.PARTIAL:
        raise InvalidPartial(f"Upload {partial.id} was not created with Upload-Concat: partial.")


def final_ready(partials: list[Upload]) -> bool:
    return all(p.status is UploadStatus.FINISHED for p in partials)


# --- reading state: HEAD, OPTIONS -----------------------------------------------------


def head_headers(upload: Upload, now: datetime) -> dict[str, str]:
    """PROTOCOL 4, 13, 14, 19: the headers of a HEAD answer."""
    check_available(upload, now)
    out: dict[str, str] = {"Cache-Control": "no-store"}
    if not (upload.is_final and upload.status is not UploadStatus.FINISHED):
        out["Upload-Offset"] = format_uint(upload.offset)
    if upload.length is not None:
        out["Upload-Length"] = format_uint(upload.length)
    elif not upload.is_final:
        out["Upload-Defer-Length"] = "1"
    if upload.metadata_header is not None:
        out["Upload-Metadata"] = upload.metadata_header
    if upload.concat_header is not None:
        out["Upload-Concat"] = upload.concat_header
    out.update(expiry_headers(upload))
    return out


def expiry_headers(upload: Upload) -> dict[str, str]:
    if upload.expires_at is None or upload.status not in (
        UploadStatus.RECEIVING,
        UploadStatus.CONCATENATING,
    ):
        return {}
    return {"Upload-Expires": format_http_date(upload.expires_at)}


def options_headers(limits: Limits, checksum_algorithms: tuple[str, ...]) -> dict[str, str]:
    """PROTOCOL 3: tus discovery."""
    out = {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(checksum_algorithms),
    }
    if limits.max_size is not None:
        out["Tus-Max-Size"] = format_uint(limits.max_size)
    return out


# --- GET ------------------------------------------------------------------------------


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
