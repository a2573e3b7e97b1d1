"""The application works mounted under a prefix of another ASGI app (in-process client)."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from tusd_py.config import Settings
from tusd_py.http.app import build_app

TUS = {"Tus-Resumable": "1.0.0"}


def test_mounted_app_starts_on_first_request_and_builds_prefixed_urls(tmp_path: Path) -> None:
    uploads = build_app(Settings(data_dir=tmp_path, expiration=0))
    outer = Starlette(routes=[Mount("/api", app=uploads)])
    with TestClient(outer, base_url="http://example.test") as client:
        created = client.post("/api/files/", headers={**TUS, "Upload-Length": "5"})
        assert created.status_code == 201
        location = created.headers["Location"]
        assert location.startswith("http://example.test/api/files/")
        patched = client.patch(
            location,
            content=b"hello",
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204
        assert client.get(location, headers=TUS).content == b"hello"
