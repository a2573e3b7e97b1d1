"""Fixtures for the real-client interop suite: shared random source files, the node client and
one long-lived server per backend for the tests that do not crash their server.

Starting a server costs seconds (imports, migrations), so tests that only upload and read back
share one server per backend for the whole session (`shared_server`, parametrized over sqlite and
postgres like tests/conftest.py's `backend`); tests that kill their server use
`server_factory`. Every test works on its own uploads, so sharing cannot mix their results.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, ServerProcess
from tests.interop._support import MiB, require_js_client, write_random_file


@dataclass(frozen=True)
class SourceFile:
    path: Path
    size: int
    sha256: str


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> SourceFile:
    """64 MiB of random bytes, shared by every test of the session (read-only)."""
    path = tmp_path_factory.mktemp("interop-src") / "random-64MiB.bin"
    return SourceFile(path, 64 * MiB, write_random_file(path, 64 * MiB))


@pytest.fixture(scope="session")
def medium_file(tmp_path_factory: pytest.TempPathFactory) -> SourceFile:
    """A ~24 MiB random file whose size is not a multiple of any chunk size we use."""
    size = 24 * MiB + 12345
    path = tmp_path_factory.mktemp("interop-src") / "random-24MiB.bin"
    return SourceFile(path, size, write_random_file(path, size))


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tus-js-client installed in tests/interop/js."""
    return require_js_client()


@pytest.fixture(scope="session", params=BACKENDS)
def _session_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_databases").create()
    data_dir = tmp_path_factory.mktemp(f"interop-{request.param}") / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, database_url).start(timeout=60)
    yield server
    server.stop()


@pytest.fixture
def shared_server(_session_server: ServerProcess) -> ServerProcess:
    """The session's server for this backend; fails clearly if it died in an earlier test."""
    process = _session_server.process
    assert process is not None and process.poll() is None, (
        f"the shared server exited ({process and process.returncode}):\n"
        + _session_server.log_path.read_text()[-4000:]
    )
    return _session_server
