"""While the server shuts down: new writes are refused with 503 and Retry-After, reads go
on, and /ready reports it (the in-process application, driven directly)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tusd_py.config import Settings
from tusd_py.http.app import build_app

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


def test_a_draining_server_refuses_writes_serves_reads_and_is_not_ready(
    tmp_path: Path,
) -> None:
    app = build_app(Settings(data_dir=tmp_path))
    with TestClient(app, base_url="http://tus.test") as client:
        location = client.post("/files/", headers={**TUS, "Upload-Length": "3"}).headers["Location"]
        assert client.get("/ready").status_code == 200
        app.state.runtime.begin_drain()
        assert client.get("/ready").status_code == 503
        assert "shutting down" in client.get("/ready").text
        for method, headers in (
            ("POST", {**TUS, "Upload-Length": "3"}),
            ("PATCH", {**OCTET, "Upload-Offset": "0"}),
            ("DELETE", TUS),
        ):
            url = "/files/" if method == "POST" else location
            response = client.request(method, url, headers=headers, content=b"abc")
            assert response.status_code == 503, (method, response.text)
            assert response.headers["Retry-After"] == "1"
            assert response.text.startswith("ERR_UNAVAILABLE:")
        head = client.head(location, headers=TUS)
        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == "0"  # the refused PATCH changed nothing
