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
    "--behind-proxy",
    "--cors-origins",
    "--cors-allow-credentials",
    "--max-size",
    "--expiration",
    "--data-dir",
    "--storage",
    "--fsync",
    "--s3-endpoint",
    "--s3-region",
    "--s3-access-key",
    "--s3-secret-key",
    "--s3-secure",
    "--s3-create-bucket",
    "--s3-part-size",
    "--s3-max-concurrent-parts",
    "--database-url",
    "--db-pool-size",
    "--db-max-overflow",
    "--db-pool-timeout",
    "--redis-url",
    "--redis-pool-size",
    "--cache-ttl",
    "--cache-entries",
    "--workers",
    "--lock-acquire-timeout",
    "--lock-handover-timeout",
    "--log-level",
]
GC_ONLY_OPTIONS = ["--orphan-age", "--max-idle"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tusd_py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def help_text(command: str) -> str:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # argparse wraps lines


def test_serve_help_explains_every_option() -> None:
    text = help_text("serve")
    for option in SERVE_OPTIONS:
        assert option in text
        name = option.removeprefix("--").replace("-", "_").upper()
        assert f"[env TUSD_{name};" in text
    for option in GC_ONLY_OPTIONS:
        assert option not in text


def test_gc_help_explains_its_own_options() -> None:
    text = help_text("gc")
    assert "[env TUSD_ORPHAN_AGE; default: 3600]" in text
    assert "--max-idle SECONDS, --expiration SECONDS" in text
    assert "[env TUSD_MAX_IDLE;" in text


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


def test_gc_on_the_file_store_reports_reclaimed_uploads_and_orphans(tmp_path: Path) -> None:
    result = run_cli("gc", "--data-dir", str(tmp_path), "--expiration", "60")
    assert result.returncode == 0, result.stderr
    assert "tusd-py: reclaimed 0 expired upload(s)." in result.stdout
    assert "tusd-py: removed 0 orphaned object(s) from the store." in result.stdout


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TUSD_MAX_SIZE": "-5"}, "tusd-py: TUSD_MAX_SIZE='-5': must not be negative"),
        ({"TUSD_PORT": "abc"}, "tusd-py: TUSD_PORT='abc': must be a whole number"),
        ({"TUSD_FSYNC": "sometimes"}, "tusd-py: TUSD_FSYNC='sometimes': must be one of always"),
    ],
)
def test_bad_environment_values_stop_serve_before_it_starts(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 2
    assert says in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_takes_fsync_and_cache_entries(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        extra_args=["--fsync", "never"],
        env={"TUSD_CACHE_ENTRIES": "1", "TUSD_MAX_SIZE": "5"},
    )
    server.data_dir.mkdir()
    server.start()
    try:
        assert httpx.options(server.files_url).headers["Tus-Max-Size"] == "5"
        for _ in range(2):  # the second upload pushes the first out of the cache
            created = httpx.post(server.files_url, headers={**TUS, "Upload-Length": "3"})
            assert created.status_code == 201
        assert httpx.head(created.headers["Location"], headers=TUS).status_code == 200
    finally:
        server.stop()


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """A soft limit of 256 open files would refuse connections at a few hundred uploads:
    serve raises it to the hard limit (4096 here) before it listens."""
    import shutil

    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is needed"

    class LimitedServer(ServerProcess):
        def command(self) -> list[str]:
            return [prlimit, "--nofile=256:4096", "--", *super().command()]

    server = LimitedServer(tmp_path / "data")
    server.data_dir.mkdir()
    server.start()
    try:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"], line
        response = httpx.post(server.files_url, headers={**TUS, "Upload-Length": "3"})
        assert response.status_code == 201
    finally:
        server.stop()
