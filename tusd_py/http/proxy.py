"""Where the client thinks we are: scheme and host for absolute upload URLs.

Forwarded / X-Forwarded-* headers are believed only with --behind-proxy; otherwise any
client could make us hand out URLs pointing elsewhere.
"""

from __future__ import annotations

import re

from starlette.requests import Request

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_SCHEMES = frozenset({"http", "https"})


def _forwarded(value: str) -> dict[str, str]:
    """The first element of a Forwarded header (RFC 7239), lower-cased keys."""
    first = value.split(",", 1)[0]
    pairs: dict[str, str] = {}
    for part in first.split(";"):
        key, sep, item = part.strip().partition("=")
        if sep:
            pairs[key.lower()] = item.strip().strip('"')
    return pairs


def public_origin(request: Request, behind_proxy: bool) -> tuple[str, str]:
    """(scheme, host[:port]) as the client addressed us."""
    scheme = request.url.scheme if request.url.scheme in _SCHEMES else "http"
    host = request.headers.get("host", "")
    if behind_proxy:
        forwarded = _forwarded(request.headers.get("forwarded", ""))
        proto = forwarded.get("proto") or _first(request.headers.get("x-forwarded-proto"))
        fhost = forwarded.get("host") or _first(request.headers.get("x-forwarded-host"))
        if proto and proto.lower() in _SCHEMES:
            scheme = proto.lower()
        if fhost and _HOST.fullmatch(fhost):
            host = fhost
    if not _HOST.fullmatch(host):
        server = request.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    return scheme, host


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


def own_hosts(request: Request, behind_proxy: bool) -> frozenset[str]:
    """Hosts under which our own upload URLs may appear (for Upload-Concat)."""
    hosts = {request.headers.get("host", "").lower(), public_origin(request, behind_proxy)[1]}
    return frozenset(h.lower() for h in hosts if h)
