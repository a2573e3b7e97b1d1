"""HTTP endpoints: the dialect parses a request into a command, the UploadService carries
it out, the dialect formats the outcome.

No rules here: every status code comes from a dialect, a decision or a ProtocolError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tusd_protocol.checksums import ALGORITHMS
from tusd_protocol.commands import Download
from tusd_protocol.dialects import tus1
from tusd_protocol.dialects.tus1 import Headers
from tusd_protocol.errors import (
    MethodNotAllowed,
    ProtocolError,
    ServerFault,
    ServiceUnavailable,
    UploadNotFound,
)
from tusd_protocol.headers import collect_headers
from tusd_storage import StorageError

from ..admission.middleware import client_address
from ..config import Settings
from ..core.hooks import ANONYMOUS, Caller, HookFailed, HookPoint, HookUpload
from ..core.ports import BackendUnavailable, ProgressNote
from ..core.service import UploadService
from ..wiring import Runtime
from .metrics import ERROR_CODE
from .proxy import own_hosts, public_origin

log = logging.getLogger("tusd_py.handlers")


def lock_service_errors() -> tuple[type[BaseException], ...]:
    """What a lock service that is down raises: redis-py's errors only when Redis is in use
    (redis is not imported without it, and nothing can raise them then)."""
    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is None:
        return (BackendUnavailable,)
    return (redis_exceptions.RedisError, BackendUnavailable)


#: methods that change uploads: refused while the server shuts down
WRITES = frozenset({"POST", "PATCH", "DELETE"})

#: the request's Caller, in the ASGI scope (who the pre-access hook said the caller is)
CALLER = "tusd.caller"


def caller_of(request: Request) -> Caller:
    caller: Caller = request.scope.get(CALLER, ANONYMOUS)
    return caller


class TusHandlers:
    def __init__(self, service: UploadService, settings: Settings, runtime: Runtime) -> None:
        self.service = service
        self.settings = settings
        self.runtime = runtime
        self.started = False
        self.checksum_algorithms = tuple(ALGORITHMS)
        hooks = service.hooks
        #: whether any hook listens: only then is a request described for them
        self.hooks_listen = any(hooks.enabled(point) for point in HookPoint)

    # --- dispatch ----------------------------------------------------------------------

    async def collection(self, request: Request) -> Response:
        """The creation URL (base path)."""
        return await self._guarded(request, self._dispatch_collection)

    async def upload(self, request: Request) -> Response:
        """An upload's URL (base path + id)."""
        return await self._guarded(request, self._dispatch_upload)

    async def progress(self, request: Request) -> Response:
        """`<upload URL>/progress`: how far the upload gets, as Server-Sent Events."""
        return await self._guarded(request, self._watch)

    async def _watch(self, request: Request, headers: Headers, method: str) -> Response:
        if method != "GET":
            raise MethodNotAllowed(headers={"Allow": "GET"})
        notes = await self.service.watch(request.path_params["upload_id"], caller_of(request))
        return StreamingResponse(
            progress_events(notes),
            media_type="text/event-stream",
            headers={**tus1.RESUMABLE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def not_found(self, request: Request) -> Response:
        return await self._guarded(request, self._raise_not_found)

    async def _raise_not_found(self, request: Request, headers: Headers, method: str) -> Response:
        raise UploadNotFound()

    async def _dispatch_collection(
        self, request: Request, headers: Headers, method: str
    ) -> Response:
        if method == "OPTIONS":
            return self.options()
        if method == "POST":
            return await self.post(request, headers)
        raise MethodNotAllowed(headers={"Allow": "POST, OPTIONS"})

    async def _dispatch_upload(self, request: Request, headers: Headers, method: str) -> Response:
        upload_id = request.path_params["upload_id"]
        if method == "OPTIONS":
            return self.options()
        if method == "HEAD":
            return await self.head(upload_id, caller_of(request))
        if method == "PATCH":
            return await self.patch(request, headers, upload_id)
        if method == "DELETE":
            return await self.delete(upload_id, caller_of(request))
        if method == "GET":
            return await self.get(request, headers, upload_id)
        raise MethodNotAllowed(headers={"Allow": "HEAD, PATCH, DELETE, GET, OPTIONS"})

    async def _guarded(
        self, request: Request, handler: Callable[[Request, Headers, str], Awaitable[Response]]
    ) -> Response:
        method = request.method
        try:
            if not self.started:
                await self.runtime.start()
                self.started = True
            headers = collect_headers(request.headers.raw)
            method = tus1.effective_method(request.method, headers)
            tus1.check_version(method, headers)
            if self.runtime.draining and method in WRITES:
                raise ServiceUnavailable(
                    "This server is shutting down; retry, and another will take the upload.",
                    headers={"Retry-After": "1"},
                )
            if self.hooks_listen and method != "OPTIONS":
                await self._identify(request, method)
            return await handler(request, headers, method)
        except ProtocolError as exc:
            if isinstance(exc, HookFailed):
                log.warning("%s %s: %s", method, request.url.path, exc.detail)
            return error_response(exc, request, method)
        except (OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            return error_response(ServiceUnavailable(headers={"Retry-After": "5"}), request, method)
        except DBAPIError:
            log.exception("database error")
            return error_response(ServerFault(), request, method)
        except lock_service_errors() as exc:
            # the lock service is down: reads go on from the database, writes wait for it
            log.warning("Redis unavailable in %s %s: %s", method, request.url.path, exc)
            return error_response(
                ServiceUnavailable(
                    "The lock service is unavailable; uploads can be resumed shortly.",
                    headers={"Retry-After": "2"},
                ),
                request,
                method,
            )
        except StorageError as exc:
            # the object store failed or refused what we sent: our side, and likely passing
            log.warning("storage failed in %s %s: %s", method, request.url.path, exc)
            return error_response(
                ServiceUnavailable(
                    "The storage did not accept the bytes; nothing past the last acknowledged "
                    "offset was kept. Retry shortly.",
                    headers={"Retry-After": "2"},
                ),
                request,
                method,
            )
        except Exception:
            log.exception("unexpected error in %s %s", method, request.url.path)
            return error_response(ServerFault(), request, method)

    async def _identify(self, request: Request, method: str) -> None:
        """Describe the request for the hooks, and ask pre-access about it: a rejection is
        the client's answer; a subject names the caller (the owner of what it creates)."""
        raw = {name: value for name, value in request.headers.raw}
        caller = Caller(
            method=method,
            uri=str(request.url),
            remote_address=client_address(request.scope, raw, self.settings.behind_proxy),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in raw.items()},
        )
        hooks = self.service.hooks
        if hooks.enabled(HookPoint.PRE_ACCESS):
            upload = HookUpload(id=request.path_params.get("upload_id"))
            answer = await hooks.call(HookPoint.PRE_ACCESS, upload, caller)
            if answer.subject is not None:
                caller = replace(caller, subject=answer.subject)
        request.scope[CALLER] = caller

    # --- methods -----------------------------------------------------------------------

    def options(self) -> Response:
        headers = tus1.options_headers(self.service.limits, self.checksum_algorithms)
        return Response(status_code=200, headers=headers)

    async def post(self, request: Request, headers: Headers) -> Response:
        upload = await self.service.create(
            tus1.parse_create(headers),
            request.receive,
            self._base_path(request),
            own_hosts(request, self.settings.behind_proxy),
            caller_of(request),
        )
        location = self.location(request, upload.id)
        return Response(status_code=201, headers=tus1.created_headers(upload, location))

    async def head(self, upload_id: str, caller: Caller = ANONYMOUS) -> Response:
        upload = await self.service.head(upload_id, caller)
        return Response(status_code=200, headers=tus1.head_headers(upload))

    async def patch(self, request: Request, headers: Headers, upload_id: str) -> Response:
        command = tus1.parse_append(headers)
        upload = await self.service.append(upload_id, command, request.receive, caller_of(request))
        return Response(status_code=204, headers=tus1.appended_headers(upload))

    async def delete(self, upload_id: str, caller: Caller = ANONYMOUS) -> Response:
        await self.service.terminate(upload_id, caller)
        return Response(status_code=204, headers=tus1.RESUMABLE)

    async def get(self, request: Request, headers: Headers, upload_id: str) -> Response:
        command = Download(
            range=headers.get("range"),
            if_none_match=headers.get("if-none-match"),
            if_range=headers.get("if-range"),
        )
        result = await self.service.download(upload_id, command, caller_of(request))
        plan = result.plan
        out = {**tus1.RESUMABLE, **plan.headers}
        if not plan.sends_body:
            return Response(status_code=plan.status, headers=out)
        return StreamingResponse(result.body(), status_code=plan.status, headers=out)

    # --- URLs --------------------------------------------------------------------------

    def _base_path(self, request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + self.settings.base_path

    def location(self, request: Request, upload_id: str) -> str:
        scheme, host = public_origin(request, self.settings.behind_proxy)
        return f"{scheme}://{host}{self._base_path(request)}{upload_id}"


#: seconds without a note after which a progress stream sends a comment, so that proxies and
#: clients see the connection is alive
KEEP_ALIVE = 15.0


async def progress_events(notes: AsyncIterator[ProgressNote | None]) -> AsyncIterator[bytes]:
    """Server-Sent Events: `progress` while the upload receives (offset, length, bytes per
    second since the previous note), then one event named after how it ended (`finished`,
    `terminated`, `expired`, `failed`), and the stream ends."""
    loop = asyncio.get_running_loop()
    previous: tuple[int, float] | None = None
    written = loop.time()
    async for note in notes:
        now = loop.time()
        if note is None:
            if now - written >= KEEP_ALIVE:
                written = now
                yield b": keep-alive\n\n"
            continue
        rate = None
        if previous is not None and now > previous[1]:
            rate = round((note.offset - previous[0]) / (now - previous[1]), 1)
        previous, written = (note.offset, now), now
        data: dict[str, object] = {
            "offset": note.offset,
            "length": note.length,
            "status": note.status,
        }
        if rate is not None:
            data["bytes_per_second"] = rate
        name = "progress" if not note.final else note.status
        yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def error_response(exc: ProtocolError, request: Request, method: str) -> Response:
    """PROTOCOL 25: a stable code and a sentence, as text or (when asked) JSON."""
    request.scope[ERROR_CODE] = exc.code  # for tusd_errors_total{code}
    headers = tus1.error_headers(exc)
    if exc.status >= 500:
        headers.setdefault("Retry-After", "1")
    if method == "HEAD" or request.method == "HEAD":
        return Response(status_code=exc.status, headers=headers)
    if "application/json" in request.headers.get("accept", ""):
        body = json.dumps({"code": exc.code, "message": exc.message})
        return Response(body, exc.status, headers, media_type="application/json")
    return Response(f"{exc.code}: {exc.message}\n", exc.status, headers, media_type="text/plain")
