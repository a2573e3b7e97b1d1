"""tusd-py uploads list|show|delete against a running server's state and store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess
from tests.integration._wire import TUS, create, metadata, patch, stored_uploads, upload_id

MODULE = ["--hooks-module", "tests.integration.hooks_sample"]
ALICE = {"Authorization": "Bearer alice-token"}


def uploads_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tusd_py", "uploads", *args]
    command += ["--data-dir", str(server.data_dir)]
    if server.database_url:
        command += ["--database-url", server.database_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_operators_list_show_and_delete_uploads(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory(MODULE, env={"TUSD_TEST_HOOKS_LOG": str(tmp_path / "log")})
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        report = create(http, 4, meta=metadata(filename="rapport-été.csv"), headers=ALICE)
        assert patch(http, report, 0, b"1234", headers=ALICE).status_code == 204
        photo = create(http, 10, meta=metadata(filename="photo.jpg"))
        kept = create(http, 3, meta=metadata(keep="forever"))

        listed = uploads_cli(server)
        assert listed.returncode == 0, listed.stderr
        for url in (report, photo, kept):
            assert upload_id(url) in listed.stdout
        assert "rapport-été.csv" in listed.stdout

        def ids(*args: str) -> set[str]:
            out = uploads_cli(server, "list", *args)
            assert out.returncode == 0, out.stderr
            return {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}

        assert ids("--owner", "alice") == {upload_id(report)}
        assert ids("--status", "finished") == {upload_id(report)}
        assert ids("--metadata", "filename=photo.jpg") == {upload_id(photo)}
        assert ids("--metadata", "filename=rapport-été.csv") == {upload_id(report)}
        assert ids("--metadata", "keep") == {upload_id(kept)}
        assert ids("--older-than", "3600") == set()

        shown = uploads_cli(server, "show", upload_id(report))
        assert shown.returncode == 0
        assert "alice" in shown.stdout and '"filename": "rapport-été.csv"' in shown.stdout
        assert uploads_cli(server, "show", "x" * 22).returncode == 1

        # an operator ends any upload: another's, and one the pre-terminate hook would keep
        deleted = uploads_cli(server, "delete", upload_id(report), upload_id(kept))
        assert deleted.returncode == 0, deleted.stderr
        assert http.head(report, headers=ALICE).status_code == 410
        assert http.head(kept).status_code == 410
        assert stored_uploads(server) == {upload_id(photo)}
        again = uploads_cli(server, "delete", upload_id(kept))
        assert again.returncode == 1 and "ERR_UPLOAD_GONE" in again.stderr
