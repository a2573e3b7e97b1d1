"""Schema migrations: Alembic, driven from code so that no ini file is needed.

Alembic is imported only when a migration has to run: a server starting on an up-to-date
schema compares one row with SCHEMA_HEAD and is on its way (start-up time matters to
restarts and to the test suite, which starts hundreds of servers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..config import normalize_database_url

if TYPE_CHECKING:
    from alembic.config import Config

#: the newest revision in alembic/versions; tests/unit/test_migrations.py keeps it honest
SCHEMA_HEAD = "0003"


def script_location() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("the Alembic migration scripts are missing from this installation")


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(_config()).get_heads())


def current_revisions(database_url: str) -> set[str]:
    engine = sa.create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return set()
            rows = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def is_current(database_url: str) -> bool:
    return current_revisions(database_url) == {SCHEMA_HEAD}


def upgrade(database_url: str) -> None:
    from alembic import command

    config = _config()
    engine = sa.create_engine(normalize_database_url(database_url))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def upgrade_if_needed(database_url: str) -> bool:
    """Migrate unless already current; True when a migration ran."""
    if is_current(database_url):
        return False
    upgrade(database_url)
    return True
