"""The tusd-py command: options, environment variables, migrate, gc, refusal to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, PostgresDatabases, ServerProcess

SERVE_OPTIONS = [
    "--host",
    "--port",
    "--base-path",
    "--data-dir",
    "--database-url",
    "--max-size",
    "--expiration",
    "--cors-origins",
    "--behind-proxy",
    "--log-level",
    "--storage",
    "--s3-endpoint",
    "--s3-region",
    "--s3-access-key",
    "--s3-secret-key",
    "--s3-secure",
    "--s3-create-bucket",
    "--s3-part-size",
    "--s3-max-concurrent-parts",
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tusd_py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_serve_help_explains_every_option() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in SERVE_OPTIONS:
        assert option in result.stdout
        name = option.removeprefix("--").replace("-", "_").upper()
        assert f"TUSD_{name}" in result.stdout


def test_serve_refuses_an_unmigrated_postgres_schema(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    url = postgres_databases.create()
    result = run_cli("serve", "--data-dir", str(tmp_path), "--database-url", url, "--port", "1")
    assert result.returncode != 0
    assert "tusd-py migrate" in result.stderr


def test_migrate_then_serve_on_postgres(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    url = postgres_databases.create()
    assert run_cli("migrate", "--database-url", url).returncode == 0
    # a second migrate is a no-op, not an error
    assert run_cli("migrate", "--database-url", url).returncode == 0
    server = ServerProcess(tmp_path / "data", url)
    server.data_dir.mkdir()
    server.start()
    try:
        response = httpx.post(server.files_url, headers={**TUS, "Upload-Length": "3"})
        assert response.status_code == 201
    finally:
        server.stop()


def test_serve_migrates_the_embedded_sqlite_by_itself(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.data_dir.mkdir()
    server.start()
    try:
        assert (tmp_path / "data" / "tusd.db").exists()
        response = httpx.post(server.files_url, headers={**TUS, "Upload-Length": "3"})
        assert response.status_code == 201
    finally:
        server.stop()


def test_environment_variables_configure_serve(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        env={"TUSD_MAX_SIZE": "1234", "TUSD_BASE_PATH": "/uploads/"},
    )
    server.data_dir.mkdir()
    server.start()
    try:
        options = httpx.options(f"{server.base_url}/uploads/")
        assert options.headers["Tus-Max-Size"] == "1234"
        created = httpx.post(f"{server.base_url}/uploads/", headers={**TUS, "Upload-Length": "10"})
        assert created.headers["Location"].startswith(f"{server.base_url}/uploads/")
    finally:
        server.stop()


def test_command_line_wins_over_environment(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", extra_args=["--max-size", "99"], env={"TUSD_MAX_SIZE": "1234"}
    )
    server.data_dir.mkdir()
    server.start()
    try:
        assert httpx.options(server.files_url).headers["Tus-Max-Size"] == "99"
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_invalid_option_values_are_refused(value: str, tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--max-size", value)
    assert result.returncode == 2
    assert "--max-size" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--s3-part-size", "1048576"], {}, "at least 5 MiB"),
        ([], {"TUSD_S3_PART_SIZE": "1048576"}, "TUSD_S3_PART_SIZE"),
        ([], {"TUSD_S3_MAX_CONCURRENT_PARTS": "0"}, "TUSD_S3_MAX_CONCURRENT_PARTS"),
        (["--storage", "ftp://somewhere"], {}, "s3://BUCKET/PREFIX"),
    ],
)
def test_bad_storage_settings_are_refused_with_a_sentence(
    args: list[str], env: dict[str, str], says: str, tmp_path: Path
) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
