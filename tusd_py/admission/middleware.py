"""Admission as a pure ASGI middleware: the policy decides from the method and a few
headers, before the application (or anyone) reads a byte of the body.

A refused request is answered here, with the project's error body and `Retry-After`; its
body, if the client sends it anyway, is discarded by the HTTP server and the connection
stays usable. An admitted request that took a concurrency slot gives it back when its
response is complete or, whatever happens (disconnect, exception, cancellation), when the
application returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tusd_protocol.dialects import tus1

from .policy import AdmissionPolicy, Kind, RateLimiter, Refuse, classify

#: paths that are never refused: a load balancer's and a scraper's questions
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: methods that can only be refused by a rate limit
_PASSIVE = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_WANTED = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"x-http-method-override",
        b"upload-length",
        b"forwarded",
        b"x-forwarded-for",
        b"accept",
    }
)


def _header_values(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The first value of each header admission looks at (names lower-cased, as ASGI
    servers hand them over)."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _WANTED and name not in found:
            found[name] = value
    return found


#: the largest integer tus allows (PROTOCOL 8); anything else is the application's 400
MAX_INTEGER = 2**63 - 1


def _length(value: bytes | None) -> int | None:
    """A valid tus integer, else None (the application refuses what does not parse)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isdigit() and len(text) <= 19):
        return None
    number = int(text)
    return number if number <= MAX_INTEGER else None


def _node_address(node: str) -> str:
    """An RFC 7239 node (`192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`, `unknown`)
    without its port."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node[1:]
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node


def client_address(scope: Scope, headers: dict[bytes, bytes], behind_proxy: bool) -> str:
    """Who is asking: the peer's address, or behind a proxy the first address of
    `Forwarded: for=` or else of `X-Forwarded-For` (the proxy must set them)."""
    if behind_proxy:
        forwarded = headers.get(b"forwarded")
        if forwarded is not None:
            first = forwarded.decode("latin-1").split(",", 1)[0]
            for pair in first.split(";"):
                key, sep, value = pair.strip().partition("=")
                if sep and key.lower() == "for" and value.strip():
                    return _node_address(value)
        forwarded_for = headers.get(b"x-forwarded-for")
        if forwarded_for is not None:
            first = forwarded_for.decode("latin-1").split(",", 1)[0].strip()
            if first:
                return _node_address(first)
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


def _relative_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class AdmissionMiddleware:
    """`limiter` (token buckets by client) may be None: no rate limit. `on_refusal` hears
    the reason of each refusal ("concurrency", "rate", "memory", "disk"): a metrics hook."""

    def __init__(
        self,
        app: ASGIApp,
        policy: AdmissionPolicy,
        limiter: RateLimiter | None = None,
        behind_proxy: bool = False,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.limiter = limiter
        self.behind_proxy = behind_proxy
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        if (self.limiter is None and method in _PASSIVE) or _relative_path(scope) in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        headers = _header_values(scope.get("headers", ()))
        override = headers.get(b"x-http-method-override")
        if method == "POST" and override is not None:
            method = override.decode("latin-1").strip().upper()
        has_body = bool(_length(headers.get(b"content-length"))) or (
            b"transfer-encoding" in headers
        )
        kind = classify(method, has_body)
        if kind is Kind.OTHER and self.limiter is None:
            await self.app(scope, receive, send)
            return
        wait = 0.0
        if self.limiter is not None:
            wait = await self.limiter.acquire(client_address(scope, headers, self.behind_proxy))
        upload_length = _length(headers.get(b"upload-length")) if method == "POST" else None
        decision = self.policy.decide(kind, upload_length, wait)
        if isinstance(decision, Refuse):
            if self.on_refusal is not None:
                self.on_refusal(decision.reason)
            await _send_refusal(decision, scope, headers, send)
            return
        if not decision.holds_slot:
            await self.app(scope, receive, send)
            return
        await self._run_holding_slot(scope, receive, send)

    async def _run_holding_slot(self, scope: Scope, receive: Receive, send: Send) -> None:
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.policy.release()

        async def send_then_release(message: Message) -> None:
            try:
                await send(message)
            finally:
                # the answer is complete: whatever the application does next needs no slot
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


async def _send_refusal(
    refusal: Refuse, scope: Scope, headers: dict[bytes, bytes], send: Send
) -> None:
    """The project's error answer (as http.endpoints.error_response makes it): `CODE:
    sentence` as text, or JSON when asked, no body for HEAD; Tus-Resumable, Retry-After."""
    error = refusal.error
    scope["tusd_py.error_code"] = error.code  # for tusd_errors_total (http/metrics.py)
    if scope["method"] == "HEAD":
        body, media_type = b"", None
    elif b"application/json" in headers.get(b"accept", b""):
        body = json.dumps({"code": error.code, "message": error.message}).encode()
        media_type = b"application/json"
    else:
        body = f"{error.code}: {error.message}\n".encode()
        media_type = b"text/plain; charset=utf-8"
    out = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in tus1.error_headers(error).items()
    ]
    if media_type is not None:
        out.append((b"content-type", media_type))
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": out})
    await send({"type": "http.response.body", "body": body})
