"""The tus URLs, answered without Starlette's router in between.

A PATCH awaits many times (each body slice, each write, the database, the lock service),
and every resumption runs back through every frame of the ASGI stack between uvicorn and
the handler. Starlette's router, its exception wrappers and its endpoint adapter are eight
of those frames, and with the middleware they made the HTTP layers about a third of the
server's CPU in a profile at 1,000 concurrent uploads. Innermost of our middleware, this
one answers the creation URL and the upload URLs itself (the handlers catch every error
of their own); everything else (/health, /ready, /metrics, other methods) goes on to the
router as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]

#: paths the router keeps even when the base path is "/"
OTHER_ROUTES = frozenset({"/health", "/ready", "/metrics"})


class TusRoutes:
    def __init__(
        self,
        app: ASGIApp,
        base_path: str,
        collection: Handler,
        upload: Handler,
        methods: Collection[str],
    ) -> None:
        self.app = app
        self.base = base_path  # ends with "/"
        self.base_bare = base_path.rstrip("/") or "/"
        self.collection = collection
        self.upload = upload
        self.methods = frozenset(methods)

    def match(self, path: str) -> tuple[Handler | None, str | None]:
        """(handler, upload id) for a tus URL, (None, None) for anything else."""
        if path == self.base or path == self.base_bare:
            return self.collection, None
        if path.startswith(self.base) and path not in OTHER_ROUTES:
            upload_id = path[len(self.base) :]
            if upload_id and "/" not in upload_id:
                return self.upload, upload_id
        return None, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.methods:
            handler, upload_id = self.match(get_route_path(scope))
            if handler is not None:
                if upload_id is not None:
                    scope["path_params"] = {"upload_id": upload_id}
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
