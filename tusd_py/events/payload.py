"""The event a hook gets (one JSON shape for Python hooks and webhooks) and the answer it
gives back, read strictly: an answer that is not one fails the hook instead of being guessed."""

from __future__ import annotations

from collections.abc import Mapping

from tusd_protocol import rules
from tusd_protocol.headers import is_valid_metadata_key

from ..core.hooks import HookAnswer, HookFailed, HookPoint, HookRejected

#: the fields an answer may carry, by hook point
ANSWER_FIELDS: dict[HookPoint, frozenset[str]] = {
    HookPoint.PRE_ACCESS: frozenset({"reject", "subject"}),
    HookPoint.PRE_CREATE: frozenset({"reject", "metadata", "id"}),
    HookPoint.PRE_TERMINATE: frozenset({"reject"}),
    HookPoint.PRE_FINISH: frozenset({"reject"}),
}


def read_answer(point: HookPoint, raw: object, source: str) -> HookAnswer:
    """A hook's answer (None or a mapping), or HookRejected when it says no; HookFailed,
    naming `source`, when it is not an answer this point takes."""
    if raw is None:
        return HookAnswer()
    if not isinstance(raw, Mapping):
        raise _bad(source, point, f"an answer must be an object, not {type(raw).__name__}")
    unknown = set(raw) - ANSWER_FIELDS[point]
    if unknown:
        raise _bad(source, point, f"{point.value} does not take {', '.join(sorted(unknown))}")
    reject = raw.get("reject")
    if reject is not None and reject is not False:
        raise _rejection(reject, source, point)
    subject = raw.get("subject")
    if subject is not None and (not isinstance(subject, str) or not 0 < len(subject) <= 256):
        raise _bad(source, point, "subject must be text of 1 to 256 characters")
    metadata = raw.get("metadata")
    if metadata is not None:
        metadata = _metadata(metadata, source, point)
    upload_id = raw.get("id")
    if upload_id is not None and (
        not isinstance(upload_id, str) or not rules.is_valid_upload_id(upload_id)
    ):
        raise _bad(source, point, "id must be 16 to 64 letters, digits, '-' or '_'")
    return HookAnswer(subject=subject, metadata=metadata, upload_id=upload_id)


def _rejection(reject: object, source: str, point: HookPoint) -> HookRejected | HookFailed:
    if reject is True:
        return HookRejected(403)
    if not isinstance(reject, Mapping):
        return _bad(source, point, "reject must be true or an object")
    status = reject.get("status", 403)
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        return _bad(source, point, "reject.status must be a number from 400 to 599")
    message = reject.get("message")
    code = reject.get("code")
    headers = reject.get("headers") or {}
    if message is not None and not isinstance(message, str):
        return _bad(source, point, "reject.message must be text")
    if code is not None and not (isinstance(code, str) and code.replace("_", "").isalnum()):
        return _bad(source, point, "reject.code must be letters, digits and '_'")
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and _safe_header(k, v) for k, v in headers.items()
    ):
        return _bad(source, point, "reject.headers must map header names to text")
    return HookRejected(status, message, code=code, headers=dict(headers))


def _safe_header(name: str, value: str) -> bool:
    return name.replace("-", "").isalnum() and "\r" not in value and "\n" not in value


def _metadata(raw: object, source: str, point: HookPoint) -> dict[str, str | None]:
    if not isinstance(raw, Mapping):
        raise _bad(source, point, "metadata must be an object of text values")
    metadata: dict[str, str | None] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not is_valid_metadata_key(key):
            raise _bad(source, point, f"metadata key {key!r} is not a valid key")
        if value is not None and not isinstance(value, str):
            raise _bad(source, point, f"metadata value of {key!r} must be text or null")
        metadata[key] = value
    return metadata


def _bad(source: str, point: HookPoint, why: str) -> HookFailed:
    return HookFailed(
        f"The {point.value} hook ({source}) gave an answer the server cannot use: {why}."
    )
