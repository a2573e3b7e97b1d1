"""Codecs for the header values tus and the IETF draft define.

Each parser accepts exactly the grammar and raises a ProtocolError subclass for anything
else; each formatter writes what its parser reads back.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from .errors import (
    InvalidChecksum,
    InvalidConcat,
    InvalidHeader,
    InvalidInteger,
    InvalidMetadata,
)

MAX_INT = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_uint(value: str, error: type[InvalidHeader] = InvalidInteger, name: str = "value") -> int:
    """A non-negative decimal integer: digits only, no sign, no spaces, at most 2^63-1."""
    if not _DIGITS.fullmatch(value):
        raise error(f"{name} must be a non-negative decimal integer, got {value[:40]!r}.")
    number = int(value)
    if number > MAX_INT:
        raise error(f"{name} must not exceed 2^63-1.")
    return number


def format_uint(value: int) -> str:
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"{value} is not a non-negative 63-bit integer")
    return str(value)


# --- the request's header block -------------------------------------------------------

#: headers that carry one value: a second, different copy makes the request ambiguous
SINGLE_VALUED = frozenset(
    {
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-defer-length",
        "upload-metadata",
        "upload-concat",
        "upload-checksum",
        "content-type",
        "content-length",
        "x-http-method-override",
        "upload-complete",
        "upload-incomplete",
        "upload-draft-interop-version",
    }
)


def collect_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw (name, value) pairs -> {lower-case name: value}; the first copy of a header wins.

    Two different values of a single-valued protocol header are refused rather than
    guessed at: a client (or proxy) that sends both has a bug we should surface.
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            if name in SINGLE_VALUED and headers[name] != value:
                raise InvalidHeader(f"{name} appears twice with different values.")
            continue
        headers[name] = value
    return headers


# --- Upload-Metadata ------------------------------------------------------------------

# Keys: visible ASCII without spaces or commas (tus 1.0.0 "key MUST NOT contain spaces and commas").
_METADATA_KEY = re.compile(r"[!-+\--~]+")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def is_valid_metadata_key(key: str) -> bool:
    return _METADATA_KEY.fullmatch(key) is not None


def parse_metadata(value: str) -> dict[str, bytes | None]:
    """`key base64value, key2, ...` -> {key: decoded bytes or None when the key has no value}."""
    result: dict[str, bytes | None] = {}
    if value.strip() == "":
        return result
    for raw_pair in value.split(","):
        pair = raw_pair.strip(" ")
        if not pair:
            raise InvalidMetadata("Upload-Metadata has an empty entry between commas.")
        key, sep, encoded = pair.partition(" ")
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidMetadata(
                f"Upload-Metadata key {key[:40]!r} must be ASCII without spaces or commas."
            )
        if key in result:
            raise InvalidMetadata(f"Upload-Metadata key {key!r} appears more than once.")
        if not sep:
            result[key] = None
            continue
        if " " in encoded or not _BASE64.fullmatch(encoded):
            raise InvalidMetadata(f"Upload-Metadata value of {key!r} is not valid base64.")
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidMetadata(f"Upload-Metadata value of {key!r} is not valid base64.") from exc
    return result


def format_metadata(metadata: dict[str, bytes | None]) -> str:
    parts = []
    for key, data in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"invalid metadata key {key!r}")
        parts.append(key if data is None else f"{key} {base64.b64encode(data).decode('ascii')}")
    return ",".join(parts)


def metadata_text(metadata: dict[str, bytes | None], key: str) -> str | None:
    """A metadata value as text, or None when absent or not UTF-8."""
    data = metadata.get(key)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- Upload-Concat --------------------------------------------------------------------


@dataclass(frozen=True)
class ConcatPartial:
    pass


@dataclass(frozen=True)
class ConcatFinal:
    urls: tuple[str, ...]


ConcatHeader = ConcatPartial | ConcatFinal

_URL_CHARS = re.compile(r"[!-~]+")


def parse_concat(value: str) -> ConcatHeader:
    if value == "partial":
        return ConcatPartial()
    if value.startswith("final;"):
        urls = tuple(u for u in value[len("final;") :].split(" ") if u)
        if not urls:
            raise InvalidConcat("Upload-Concat: final; must list at least one partial upload.")
        for url in urls:
            if not _URL_CHARS.fullmatch(url):
                raise InvalidConcat(f"Upload-Concat names an invalid URL {url[:60]!r}.")
        return ConcatFinal(urls)
    raise InvalidConcat(f"Upload-Concat must be 'partial' or 'final;<urls>', got {value[:40]!r}.")


def format_concat(concat: ConcatHeader) -> str:
    if isinstance(concat, ConcatPartial):
        return "partial"
    return "final;" + " ".join(concat.urls)


# --- Upload-Checksum ------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes


_ALGORITHM = re.compile(r"[a-z0-9-]{1,32}")


def parse_checksum(value: str) -> Checksum:
    algorithm, sep, encoded = value.partition(" ")
    if not sep or not _ALGORITHM.fullmatch(algorithm) or not encoded:
        raise InvalidChecksum(
            f"Upload-Checksum must be '<algorithm> <base64 digest>', got {value[:60]!r}."
        )
    if not _BASE64.fullmatch(encoded):
        raise InvalidChecksum("Upload-Checksum digest is not valid base64.")
    return Checksum(algorithm, base64.b64decode(encoded))


def format_checksum(checksum: Checksum) -> str:
    return f"{checksum.algorithm} {base64.b64encode(checksum.digest).decode('ascii')}"


# --- Upload-Expires (IMF-fixdate) -----------------------------------------------------

_IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def format_http_date(moment: datetime) -> str:
    """IMF-fixdate, e.g. `Wed, 25 Jun 2014 16:00:00 GMT`."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_http_date(value: str) -> datetime:
    match = _IMF_FIXDATE.fullmatch(value)
    if not match:
        raise InvalidHeader(f"{value[:40]!r} is not an IMF-fixdate date.")
    weekday, day, month, year, hour, minute, second = match.groups()
    try:
        moment = datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise InvalidHeader(f"{value[:40]!r} is not a valid date.") from exc
    if _WEEKDAYS[moment.weekday()] != weekday:
        raise InvalidHeader(f"{value[:40]!r} names the wrong weekday.")
    return moment


