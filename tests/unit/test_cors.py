"""CORSMiddleware alone, around a tiny ASGI app: PROTOCOL 21's origin and credential rules."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.unit._async import run
from tusd_py.http.cors import CORSMiddleware

ORIGIN = "https://a.example"
LISTED = ("https://a.example", "https://b.example")


async def tiny_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request 204 with one header of its own (and counts itself as reached)."""
    assert scope["type"] == "http"
    headers = [(b"x-app", b"reached"), (b"vary", b"Accept-Encoding")]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def request(
    origins: tuple[str, ...],
    method: str = "HEAD",
    headers: dict[str, str] | None = None,
    allow_credentials: bool = False,
) -> httpx.Response:
    middleware = CORSMiddleware(tiny_app, origins=origins, allow_credentials=allow_credentials)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://tus.test") as client:
            return await client.request(method, "/files/x", headers=headers or {})

    return run(main)


def preflight(
    origins: tuple[str, ...], origin: str = ORIGIN, allow_credentials: bool = False
) -> httpx.Response:
    return request(
        origins,
        "OPTIONS",
        {"Origin": origin, "Access-Control-Request-Method": "PATCH"},
        allow_credentials,
    )


def vary(response: httpx.Response) -> set[str]:
    return {
        item.strip().lower()
        for value in response.headers.get_list("vary")
        for item in value.split(",")
        if item.strip()
    }


def cors_headers(response: httpx.Response) -> list[str]:
    return [name for name in response.headers if name.lower().startswith("access-control-")]


# --- any origin (the default) ---------------------------------------------------------------


def test_any_origin_preflight_allows_star_without_credentials() -> None:
    response = preflight(("*",))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert "patch" in response.headers["access-control-allow-methods"].lower()
    assert "upload-offset" in response.headers["access-control-allow-headers"].lower()
    assert "x-app" not in response.headers  # answered by the middleware itself


def test_any_origin_response_allows_star_without_credentials() -> None:
    response = request(("*",), headers={"Origin": ORIGIN})
    assert response.status_code == 204
    assert response.headers["x-app"] == "reached"
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert "upload-offset" in response.headers["access-control-expose-headers"].lower()


def test_star_wins_over_listed_origins() -> None:
    response = request(("*", ORIGIN), headers={"Origin": "https://other.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_credentials_with_any_origin_are_refused() -> None:
    with pytest.raises(ValueError, match="origin"):
        CORSMiddleware(tiny_app, origins=("*",), allow_credentials=True)


# --- listed origins -------------------------------------------------------------------------


def test_listed_origin_is_echoed_without_credentials_by_default() -> None:
    for response in (preflight(LISTED), request(LISTED, headers={"Origin": ORIGIN})):
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-credentials" not in response.headers
        assert "origin" in vary(response)


def test_listed_origin_with_credentials_opted_in() -> None:
    for response in (
        preflight(LISTED, allow_credentials=True),
        request(LISTED, headers={"Origin": ORIGIN}, allow_credentials=True),
    ):
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "origin" in vary(response)


def test_listed_origin_keeps_the_apps_vary() -> None:
    response = request(LISTED, headers={"Origin": ORIGIN})
    assert vary(response) >= {"origin", "accept-encoding"}


def test_other_origin_preflight_is_refused() -> None:
    for allow_credentials in (False, True):
        response = preflight(LISTED, "https://evil.example", allow_credentials)
        assert response.status_code == 403
        assert response.text.startswith("ERR_ORIGIN_NOT_ALLOWED")
        assert not cors_headers(response)


def test_other_origin_request_is_served_without_cors_headers() -> None:
    for allow_credentials in (False, True):
        response = request(
            LISTED, headers={"Origin": "https://evil.example"}, allow_credentials=allow_credentials
        )
        assert response.status_code == 204
        assert response.headers["x-app"] == "reached"
        assert not cors_headers(response)
        assert "origin" in vary(response)  # another origin's answer differs: caches must know


def test_request_without_origin_is_passed_through() -> None:
    for origins in (("*",), LISTED):
        response = request(origins)
        assert response.status_code == 204
        assert not cors_headers(response)
