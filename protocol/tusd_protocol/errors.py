"""One exception family for everything a request can get wrong (or we can).

Each kind carries its HTTP status and a stable code; the sentence says what happened in
words a client developer can act on. The HTTP layer maps these to responses and never
decides a status itself.
"""

from __future__ import annotations

from typing import ClassVar


class ProtocolError(Exception):
    """Base of every error the protocol layer raises. Never a 5xx unless the fault is ours."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "ERR_BAD_REQUEST"
    default_message: ClassVar[str] = "The request is not valid."

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        current_offset: int | None = None,
    ):
        self.message = message or self.default_message
        #: extra HTTP response headers, the same in every dialect (Retry-After, Allow, ...)
        self.headers: dict[str, str] = dict(headers or {})
        #: the upload's offset, for errors a client recovers from by resuming there; each
        #: dialect tells it in its own header
        self.current_offset = current_offset
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message!r})"


# --- 400: the request itself is malformed -------------------------------------------


class InvalidHeader(ProtocolError):
    code = "ERR_INVALID_HEADER"
    default_message = "A header value does not follow its grammar."


class InvalidInteger(InvalidHeader):
    code = "ERR_INVALID_INTEGER"
    default_message = "The value must be a non-negative decimal integer of at most 2^63-1."


class InvalidOffset(InvalidHeader):
    code = "ERR_INVALID_OFFSET"
    default_message = "Upload-Offset is missing or is not a non-negative integer."


class InvalidLength(InvalidHeader):
    code = "ERR_INVALID_LENGTH"
    default_message = "Upload-Length is not a non-negative integer."


class InvalidMetadata(InvalidHeader):
    code = "ERR_INVALID_METADATA"
    default_message = "Upload-Metadata is not a list of 'key base64value' pairs."


class InvalidConcat(InvalidHeader):
    code = "ERR_INVALID_CONCAT"
    default_message = "Upload-Concat must be 'partial' or 'final;<url> <url> ...'."


class InvalidChecksum(InvalidHeader):
    code = "ERR_INVALID_CHECKSUM"
    default_message = "Upload-Checksum must be '<algorithm> <base64 digest>'."


class UnsupportedChecksumAlgorithm(InvalidChecksum):
    code = "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"
    default_message = "The checksum algorithm is not supported."


class InvalidDeferLength(InvalidHeader):
    code = "ERR_INVALID_DEFER_LENGTH"
    default_message = "Upload-Defer-Length must be 1."


class LengthRequired(ProtocolError):
    code = "ERR_LENGTH_REQUIRED"
    default_message = "Send Upload-Length, or Upload-Defer-Length: 1 when the length is not known."


class LengthConflict(ProtocolError):
    code = "ERR_LENGTH_CONFLICT"
    default_message = "Upload-Length and Upload-Defer-Length must not be sent together."


class LengthAlreadySet(ProtocolError):
    code = "ERR_LENGTH_ALREADY_SET"
    default_message = "The upload length is already known and cannot be changed."


class InconsistentLength(ProtocolError):
    code = "ERR_INCONSISTENT_LENGTH"
    default_message = "The upload was declared complete at another length than it has."


class LengthTooSmall(ProtocolError):
    code = "ERR_LENGTH_TOO_SMALL"
    default_message = "Upload-Length is smaller than the bytes already received."


class InvalidUploadId(ProtocolError):
    code = "ERR_INVALID_UPLOAD_ID"
    default_message = "The upload URL does not name an upload of this server."


class InvalidPartial(ProtocolError):
    code = "ERR_INVALID_PARTIAL"
    default_message = "A final upload may only concatenate partial uploads of this server."


class BodyNotAllowed(ProtocolError):
    code = "ERR_BODY_NOT_ALLOWED"
    default_message = "This request must not carry a body."


class MethodOverrideNotAllowed(ProtocolError):
    code = "ERR_INVALID_METHOD_OVERRIDE"
    default_message = "X-HTTP-Method-Override must name PATCH, DELETE, HEAD, GET or OPTIONS."


# --- other 4xx ------------------------------------------------------------------------


class UploadNotFound(ProtocolError):
    status = 404
    code = "ERR_UPLOAD_NOT_FOUND"
    default_message = "No upload with this id exists."


class UploadGone(ProtocolError):
    status = 410
    code = "ERR_UPLOAD_GONE"
    default_message = "The upload was terminated or has expired; its bytes are gone."


class PartialNotFound(ProtocolError):
    status = 404
    code = "ERR_PARTIAL_NOT_FOUND"
    default_message = "A partial upload named in Upload-Concat does not exist."


class OffsetMismatch(ProtocolError):
    status = 409
    code = "ERR_OFFSET_MISMATCH"
    default_message = "Upload-Offset does not match the upload's current offset."


class UploadNotFinished(ProtocolError):
    status = 409
    code = "ERR_UPLOAD_NOT_FINISHED"
    default_message = "The upload is not finished yet; its bytes cannot be served."


class UploadFinished(ProtocolError):
    status = 403
    code = "ERR_UPLOAD_FINISHED"
    default_message = "The upload is complete and accepts no more bytes."


class FinalUploadNotPatchable(ProtocolError):
    status = 403
    code = "ERR_FINAL_UPLOAD_READ_ONLY"
    default_message = "A final upload is assembled from its partials and cannot be patched."


class UnsupportedVersion(ProtocolError):
    status = 412
    code = "ERR_UNSUPPORTED_VERSION"
    default_message = "Tus-Resumable is missing or names a version this server does not speak."


class EntityTooLarge(ProtocolError):
    status = 413
    code = "ERR_UPLOAD_TOO_LARGE"
    default_message = "The upload is larger than this server accepts."


class StorageRoomExceeded(EntityTooLarge):
    code = "ERR_STORAGE_ROOM_EXCEEDED"
    default_message = "The storage cannot hold this upload past its size limit."


class BodyExceedsLength(EntityTooLarge):
    code = "ERR_BODY_EXCEEDS_LENGTH"
    default_message = "The body would pass the declared Upload-Length; nothing was stored."


class UnsupportedMediaType(ProtocolError):
    status = 415
    code = "ERR_UNSUPPORTED_MEDIA_TYPE"
    default_message = "The body must have Content-Type: application/offset+octet-stream."


class RangeNotSatisfiable(ProtocolError):
    status = 416
    code = "ERR_RANGE_NOT_SATISFIABLE"
    default_message = "The requested range lies outside the upload."


class HeaderTooLarge(ProtocolError):
    status = 431
    code = "ERR_HEADER_TOO_LARGE"
    default_message = "A header is larger than this server accepts."


class UploadLocked(ProtocolError):
    """423, never another 4xx: tus-js-client retries 423 but abandons the upload on most 4xx."""

    status = 423
    code = "ERR_UPLOAD_LOCKED"
    default_message = "Another request is using this upload; retry shortly."


class RateLimited(ProtocolError):
    """429: this client sent more requests than the server takes from one client; the
    request was not read. Retry-After says when the next one is taken."""

    status = 429
    code = "ERR_RATE_LIMITED"
    default_message = "Too many requests from this client; retry after the time in Retry-After."


class ChecksumMismatch(ProtocolError):
    status = 460
    code = "ERR_CHECKSUM_MISMATCH"
    default_message = "The body does not match Upload-Checksum; the chunk was discarded."


class MethodNotAllowed(ProtocolError):
    status = 405
    code = "ERR_METHOD_NOT_ALLOWED"
    default_message = "This method is not allowed on this URL."


class ExtensionDisabled(ProtocolError):
    status = 400
    code = "ERR_EXTENSION_UNSUPPORTED"
    default_message = "This server does not support the requested extension."


# --- 5xx: our fault, never a client's --------------------------------------------------


class ServerFault(ProtocolError):
    status = 500
    code = "ERR_INTERNAL"
    default_message = "The server failed; no acknowledged byte was lost. Retry the request."


class ServiceUnavailable(ServerFault):
    status = 503
    code = "ERR_UNAVAILABLE"
    default_message = "A backing service is unavailable; retry shortly."


class TooManyUploads(ServiceUnavailable):
    """503 before any body byte is read: this instance carries as many uploads as it may."""

    code = "ERR_TOO_MANY_UPLOADS"
    default_message = (
        "The server is receiving as many uploads as it takes; nothing was read. "
        "Retry after the time in Retry-After."
    )


class MemoryPressure(ServiceUnavailable):
    """503 before any body byte is read: the process uses more memory than it may."""

    code = "ERR_MEMORY_PRESSURE"
    default_message = (
        "The server is short of memory and takes no new upload bytes for now; nothing was "
        "read. Retry after the time in Retry-After."
    )


class InsufficientStorage(ServerFault):
    """507 before any body byte is read: the upload store is (nearly) full."""

    status = 507
    code = "ERR_INSUFFICIENT_STORAGE"
    default_message = (
        "The server's storage is too full to take these bytes; nothing was stored. "
        "Retry after the time in Retry-After."
    )
