"""Fixtures for the real-client interop suite: shared random source files and the node client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

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
