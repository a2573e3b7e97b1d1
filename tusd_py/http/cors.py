"""CORS for browser clients (tus-js-client, Uppy): PROTOCOL 21.

A pure ASGI middleware: it answers preflights itself and adds the allow/expose headers to
every other response; it never touches request bodies.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
ALLOW_HEADERS = ", ".join(
    [
        "Authorization",
        "Origin",
        "X-Requested-With",
        "X-Request-ID",
        "X-HTTP-Method-Override",
        "Content-Type",
        "Upload-Length",
        "Upload-Offset",
        "Tus-Resumable",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Checksum",
        "Upload-Complete",
        "Upload-Incomplete",
        "Upload-Draft-Interop-Version",
        "Range",
        "If-None-Match",
        "If-Range",
    ]
)
EXPOSE_HEADERS = ", ".join(
    [
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Concat",
        "Upload-Expires",
        "Upload-Checksum",
        "Upload-Complete",
        "Upload-Limit",
        "Upload-Draft-Interop-Version",
        "Tus-Version",
        "Tus-Resumable",
        "Tus-Extension",
        "Tus-Max-Size",
        "Tus-Checksum-Algorithm",
        "Content-Range",
        "Content-Disposition",
        "ETag",
        "Retry-After",
    ]
)


class CORSMiddleware:
    """Origins `("*",)`: any page may upload, as nobody (`Access-Control-Allow-Origin: *`, never
    credentials). An explicit origin list: those origins are echoed, and get credentials (cookies,
    HTTP auth) only with `allow_credentials`. Every answer carries `Vary: Origin`, since it
    depends on the request's Origin."""

    def __init__(
        self, app: ASGIApp, origins: tuple[str, ...], allow_credentials: bool = False
    ) -> None:
        self.app = app
        self.any_origin = "*" in origins
        if allow_credentials and self.any_origin:
            raise ValueError(
                "CORS credentials need an explicit origin list: with '*' any web page a "
                "signed-in user visits could send requests in that user's name"
            )
        self.allow_credentials = allow_credentials
        self.origins = frozenset(o.rstrip("/").lower() for o in origins if o != "*")

    def allowed(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins

    def grant(self, origin: str) -> list[tuple[str, str]]:
        """The headers that let a page at this (allowed) origin use the answer."""
        if self.any_origin:
            return [("Access-Control-Allow-Origin", "*")]
        granted = [("Access-Control-Allow-Origin", origin)]
        if self.allow_credentials:
            granted.append(("Access-Control-Allow-Credentials", "true"))
        return granted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if (
            origin is not None
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        ):
            await self._preflight(origin, send)
            return
        granted = self.grant(origin) if origin is not None and self.allowed(origin) else []

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                if granted:
                    for name, value in granted:
                        out[name] = value
                    out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: str, send: Send) -> None:
        if not self.allowed(origin):
            body = b"ERR_ORIGIN_NOT_ALLOWED: This origin may not use this server.\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"tus-resumable", b"1.0.0"),
                (b"vary", b"Origin"),
            ]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [
            (name.lower().encode(), value.encode("latin-1")) for name, value in self.grant(origin)
        ]
        headers += [
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            (b"access-control-max-age", b"86400"),
            (b"vary", b"Origin"),
            (b"tus-resumable", b"1.0.0"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
