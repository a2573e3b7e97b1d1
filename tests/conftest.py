"""Shared fixtures: real tusd-py server processes on free ports, on SQLite and PostgreSQL.

With TUSD_TEST_REQUIRE_SERVICES=1 (as in CI) a missing PostgreSQL, Redis or node fails the
test instead of skipping it, so a green run means every backend was exercised.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def services_required() -> bool:
    return os.environ.get("TUSD_TEST_REQUIRE_SERVICES", "") not in ("", "0", "false")


def missing_service(reason: str) -> None:
    """Skip, or fail when the run demands every service (CI)."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL -----------------------------------------------------------------------


def _admin_url() -> str:
    return os.environ.get("TUSD_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


def _psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(_psycopg_dsn(_admin_url()), connect_timeout=3):
            return True
    except Exception:
        return False


class PostgresDatabases:
    """Creates a fresh database per server so tests never see each other's uploads."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        import psycopg

        name = f"tusd_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_psycopg_dsn(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(_psycopg_dsn(self.admin_url), autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    if not postgres_available():
        missing_service(f"PostgreSQL not reachable at {_admin_url()}")
    databases = PostgresDatabases(_admin_url())
    yield databases
    databases.drop_all()


# --- server processes -----------------------------------------------------------------


class ServerProcess:
    """One `tusd-py serve` process; can be killed and started again on the same state."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_args = list(extra_args or [])
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        #: upload ids present before the current test began (shared servers)
        self.uploads_baseline: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def files_url(self) -> str:
        return f"{self.base_url}/files/"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tusd_py",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "warning",
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        return cmd + self.extra_args

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Migrate a PostgreSQL database (operators do this once), then launch()."""
        if self.database_url and self.database_url.startswith("postgresql"):
            subprocess.run(
                [sys.executable, "-m", "tusd_py", "migrate", "--database-url", self.database_url],
                check=True,
                capture_output=True,
                timeout=60,
            )
        return self.launch(timeout)

    def launch(self, timeout: float = 60.0) -> ServerProcess:
        """Start the process on the current state and wait until /health answers."""
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the crash case; nothing gets to clean up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _start_server(
    request: pytest.FixtureRequest,
    backend: str,
    data_dir: Path,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> ServerProcess:
    if database_url is None and backend == "postgres":
        database_url = request.getfixturevalue("postgres_databases").create()
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(data_dir, database_url, extra_args, env).start()


@pytest.fixture(scope="session")
def shared_server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One default-configured server per backend for the whole session.

    A server start costs seconds (imports, migrations); tests that need no special options
    share this one. Every test works on uploads it creates itself, and tests run one at a
    time, so before/after comparisons of the data directory stay exact.
    """
    server = _start_server(request, backend, tmp_path_factory.mktemp(f"shared-{backend}") / "d")
    yield server
    server.stop()


@pytest.fixture
def server_factory(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[object]:
    """start(extra_args=[...], env={...}) -> a fresh ServerProcess on the test's backend."""
    started: list[ServerProcess] = []

    def start(
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        database_url: str | None = None,
    ) -> ServerProcess:
        directory = data_dir or tmp_path / f"data-{len(started)}"
        server = _start_server(request, backend, directory, extra_args, env, database_url)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    if shared_server.process is None or shared_server.process.poll() is not None:
        shared_server.start()  # a test killed it: bring it back on the same state
    # uploads earlier tests left behind are not this test's: helpers subtract them
    uploads = shared_server.data_dir / "uploads"
    shared_server.uploads_baseline = (
        {p.name for p in uploads.iterdir()} if uploads.exists() else set()
    )
    return shared_server


TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        yield http


def node_available() -> bool:
    return shutil.which("node") is not None
