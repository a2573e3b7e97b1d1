"""Counting requests, and GET /metrics.

RequestMetrics is a pure ASGI middleware, outermost, so that every answer is counted,
including refusals by admission control and CORS preflights. Per request it keeps a start
time and the status of the response start, then reports method, status, duration and, for
an error, the code that `endpoints.error_response` leaves in the scope under ERROR_CODE.
/metrics, /health and /ready are not tus requests: they are not counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics.prometheus import CONTENT_TYPE, PrometheusMeter

#: where an error answer leaves its stable code (ERR_...) for the request counter
ERROR_CODE = "tusd_py.error_code"
NOT_COUNTED = frozenset({"/metrics", "/health", "/ready"})


class RequestMetrics:
    def __init__(self, app: ASGIApp, meter: PrometheusMeter) -> None:
        self.app = app
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in NOT_COUNTED:
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # no response started: the application failed (Starlette answers 500)
            self.meter.request_done(
                scope["method"], status or 500, perf_counter() - started, scope.get(ERROR_CODE)
            )


def metrics_endpoint(meter: PrometheusMeter) -> Callable[[Request], Awaitable[Response]]:
    """GET /metrics: no Tus-Resumable needed, and not counted as a tus request."""

    async def metrics(request: Request) -> Response:
        return Response(meter.exposition(), media_type=CONTENT_TYPE)

    return metrics
