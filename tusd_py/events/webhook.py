"""Hooks as HTTP calls: `--hooks-url URL` gets each event as a JSON POST (header Hook-Name
says which point), and answers 2xx with an answer object (or an empty body: go on).

Retries: a connection that fails or a 5xx is tried again (`--hooks-retries`, backing off
from 100 ms), all within `--hooks-timeout` for the whole call; any other status, or no
answer by then, fails the hook (the client gets 500 ERR_HOOK_FAILED).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..core.hooks import Caller, HookAnswer, HookFailed, HookPoint, HookUpload, make_event
from .payload import read_answer

#: the first pause between tries; each later one doubles it
FIRST_BACKOFF = 0.1


class Webhook:
    def __init__(
        self,
        url: str,
        timeout: float,
        retries: int,
        forward_headers: Sequence[str] = (),
        points: frozenset[HookPoint] = frozenset(HookPoint),
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.forward_headers = tuple(name.lower() for name in forward_headers)
        self._points = points
        self._client: httpx.AsyncClient | None = None

    def points(self) -> frozenset[HookPoint]:
        return self._points

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        response = await self._exchange(point, make_event(point, upload, caller))
        source = self.url
        if not response.content.strip():
            return HookAnswer()
        try:
            raw: Any = response.json()
        except ValueError as exc:
            raise HookFailed(
                f"The {point.value} hook ({source}) answered with a body that is not JSON."
            ) from exc
        return read_answer(point, raw, source)

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        """A notifying event: any 2xx takes it (the body is not read)."""
        await self._exchange(point, event)

    async def _exchange(self, point: HookPoint, event: Mapping[str, Any]) -> httpx.Response:
        """POST the event (retries within the deadline): a 2xx response, or HookFailed."""
        headers = {"Content-Type": "application/json", "Hook-Name": point.value}
        request_headers = event["request"]["headers"]
        for name in self.forward_headers:
            value = request_headers.get(name)
            if value is not None:
                headers[name] = value
        body = json.dumps(event, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._post(body, headers, point)
        except TimeoutError as exc:
            raise HookFailed(
                f"The {point.value} hook ({self.url}) did not answer within {self.timeout:g} s."
            ) from exc
        if not 200 <= response.status_code < 300:
            raise HookFailed(
                f"The {point.value} hook ({self.url}) answered {response.status_code}."
            )
        return response

    async def _post(self, body: bytes, headers: dict[str, str], point: HookPoint) -> httpx.Response:
        pause = FIRST_BACKOFF
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.client().post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                if last:
                    raise HookFailed(
                        f"The {point.value} hook ({self.url}) could not be reached: {exc}."
                    ) from exc
            else:
                if response.status_code < 500 or last:
                    return response
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # the last attempt returns or raises
