"""What a request asks of an upload, whatever wire dialect it came in.

A dialect (tus 1.0.0 in `dialects/tus1.py`; the IETF resumable-upload draft next) parses a
request's headers into one of these commands; the rules in `rules.py` decide over commands
and stored uploads; the server carries the decisions out; the dialect formats the outcome.
No header name appears in a command, so a second dialect is one new parser and formatter,
not a second copy of the create and append paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .headers import Checksum
from .state import ConcatKind


@dataclass(frozen=True)
class Body:
    """The bytes a request carries for an upload."""

    #: bytes the client announced (Content-Length); None when it did not say (chunked)
    length: int | None
    #: a digest of the body the client asks us to verify before the bytes count
    checksum: Checksum | None = None


@dataclass(frozen=True)
class Create:
    """Create an upload (tus: POST to the collection; IETF: POST with Upload-Complete)."""

    #: the upload's length; None when it is not known yet (deferred)
    length: int | None
    metadata: dict[str, bytes | None] = field(default_factory=dict)
    #: the metadata exactly as the client wrote it, echoed back byte for byte
    metadata_header: str | None = None
    concat: ConcatKind = ConcatKind.NONE
    #: a final upload's partials, in order, as the client named them (URLs)
    partial_urls: tuple[str, ...] = ()
    #: the concatenation request exactly as the client wrote it, echoed back
    concat_header: str | None = None
    #: the first bytes, sent with the creation; None when the request has no body
    body: Body | None = None
    #: the body is the rest of the upload: when it arrives whole, the length is known
    #: (IETF Upload-Complete: ?1 without a declared length; tus never sets it)
    completes: bool = False


@dataclass(frozen=True)
class Append:
    """Append bytes at an offset (tus and IETF: PATCH)."""

    offset: int
    body: Body
    #: the length of a deferred upload, declared with this request
    declare_length: int | None = None
    #: the body is the rest of the upload (IETF Upload-Complete: ?1)
    completes: bool = False


@dataclass(frozen=True)
class Download:
    """Read a finished upload's bytes (plain HTTP GET, the same in every dialect)."""

    #: the Range header's value, interpreted against the upload's length
    range: str | None = None
    #: If-None-Match: answer 304 when it names the current entity tag
    if_none_match: str | None = None
    #: If-Range: serve the range only while the entity tag is unchanged
    if_range: str | None = None