# --- IETF structured fields (the subset the resumable-upload draft uses) ----------------


def parse_sf_boolean(value: str) -> bool:
    if value == "?1":
        return True
    if value == "?0":
        return False
    raise InvalidHeader(f"Expected a structured-field boolean ?0 or ?1, got {value[:20]!r}.")


def format_sf_boolean(value: bool) -> str:
    return "?1" if value else "?0"


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_INT = re.compile(r"-?[0-9]{1,15}")


def parse_sf_int_dictionary(value: str) -> dict[str, int | bool]:
    """A structured-field dictionary whose members are integers or booleans (Upload-Limit)."""
    result: dict[str, int | bool] = {}
    if value.strip(" ") == "":
        return result
    for member in value.split(","):
        member = member.strip(" \t")
        key, sep, item = member.partition("=")
        if not _SF_KEY.fullmatch(key):
            raise InvalidHeader(f"Invalid structured-field key {key[:20]!r}.")
        if not sep:
            result[key] = True
        elif item in ("?0", "?1"):
            result[key] = item == "?1"
        elif _SF_INT.fullmatch(item):
            result[key] = int(item)
        else:
            raise InvalidHeader(f"Structured-field member {key!r} is not an integer or boolean.")
    return result


def format_sf_int_dictionary(members: dict[str, int | bool]) -> str:
    parts = []
    for key, item in members.items():
        if not _SF_KEY.fullmatch(key):
            raise ValueError(f"invalid key {key!r}")
        if item is True:
            parts.append(key)
        elif item is False:
            parts.append(f"{key}=?0")
        else:
            parts.append(f"{key}={item}")
    return ", ".join(parts)
