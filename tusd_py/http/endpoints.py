"""HTTP handlers: parse with tusd_protocol, ask the UploadService, format the response.

No business rules here: every status code comes from a decision or a ProtocolError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tusd_protocol import decisions as rules
from tusd_protocol.checksums import ALGORITHMS
from tusd_protocol.decisions import Headers
from tusd_protocol.errors import (
    MethodNotAllowed,
    ProtocolError,
    ServerFault,
    ServiceUnavailable,
    UploadNotFound,
)
from tusd_protocol.headers import collect_headers, format_uint
from tusd_protocol.state import Upload, UploadStatus
from tusd_storage import StorageError

from ..config import Settings
from ..core.ports import BackendUnavailable
from ..core.service import UploadService
from .proxy import own_hosts, public_origin

log = logging.getLogger("tusd_py.handlers")

TUS_HEADERS = {"Tus-Resumable": rules.TUS_VERSION}


class TusHandlers:
    def __init__(
        self,
        service: UploadService,
        settings: Settings,
        ensure_started: Callable[[], Awaitable[None]],
    ) -> None:
        self.service = service
        self.settings = settings
        self.ensure_started = ensure_started
        self.started = False
        self.checksum_algorithms = tuple(ALGORITHMS)

    # --- dispatch ----------------------------------------------------------------------

    async def collection(self, request: Request) -> Response:
        """The creation URL (base path)."""
        return await self._guarded(request, self._dispatch_collection)

    async def upload(self, request: Request) -> Response:
        """An upload's URL (base path + id)."""
        return await self._guarded(request, self._dispatch_upload)

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
            return await self.head(upload_id)
        if method == "PATCH":
            return await self.patch(request, headers, upload_id)
        if method == "DELETE":
            return await self.delete(upload_id)
        if method == "GET":
            return await self.get(request, headers, upload_id)
        raise MethodNotAllowed(headers={"Allow": "HEAD, PATCH, DELETE, GET, OPTIONS"})

    async def _guarded(
        self, request: Request, handler: Callable[[Request, Headers, str], Awaitable[Response]]
    ) -> Response:
        method = request.method
        try:
            if not self.started:
                await self.ensure_started()
                self.started = True
            headers = collect_headers(request.headers.raw)
            method = rules.effective_method(request.method, headers)
            rules.check_tus_resumable(method, headers)
            return await handler(request, headers, method)
        except ProtocolError as exc:
            return error_response(exc, request, method)
        except (OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            return error_response(ServiceUnavailable(headers={"Retry-After": "5"}), request, method)
        except DBAPIError:
            log.exception("database error")
            return error_response(ServerFault(), request, method)
        except (RedisError, BackendUnavailable) as exc:
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

    # --- methods -----------------------------------------------------------------------

    def options(self) -> Response:
        headers = rules.options_headers(self.service.limits, self.checksum_algorithms)
        return Response(status_code=200, headers={**TUS_HEADERS, **headers})

    async def post(self, request: Request, headers: Headers) -> Response:
        upload = await self.service.create(
            headers,
            request.receive,
            self._base_path(request),
            own_hosts(request, self.settings.behind_proxy),
        )
        out = {**TUS_HEADERS, "Location": self.location(request, upload.id)}
        out.update(offset_headers(upload))
        out.update(rules.expiry_headers(upload))
        return Response(status_code=201, headers=out)

    async def head(self, upload_id: str) -> Response:
        upload = await self.service.head(upload_id)
        headers = rules.head_headers(upload, self.service.clock())
        return Response(status_code=200, headers={**TUS_HEADERS, **headers})

    async def patch(self, request: Request, headers: Headers, upload_id: str) -> Response:
        upload = await self.service.append(upload_id, headers, request.receive)
        out = {**TUS_HEADERS, "Upload-Offset": format_uint(upload.offset)}
        out.update(rules.expiry_headers(upload))
        return Response(status_code=204, headers=out)

    async def delete(self, upload_id: str) -> Response:
        await self.service.terminate(upload_id)
        return Response(status_code=204, headers=TUS_HEADERS)

    async def get(self, request: Request, headers: Headers, upload_id: str) -> Response:
        download = await self.service.download(upload_id, headers.get("range"))
        upload = download.upload
        assert upload.length is not None
        etag = f'"{upload.id}-{upload.length}"'
        out = {
            **TUS_HEADERS,
            **rules.content_headers(download.metadata),
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=0, must-revalidate",
            "X-Content-Type-Options": "nosniff",
        }
        if headers.get("if-none-match") in (etag, "*"):
            return Response(status_code=304, headers=out)
        byte_range = download.byte_range
        if_range = headers.get("if-range")
        if if_range is not None and if_range != etag:
            byte_range = None
        if byte_range is None:
            start, end, status = 0, upload.length, 200
        else:
            start, end, status = byte_range.start, byte_range.end + 1, 206
            out["Content-Range"] = f"bytes {start}-{end - 1}/{upload.length}"
        out["Content-Length"] = str(end - start)
        return StreamingResponse(download.body(start, end), status_code=status, headers=out)

    # --- URLs --------------------------------------------------------------------------

    def _base_path(self, request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + self.settings.base_path

    def location(self, request: Request, upload_id: str) -> str:
        scheme, host = public_origin(request, self.settings.behind_proxy)
        return f"{scheme}://{host}{self._base_path(request)}{upload_id}"


def offset_headers(upload: Upload) -> dict[str, str]:
    """The 201's Upload-Offset; a final upload has none until it is assembled."""
    if upload.is_final and upload.status is not UploadStatus.FINISHED:
        return {}
    return {"Upload-Offset": format_uint(upload.offset)}


def error_response(exc: ProtocolError, request: Request, method: str) -> Response:
    """PROTOCOL 25: a stable code and a sentence, as text or (when asked) JSON."""
    headers = {**TUS_HEADERS, **exc.headers}
    if exc.status >= 500:
        headers.setdefault("Retry-After", "1")
    if method == "HEAD" or request.method == "HEAD":
        return Response(status_code=exc.status, headers=headers)
    if "application/json" in request.headers.get("accept", ""):
        body = json.dumps({"code": exc.code, "message": exc.message})
        return Response(body, exc.status, headers, media_type="application/json")
    return Response(f"{exc.code}: {exc.message}\n", exc.status, headers, media_type="text/plain")
