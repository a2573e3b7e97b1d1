"""--behind-proxy: Location from X-Forwarded-* / Forwarded, and those headers ignored without it."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._wire import upload_all, upload_id

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def proxied(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(extra_args=["--behind-proxy"])  # type: ignore[no-any-return]


def location(server: ServerProcess, headers: dict[str, str]) -> str:
    response = httpx.post(server.files_url, headers={**TUS, "Upload-Length": "3", **headers})
    assert response.status_code == 201, response.text
    return response.headers["location"]


def test_x_forwarded_proto_and_host_build_the_location(proxied: ServerProcess) -> None:
    url = location(
        proxied, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com"}
    )
    assert url.startswith("https://uploads.example.com/files/"), url


def test_x_forwarded_host_keeps_its_port(proxied: ServerProcess) -> None:
    url = location(
        proxied, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com:8443"}
    )
    assert url.startswith("https://uploads.example.com:8443/files/"), url


def test_x_forwarded_proto_alone_keeps_the_host(proxied: ServerProcess) -> None:
    url = location(proxied, {"X-Forwarded-Proto": "https"})
    assert url.startswith(f"https://127.0.0.1:{proxied.port}/files/"), url


def test_x_forwarded_host_alone_keeps_the_scheme(proxied: ServerProcess) -> None:
    url = location(proxied, {"X-Forwarded-Host": "uploads.example.com"})
    assert url.startswith("http://uploads.example.com/files/"), url


def test_forwarded_header_builds_the_location(proxied: ServerProcess) -> None:
    url = location(proxied, {"Forwarded": "for=192.0.2.60;proto=https;host=cdn.example.org"})
    assert url.startswith("https://cdn.example.org/files/"), url


def test_forwarded_header_with_quoted_host_and_port(proxied: ServerProcess) -> None:
    url = location(proxied, {"Forwarded": 'proto=https;host="cdn.example.org:8443"'})
    assert url.startswith("https://cdn.example.org:8443/files/"), url


def test_forwarded_header_parameters_are_case_insensitive(proxied: ServerProcess) -> None:
    url = location(proxied, {"Forwarded": "Proto=https;Host=cdn.example.org"})
    assert url.startswith("https://cdn.example.org/files/"), url


def test_proxied_location_still_names_the_upload(proxied: ServerProcess) -> None:
    url = location(
        proxied, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com"}
    )
    local = f"{proxied.files_url}{upload_id(url)}"
    with httpx.Client(headers=TUS) as client:
        upload_all(client, local, b"abc")
        assert client.get(local).content == b"abc"


def test_proxied_urls_are_accepted_in_upload_concat(proxied: ServerProcess) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com"}
    with httpx.Client(headers=TUS) as client:
        parts = []
        for piece in (b"abc", b"def"):
            response = client.post(
                proxied.files_url,
                headers={"Upload-Length": "3", "Upload-Concat": "partial", **forwarded},
            )
            public = response.headers["location"]
            assert public.startswith("https://uploads.example.com/files/")
            upload_all(client, f"{proxied.files_url}{upload_id(public)}", piece)
            parts.append(public)
        response = client.post(
            proxied.files_url, headers={"Upload-Concat": "final;" + " ".join(parts), **forwarded}
        )
        assert response.status_code == 201, response.text
        final = f"{proxied.files_url}{upload_id(response.headers['location'])}"
        assert client.get(final).content == b"abcdef"


def test_proxy_headers_are_ignored_without_the_flag(server: ServerProcess) -> None:
    url = location(server, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"})
    assert url.startswith(f"http://127.0.0.1:{server.port}/files/"), url


def test_forwarded_header_is_ignored_without_the_flag(server: ServerProcess) -> None:
    url = location(server, {"Forwarded": "proto=https;host=evil.example"})
    assert url.startswith(f"http://127.0.0.1:{server.port}/files/"), url
