"""Shared fixtures: real tusd-py server processes on free ports.

Backends: the state database and the byte store a server runs on.
- "sqlite", "postgres": that database, bytes in a directory (the file store).
- "s3-rgw": PostgreSQL, bytes in Ceph's RADOS Gateway (a production S3 server).
- "s3-moto": SQLite, bytes in moto's S3 server (quick; checks no checksums).
- "s3-external": PostgreSQL, bytes in the S3 server named by TUSD_TEST_S3_ENDPOINT.
The suite starts the S3 servers itself. Modules opt in to the S3 backends with
`pytestmark = pytest.mark.s3_too` (then they run on s3-rgw and s3-external; moto runs only the
`s3_only` tests of the S3 store itself); tests that look at the file store's files say
`@pytest.mark.file_store`; tests of what does not depend on the backend (the client's
behaviour) say `@pytest.mark.any_backend` and run on SQLite only.

With TUSD_TEST_REQUIRE_SERVICES=1 (as in CI) a missing PostgreSQL, Redis, RGW or node fails
the test instead of skipping it, so a green run means every backend was exercised.
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
from typing import Any

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
        #: (S3 endpoint, key prefix) when the server stores bytes in S3
        self.s3: tuple[Any, str] | None = None

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


FILE_BACKENDS = ["sqlite", "postgres"]
S3_BACKENDS = ["s3-rgw", "s3-moto"] + (
    ["s3-external"] if os.environ.get("TUSD_TEST_S3_ENDPOINT") else []
)
BACKENDS = FILE_BACKENDS + S3_BACKENDS
#: the state database each backend runs on
STATE_DATABASE = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "s3-rgw": "postgres",
    "s3-moto": "sqlite",
    "s3-external": "postgres",
}
TEST_BUCKET = "tusd-test"
#: the smallest part S3 allows, so that tests cross part boundaries with few bytes
TEST_PART_SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """S3 backends run only where a module opted in, and never for file-store tests."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        chosen = callspec.params.get("backend") if callspec is not None else None
        on_s3 = isinstance(chosen, str) and chosen.startswith("s3")
        if on_s3:
            # the foundation's suite runs on the real gateway (and an operator's endpoint);
            # moto, which checks no checksums, runs the S3 store's own tests
            wanted = (
                item.get_closest_marker("s3_only") is not None
                or (item.get_closest_marker("s3_too") is not None and chosen != "s3-moto")
            ) and item.get_closest_marker("file_store") is None
        else:
            wanted = item.get_closest_marker("s3_only") is None
        if item.get_closest_marker("any_backend") is not None:
            wanted = chosen in (None, "sqlite")  # one run says it all (a client's behaviour)
        (keep if wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


class S3Fleet:
    """The S3 servers of this test session, started when first asked for."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: dict[str, Any] = {}
        self.endpoints: dict[str, Any] = {}

    def endpoint(self, backend: str) -> Any:
        from tests import s3_servers

        if backend in self.endpoints:
            return self.endpoints[backend]
        if backend == "s3-external":
            endpoint = s3_servers.external_endpoint()
        elif backend == "s3-rgw":
            reason = s3_servers.tools_available_rgw()
            if reason:
                missing_service(reason)
            server = s3_servers.start_rgw(self.workdir / "rgw", free_port())
            self.servers[backend] = server
            endpoint = server.endpoint
        else:
            server = s3_servers.start_moto(self.workdir / "moto", free_port())
            self.servers[backend] = server
            endpoint = server.endpoint
        client = endpoint.client()
        if not client.bucket_exists(TEST_BUCKET):
            client.make_bucket(TEST_BUCKET)
        self.endpoints[backend] = endpoint
        return endpoint

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def s3_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Fleet]:
    fleet = S3Fleet(tmp_path_factory.mktemp("s3"))
    yield fleet
    fleet.stop()


def s3_arguments(endpoint: Any, prefix: str) -> tuple[list[str], dict[str, str]]:
    """Command-line options and environment for a server storing under `prefix`."""
    args = [
        "--storage",
        f"s3://{TEST_BUCKET}/{prefix}",
        "--s3-endpoint",
        endpoint.url,
        "--s3-region",
        endpoint.region,
        "--s3-part-size",
        str(TEST_PART_SIZE),
    ]
    env = {"TUSD_S3_ACCESS_KEY": endpoint.access_key, "TUSD_S3_SECRET_KEY": endpoint.secret_key}
    return args, env


def start_workers(
    data_dir: Path, database_url: str | None = None, extra_args: list[str] | None = None
) -> ServerProcess:
    """`serve --workers 2` on a fresh data directory, started."""
    server = ServerProcess(data_dir, database_url, ["--workers", "2", *(extra_args or [])])
    server.data_dir.mkdir(parents=True)
    return server.start()


def worker_processes(server: ServerProcess) -> list[Any]:
    """The worker processes of a `serve --workers N` (psutil.Process each)."""
    import psutil

    return [
        child
        for child in psutil.Process(server.pid()).children(recursive=True)
        if "spawn_main" in " ".join(child.cmdline())
    ]


def _start_server(
    request: pytest.FixtureRequest,
    backend: str,
    data_dir: Path,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> ServerProcess:
    if database_url is None and STATE_DATABASE[backend] == "postgres":
        database_url = request.getfixturevalue("postgres_databases").create()
    data_dir.mkdir(parents=True, exist_ok=True)
    s3: tuple[Any, str] | None = None
    if backend.startswith("s3") and "--storage" not in (extra_args or []):
        endpoint = request.getfixturevalue("s3_fleet").endpoint(backend)
        prefix = f"{uuid.uuid4().hex[:12]}/"
        s3_args, s3_env = s3_arguments(endpoint, prefix)
        extra_args = s3_args + list(extra_args or [])
        env = {**s3_env, **(env or {})}
        s3 = (endpoint, prefix)
    server = ServerProcess(data_dir, database_url, extra_args, env)
    server.s3 = s3
    return server.start()


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
    shared_server.uploads_baseline = stored_upload_ids(shared_server)
    return shared_server


def stored_upload_ids(server: ServerProcess) -> set[str]:
    """Ids of the uploads that have anything in the server's store (file, object, fragment
    or open multipart upload)."""
    if server.s3 is None:
        uploads = server.data_dir / "uploads"
        return {p.name for p in uploads.iterdir()} if uploads.exists() else set()
    from tests import s3_servers

    endpoint, prefix = server.s3
    found: set[str] = set()
    for key in s3_servers.list_all(endpoint, TEST_BUCKET, prefix):
        rest = key[len(prefix) :]
        if rest.startswith(".fragments/"):
            rest = rest[len(".fragments/") :]
            if "/" not in rest:
                continue  # the store's own probe object
        found.add(rest.split("/", 1)[0])
    for key, _ in s3_servers.list_multipart_uploads(endpoint, TEST_BUCKET, prefix):
        found.add(key[len(prefix) :])
    return found


TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        yield http


def node_available() -> bool:
    return shutil.which("node") is not None
