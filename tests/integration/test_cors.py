"""CORS: PROTOCOL.md item 21 and the wire contract's origin rules.

The default (any origin) answers `Access-Control-Allow-Origin: *` and never allows
credentials; a listed origin is echoed with `Vary: Origin`, with credentials only when the
operator asks for them (--cors-allow-credentials).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import assert_error, create, patch

ORIGIN = "https://app.example"
REQUEST_HEADERS = [
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Request-ID",
    "Authorization",
    "Content-Type",
]
EXPOSED_HEADERS = [
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
]


def names(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def preflight(
    server: ServerProcess,
    origin: str,
    method: str = "PATCH",
    headers: str = "tus-resumable,upload-offset,content-type",
    path: str = "/files/",
) -> httpx.Response:
    return httpx.options(
        f"{server.base_url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


LISTED = ["--cors-origins", "https://a.example,https://b.example"]


@pytest.fixture
def restricted(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(extra_args=LISTED)  # type: ignore[no-any-return]


@pytest.fixture
def credentialed(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(extra_args=[*LISTED, "--cors-allow-credentials"])  # type: ignore[no-any-return]


def cors_headers(response: httpx.Response) -> list[str]:
    return [name for name in response.headers if name.lower().startswith("access-control-")]


def head(server: ServerProcess, origin: str) -> httpx.Response:
    """HEAD on a fresh upload, as a browser page at `origin` would send it."""
    with httpx.Client(base_url=server.base_url, headers={"Tus-Resumable": "1.0.0"}) as client:
        url = create(client, 3)
        return client.head(url, headers={"Origin": origin})


# --- preflight ------------------------------------------------------------------------------


def test_preflight_answers_200(server: ServerProcess) -> None:
    assert preflight(server, ORIGIN).status_code == 200


def test_preflight_needs_no_tus_resumable(server: ServerProcess) -> None:
    response = preflight(server, ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


def test_default_preflight_allows_any_origin_without_credentials(server: ServerProcess) -> None:
    for origin in (ORIGIN, "https://evil.example", "null"):
        response = preflight(server, origin)
        assert response.status_code == 200, origin
        assert response.headers["access-control-allow-origin"] == "*", origin
        assert "access-control-allow-credentials" not in response.headers, origin


def test_preflight_allows_every_tus_method(server: ServerProcess) -> None:
    for method in ("POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS"):
        response = preflight(server, ORIGIN, method=method)
        assert response.status_code == 200, method
        assert method.lower() in names(response.headers["access-control-allow-methods"]), method


def test_preflight_allows_the_tus_request_headers(server: ServerProcess) -> None:
    response = preflight(server, ORIGIN, headers=",".join(name.lower() for name in REQUEST_HEADERS))
    assert response.status_code == 200
    allowed = names(response.headers["access-control-allow-headers"])
    missing = {name.lower() for name in REQUEST_HEADERS} - allowed
    assert not missing, f"not allowed: {sorted(missing)}"


def test_preflight_carries_max_age(server: ServerProcess) -> None:
    response = preflight(server, ORIGIN)
    assert int(response.headers["access-control-max-age"]) > 0


def test_preflight_on_an_upload_url(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, headers={"Tus-Resumable": "1.0.0"}) as client:
        url = create(client, 3)
    response = preflight(server, ORIGIN, method="PATCH", path=httpx.URL(url).path)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


# --- actual requests ---------------------------------------------------------------------------


def test_creation_response_exposes_the_tus_headers(server: ServerProcess) -> None:
    response = httpx.post(
        server.files_url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3", "Origin": ORIGIN}
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    exposed = names(response.headers["access-control-expose-headers"])
    missing = {name.lower() for name in EXPOSED_HEADERS} - exposed
    assert not missing, f"not exposed: {sorted(missing)}"


def test_head_response_carries_cors_headers(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 3)
    response = client.head(url, headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert "upload-offset" in names(response.headers["access-control-expose-headers"])


def test_error_response_carries_cors_headers(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 10)
    response = patch(client, url, 5, b"abc", headers={"Origin": ORIGIN})
    assert response.status_code == 409
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert "upload-offset" in names(response.headers["access-control-expose-headers"])


def test_vary_origin_on_actual_requests(server: ServerProcess, client: httpx.Client) -> None:
    url = create(client, 3)
    response = client.head(url, headers={"Origin": ORIGIN})
    assert "origin" in names(response.headers["vary"])


# --- configured origins ---------------------------------------------------------------------------


def test_configured_origin_preflight_is_allowed(restricted: ServerProcess) -> None:
    response = preflight(restricted, "https://b.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://b.example"
    assert "origin" in names(response.headers["vary"])
    assert "access-control-allow-credentials" not in response.headers


def test_other_origin_preflight_is_403(restricted: ServerProcess) -> None:
    response = preflight(restricted, "https://evil.example")
    assert_error(response, 403, "ERR_ORIGIN_NOT_ALLOWED")
    assert "access-control-allow-origin" not in response.headers


def test_origin_match_is_exact(restricted: ServerProcess) -> None:
    for origin in ("https://a.example.evil.example", "http://a.example", "https://a.example:8443"):
        response = preflight(restricted, origin)
        assert response.status_code == 403, origin
        assert "access-control-allow-origin" not in response.headers


def test_other_origin_request_is_served_without_cors_headers(restricted: ServerProcess) -> None:
    response = httpx.post(
        restricted.files_url,
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3", "Origin": "https://evil.example"},
    )
    assert response.status_code == 201
    leaked = cors_headers(response)
    assert not leaked, leaked


def test_configured_origin_request_gets_cors_headers(restricted: ServerProcess) -> None:
    response = httpx.post(
        restricted.files_url,
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3", "Origin": "https://a.example"},
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    assert "origin" in names(response.headers["vary"])
    assert "access-control-allow-credentials" not in response.headers
    assert "location" in names(response.headers["access-control-expose-headers"])


def test_configured_origin_head_gets_no_credentials(restricted: ServerProcess) -> None:
    response = head(restricted, "https://a.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    assert "origin" in names(response.headers["vary"])
    assert "access-control-allow-credentials" not in response.headers


# --- configured origins with credentials (--cors-allow-credentials) ---------------------------


def test_credentialed_preflight_allows_credentials(credentialed: ServerProcess) -> None:
    response = preflight(credentialed, "https://a.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "origin" in names(response.headers["vary"])


def test_credentialed_head_allows_credentials(credentialed: ServerProcess) -> None:
    response = head(credentialed, "https://b.example")
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert response.headers["access-control-allow-origin"] == "https://b.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "origin" in names(response.headers["vary"])
    assert "upload-offset" in names(response.headers["access-control-expose-headers"])


def test_credentialed_other_origin_preflight_is_403(credentialed: ServerProcess) -> None:
    response = preflight(credentialed, "https://evil.example")
    assert_error(response, 403, "ERR_ORIGIN_NOT_ALLOWED")
    assert not cors_headers(response)


def test_credentialed_other_origin_request_is_served_without_cors_headers(
    credentialed: ServerProcess,
) -> None:
    response = head(credentialed, "https://evil.example")
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert not cors_headers(response)


def test_credentials_from_the_environment(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(extra_args=LISTED, env={"TUSD_CORS_ALLOW_CREDENTIALS": "true"})
    response = preflight(server, "https://a.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-credentials"] == "true"
