"""Everything a request may do to an upload, decided without I/O and without headers.

Each function takes the stored upload (when there is one), a dialect-neutral command
(`commands.py`) and the server's limits, and returns a decision or raises a ProtocolError.
The server executes decisions; it never re-derives them. Wire details (header names,
status codes of success) belong to the dialects in `dialects/`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .commands import Append, Create
from .errors import (
    BodyExceedsLength,
    ChecksumMismatch,
    EntityTooLarge,
    ExtensionDisabled,
    FinalUploadNotPatchable,
    InconsistentLength,
    InvalidPartial,
    LengthAlreadySet,
    LengthTooSmall,
    OffsetMismatch,
    ProtocolError,
    ServerFault,
    StorageRoomExceeded,
    UploadGone,
    UploadNotFound,
)
from .headers import Checksum
from .state import GONE_STATUSES, ConcatKind, Upload, UploadStatus


class Feature(enum.StrEnum):
    """What a server can offer beyond creating, appending and reading; the configured store
    and settings decide which, and every dialect advertises exactly these."""

    CREATION_WITH_UPLOAD = "creation-with-upload"
    DEFERRED_LENGTH = "deferred-length"
    EXPIRATION = "expiration"
    CHECKSUM = "checksum"
    TERMINATION = "termination"
    CONCATENATION = "concatenation"
    RANGE_READS = "range-reads"


ALL_FEATURES = frozenset(Feature)


@dataclass(frozen=True)
class Limits:
    """What this server accepts: the knobs the decisions depend on."""

    #: largest upload in bytes; None = no limit
    max_size: int | None = None
    #: how long an idle unfinished upload lives; None = forever
    expiration: timedelta | None = None
    #: what the store and the settings make possible
    features: frozenset[Feature] = ALL_FEATURES


def require(limits: Limits, feature: Feature, what: str) -> None:
    if feature not in limits.features:
        raise ExtensionDisabled(f"This server's storage does not support {what}.")


# --- shared pieces --------------------------------------------------------------------


def check_available(upload: Upload, now: datetime) -> None:
    """PROTOCOL 4/14/17: a terminated or expired upload answers 410."""
    if upload.status is UploadStatus.FAILED:
        raise UploadGone("The upload was refused when it was complete; its bytes are gone.")
    if upload.status in GONE_STATUSES or is_expired(upload, now):
        raise UploadGone()


def is_owned_by(upload: Upload, subject: str | None) -> bool:
    """Whether `subject` may use the upload: its owner, or anyone when it has none."""
    return upload.owner is None or upload.owner == subject


def check_owner(upload: Upload, subject: str | None) -> None:
    """An upload with an owner exists only for its owner: anyone else is told 404, as if
    it did not exist (so its id reveals nothing)."""
    if not is_owned_by(upload, subject):
        raise UploadNotFound()


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
    #: the body's announced length, when the client sent one
    body_length: int | None
    #: the length of a deferred upload, declared by this request
    declare_length: int | None = None
    checksum: Checksum | None = None
    #: max_bytes was lowered to what the store can still take (see limit_to_store_room)
    store_limited: bool = False
    #: the body is the rest of the upload: once it arrives whole, the length is known
    completes: bool = False
    #: False when the upload is already finished: an empty append at its end changes
    #: nothing, and the store (whose object may be sealed) is not asked for anything
    stores_bytes: bool = True


def decide_append(upload: Upload, command: Append, limits: Limits, now: datetime) -> AppendPlan:
    """PROTOCOL 5, 6, 13, 15, 19, 28: may this append happen, where, and how much?"""
    check_available(upload, now)
    if upload.is_final:
        raise FinalUploadNotPatchable()
    if command.offset != upload.offset:
        raise OffsetMismatch(
            f"Upload-Offset is {command.offset} but the upload is at {upload.offset}; "
            "resume from there.",
            current_offset=upload.offset,
        )
    body_length = command.body.length
    declare_length = _declared_length_on_append(upload, command.declare_length, limits)
    if command.completes and body_length is not None:
        declare_length = _completed_length(
            upload, command.offset + body_length, declare_length, limits
        )
    length = upload.length if upload.length is not None else declare_length
    max_bytes = _max_bytes(command.offset, length, limits)
    if body_length is not None and max_bytes is not None and body_length > max_bytes:
        raise _too_much(length, limits)
    return AppendPlan(
        command.offset,
        max_bytes,
        body_length,
        declare_length,
        command.body.checksum,
        completes=command.completes,
        stores_bytes=upload.status is not UploadStatus.FINISHED,
    )


def _declared_length_on_append(upload: Upload, declared: int | None, limits: Limits) -> int | None:
    if declared is None:
        return None
    if upload.length is not None:
        if declared != upload.length:
            raise LengthAlreadySet(
                f"The upload's length is already {upload.length}; it cannot become {declared}."
            )
        return None
    if declared < upload.offset:
        raise LengthTooSmall(
            f"Upload-Length {declared} is smaller than the {upload.offset} bytes already received."
        )
    _check_max_size(declared, limits)
    return declared


def _completed_length(upload: Upload, end: int, declared: int | None, limits: Limits) -> int | None:
    """An append that completes the upload with a body of known length fixes its length."""
    known = upload.length if upload.length is not None else declared
    if known is not None and known != end:
        raise InconsistentLength(
            f"The request completes the upload at {end} bytes, but its length is {known}."
        )
    if upload.length is not None:
        return None
    _check_max_size(end, limits)
    return end


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
                current_offset=plan.offset,
            )
        else:
            kept = received
    else:
        kept = received
    new_offset = plan.offset + kept
    new_length = upload.length if upload.length is not None else plan.declare_length
    if plan.completes and body_complete and kept == received:
        if new_length is None:
            new_length = new_offset
        elif new_length != new_offset:
            raise InconsistentLength(
                f"The request completed the upload at {new_offset} bytes, but its length is "
                f"{new_length}; the bytes were not counted."
            )
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


def decide_creation(command: Create, limits: Limits) -> CreationPlan:
    """PROTOCOL 10-13, 19, 26: what a creation creates."""
    if command.concat is not ConcatKind.NONE:
        require(limits, Feature.CONCATENATION, "concatenation")
    if command.concat is ConcatKind.FINAL:
        if command.body is not None:
            raise ProtocolError("A final upload is assembled from its partials; send no body.")
        return CreationPlan(
            None,
            ConcatKind.FINAL,
            command.partial_urls,
            command.metadata_header,
            command.metadata,
            command.concat_header,
        )
    length = command.length
    if length is None and command.completes and command.body is None:
        length = 0  # complete, and nothing follows: an empty upload
    if length is not None:
        _check_max_size(length, limits)
    elif not (command.completes and command.body is not None and command.body.length is not None):
        require(limits, Feature.DEFERRED_LENGTH, "uploads of deferred length")
    initial_append = None
    if command.body is not None:
        require(limits, Feature.CREATION_WITH_UPLOAD, "bytes with the creation request")
        initial_append = decide_append(
            Upload("", UploadStatus.RECEIVING, 0, length),
            Append(0, command.body, completes=command.completes),
            limits,
            datetime.min,
        )
        if initial_append.declare_length is not None:
            # the whole upload came with its creation: its length is known from the start
            length = initial_append.declare_length
            initial_append = replace(initial_append, declare_length=None)
    return CreationPlan(
        length,
        command.concat,
        (),
        command.metadata_header,
        command.metadata,
        command.concat_header,
        initial_append,
    )


def _check_max_size(length: int, limits: Limits) -> None:
    if limits.max_size is not None and length > limits.max_size:
        raise EntityTooLarge(
            f"Upload-Length {length} is larger than this server's maximum of {limits.max_size}."
        )


def initial_status(plan: CreationPlan) -> UploadStatus:
    if plan.concat_kind is ConcatKind.FINAL:
        return UploadStatus.CONCATENATING
    if plan.length == 0 and plan.initial_append is None:
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
