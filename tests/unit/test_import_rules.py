"""The import rules of DESIGN.md, checked by walking every module's imports.

tusd_protocol <- tusd_storage <- tusd_py. Inside tusd_py, `core` knows only the protocol,
the storage interface and its own ports (no web framework, database or Redis driver);
`state`, `events`, `metrics` and `admission` implement ports and never reach up into `http`
or `cli`; `client` imports only tusd_protocol and httpx. Imports inside functions count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "tusd_protocol": ROOT / "protocol" / "tusd_protocol",
    "tusd_storage": ROOT / "storage" / "tusd_storage",
    "tusd_py": ROOT / "tusd_py",
}
#: third-party packages a layer may never import, whatever else it may
DRIVERS = ("starlette", "sqlalchemy", "redis", "minio", "uvicorn", "alembic", "psycopg", "httpx")


@dataclass(frozen=True)
class Rule:
    """Modules under `scope` may import only stdlib modules and names under `allowed`."""

    scope: str
    allowed: tuple[str, ...]
    why: str


RULES = [
    Rule("tusd_protocol", ("tusd_protocol", "xxhash"), "the protocol is sans-IO"),
    Rule(
        "tusd_storage",
        ("tusd_storage", "tusd_protocol", "minio", "urllib3", "certifi"),
        "storage sits below the server",
    ),
    Rule(
        "tusd_py.core",
        ("tusd_py.core", "tusd_protocol", "tusd_storage"),
        "the core knows ports, not backends",
    ),
    Rule(
        "tusd_py.client",
        ("tusd_py.client", "tusd_protocol", "httpx"),
        "the client can become its own distribution",
    ),
    Rule(
        "tusd_py.loadgen",
        ("tusd_py.loadgen",),
        "the load generator runs where the server's backends are not installed",
    ),
]
#: homes that implement ports: they may use drivers, but never the layers on top
IMPLEMENTATIONS = ("tusd_py.state", "tusd_py.events", "tusd_py.metrics", "tusd_py.admission")
ON_TOP = ("tusd_py.http", "tusd_py.cli", "tusd_py.wiring")


def module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of everything `module` imports (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                base = node.module
            else:
                anchor = module.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            # `from package import module` imports the module
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


def violations(module: str, imported: set[str]) -> list[str]:
    found = []
    for rule in RULES:
        if not under(module, rule.scope):
            continue
        for name in sorted(imported):
            if is_stdlib(name) or any(under(name, a) for a in rule.allowed):
                continue
            found.append(f"{module} imports {name} ({rule.why})")
    if any(under(module, home) for home in IMPLEMENTATIONS):
        for name in sorted(imported):
            if any(under(name, top) for top in ON_TOP):
                found.append(f"{module} imports {name} (implementations never reach up)")
    if under(module, "tusd_storage"):
        for name in sorted(imported):
            if under(name, "tusd_py"):
                found.append(f"{module} imports {name} (storage sits below the server)")
    return found


def all_modules() -> dict[str, tuple[Path, bool]]:
    modules: dict[str, tuple[Path, bool]] = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            modules[module_name(package, root, path)] = (path, path.name == "__init__.py")
    return modules


def test_every_module_follows_the_import_rules() -> None:
    modules = all_modules()
    assert "tusd_py.core.service" in modules and "tusd_protocol.rules" in modules
    problems: list[str] = []
    for module, (path, is_package) in sorted(modules.items()):
        imported = imports_of(path.read_text(), module, is_package)
        problems += violations(module, imported)
    assert problems == [], "\n".join(problems)


def test_the_service_depends_on_ports_not_on_the_sql_repository() -> None:
    path, _ = all_modules()["tusd_py.core.service"]
    imported = imports_of(path.read_text(), "tusd_py.core.service", False)
    assert "tusd_py.core.ports" in imported
    assert not any(under(name, "tusd_py.state") for name in imported)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("tusd_py.core.service", "from starlette.types import Receive", "starlette"),
        ("tusd_py.core.service", "from ..state.sql import Repository", "tusd_py.state.sql"),
        ("tusd_py.core.service", "def f():\n    import redis\n", "redis"),
        ("tusd_protocol.rules", "import tusd_storage", "tusd_storage"),
        ("tusd_storage.file", "from tusd_py.config import Settings", "tusd_py.config"),
        ("tusd_py.state.sql", "from ..http.app import build_app", "tusd_py.http.app"),
        ("tusd_py.client", "import sqlalchemy", "sqlalchemy"),
        ("tusd_py.loadgen.http", "import httpx", "httpx"),
        ("tusd_py.loadgen.workload", "from ..config import Settings", "tusd_py.config"),
    ],
)
def test_the_checker_finds_each_kind_of_violation(module: str, source: str, expected: str) -> None:
    imported = imports_of(source, module, module == "tusd_py.client")
    problems = violations(module, imported)
    assert any(f" imports {expected}" in problem for problem in problems), problems


def test_the_checker_accepts_what_the_rules_allow() -> None:
    source = (
        "from __future__ import annotations\nimport asyncio\n"
        "from tusd_protocol import rules\nfrom tusd_storage import Store\nfrom .ports import X\n"
    )
    imported = imports_of(source, "tusd_py.core.service", False)
    assert violations("tusd_py.core.service", imported) == []
