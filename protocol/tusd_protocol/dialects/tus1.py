"""tus 1.0.0 on the wire: requests parsed into commands, outcomes and errors formatted.

Everything that names a tus header lives here (PROTOCOL 1-20). What a request may do is
decided in `rules.py` over the commands this module builds; this module only reads the
grammar of tus's headers and writes tus's answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..checksums import new_hasher
from ..commands import Append, Body, Create
from ..errors import (
    HeaderTooLarge,
    InvalidDeferLength,
    InvalidLength,
    InvalidOffset,
    InvalidPartial,
    LengthConflict,
    LengthRequired,
    MethodOverrideNotAllowed,
    ProtocolError,
    UnsupportedMediaType,
    UnsupportedVersion,
)
from ..headers import (
    Checksum,
    ConcatFinal,
    ConcatPartial,
    format_http_date,
    format_uint,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_uint,
)
from ..rules import Feature, Limits
from ..state import ConcatKind, Upload, UploadStatus

#: request headers looked up with lower-case names (a plain dict, or starlette's Headers)
Headers = Mapping[str, str]

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA_HEADER = 16 * 1024
#: on every response (PROTOCOL 1)
RESUMABLE = {"Tus-Resumable": TUS_VERSION}

#: the tus extensions each feature makes work, in the order tusd lists them
EXTENSIONS: tuple[tuple[str, Feature | None], ...] = (
    ("creation", None),
    ("creation-with-upload", Feature.CREATION_WITH_UPLOAD),
    ("creation-defer-length", Feature.DEFERRED_LENGTH),
    ("expiration", Feature.EXPIRATION),
    ("checksum", Feature.CHECKSUM),
    ("termination", Feature.TERMINATION),
    ("concatenation", Feature.CONCATENATION),
    ("concatenation-unfinished", Feature.CONCATENATION),
)


def extensions(features: frozenset[Feature]) -> tuple[str, ...]:
    """PROTOCOL 3: the extensions that really work with these features."""
    return tuple(name for name, needs in EXTENSIONS if needs is None or needs in features)


# --- requests -------------------------------------------------------------------------

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


def check_version(method: str, headers: Headers) -> None:
    """PROTOCOL 2/3: POST, HEAD, PATCH and DELETE must speak 1.0.0. OPTIONS never needs to
    (it is how a client learns the version), and GET is a plain download that a browser
    link, an <img> or curl cannot decorate."""
    if method in ("OPTIONS", "GET"):
        return
    if headers.get("tus-resumable") != TUS_VERSION:
        raise UnsupportedVersion(
            f"This server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION}.",
            headers={"Tus-Version": TUS_VERSION},
        )


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


def _checksum(headers: Headers) -> Checksum | None:
    """PROTOCOL 15: `<algorithm> <base64>`; an unknown algorithm is 400. A digest of the
    wrong length is well-formed: it simply cannot match, which is 460 once the body is in."""
    value = headers.get("upload-checksum")
    if value is None:
        return None
    checksum = parse_checksum(value)
    new_hasher(checksum.algorithm)  # raises for an algorithm we do not have
    return checksum


def _require_offset_content_type(headers: Headers) -> None:
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType()


def _body(headers: Headers) -> Body:
    _require_offset_content_type(headers)
    return Body(_content_length(headers), _checksum(headers))


def parse_append(headers: Headers) -> Append:
    """PATCH: PROTOCOL 5, 8, 13, 15."""
    _require_offset_content_type(headers)
    offset_value = headers.get("upload-offset")
    if offset_value is None:
        raise InvalidOffset("PATCH needs an Upload-Offset header.")
    offset = parse_uint(offset_value, InvalidOffset, "Upload-Offset")
    body = Body(_content_length(headers), _checksum(headers))
    length_value = headers.get("upload-length")
    if length_value is None:
        return Append(offset, body)
    return Append(offset, body, parse_uint(length_value, InvalidLength, "Upload-Length"))


def parse_create(headers: Headers) -> Create:
    """POST: PROTOCOL 10-13, 19."""
    metadata_header = headers.get("upload-metadata")
    metadata: dict[str, bytes | None] = {}
    if metadata_header is not None:
        if len(metadata_header) > MAX_METADATA_HEADER:
            raise HeaderTooLarge(
                f"Upload-Metadata is longer than {MAX_METADATA_HEADER} characters."
            )
        metadata = parse_metadata(metadata_header)
    concat_value = headers.get("upload-concat")
    concat = parse_concat(concat_value) if concat_value is not None else None
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
        return Create(
            None,
            metadata,
            metadata_header,
            ConcatKind.FINAL,
            concat.urls,
            concat_value,
        )
    if length_value is not None and defer_value is not None:
        raise LengthConflict()
    if defer_value is not None:
        if defer_value != "1":
            raise InvalidDeferLength(f"Upload-Defer-Length must be 1, got {defer_value[:20]!r}.")
        length: int | None = None
    elif length_value is not None:
        length = parse_uint(length_value, InvalidLength, "Upload-Length")
    else:
        raise LengthRequired()
    kind = ConcatKind.PARTIAL if isinstance(concat, ConcatPartial) else ConcatKind.NONE
    return Create(
        length,
        metadata,
        metadata_header,
        kind,
        (),
        concat_value,
        _body(headers) if body else None,
    )


# --- answers --------------------------------------------------------------------------


def expiry_headers(upload: Upload) -> dict[str, str]:
    """PROTOCOL 14: Upload-Expires while the upload can still expire."""
    if upload.expires_at is None or upload.status not in (
        UploadStatus.RECEIVING,
        UploadStatus.CONCATENATING,
    ):
        return {}
    return {"Upload-Expires": format_http_date(upload.expires_at)}


def _offset_headers(upload: Upload) -> dict[str, str]:
    """A final upload has no offset until it is assembled (PROTOCOL 19)."""
    if upload.is_final and upload.status is not UploadStatus.FINISHED:
        return {}
    return {"Upload-Offset": format_uint(upload.offset)}


def created_headers(upload: Upload, location: str) -> dict[str, str]:
    """The 201 of a POST (PROTOCOL 10, 12, 14)."""
    return {**RESUMABLE, "Location": location, **_offset_headers(upload), **expiry_headers(upload)}


def appended_headers(upload: Upload) -> dict[str, str]:
    """The 204 of a PATCH (PROTOCOL 5, 14)."""
    return {**RESUMABLE, "Upload-Offset": format_uint(upload.offset), **expiry_headers(upload)}


def head_headers(upload: Upload) -> dict[str, str]:
    """The 200 of a HEAD (PROTOCOL 4, 13, 14, 19)."""
    out: dict[str, str] = {**RESUMABLE, "Cache-Control": "no-store", **_offset_headers(upload)}
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


def options_headers(limits: Limits, checksum_algorithms: tuple[str, ...]) -> dict[str, str]:
    """PROTOCOL 3: discovery, computed from what the store and settings make possible."""
    out = {
        **RESUMABLE,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(extensions(limits.features)),
    }
    if Feature.CHECKSUM in limits.features:
        out["Tus-Checksum-Algorithm"] = ",".join(checksum_algorithms)
    if limits.max_size is not None:
        out["Tus-Max-Size"] = format_uint(limits.max_size)
    return out


def error_headers(error: ProtocolError) -> dict[str, str]:
    """An error's headers in tus terms: the offset to resume from is Upload-Offset."""
    out = {**RESUMABLE, **error.headers}
    if error.current_offset is not None:
        out["Upload-Offset"] = format_uint(error.current_offset)
    return out
