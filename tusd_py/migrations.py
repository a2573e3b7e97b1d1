"""Schema migrations: Alembic, driven from code so that no ini file is needed."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic import command

from .settings import sync_database_url


def script_location() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("the Alembic migration scripts are missing from this installation")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def upgrade(database_url: str) -> None:
    config = _config()
    engine = sa.create_engine(sync_database_url(database_url))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def pending(database_url: str) -> tuple[set[str], set[str]]:
    """(current revisions, head revisions): equal when the schema is up to date."""
    heads = set(ScriptDirectory.from_config(_config()).get_heads())
    engine = sa.create_engine(sync_database_url(database_url))
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return current, heads


def is_current(database_url: str) -> bool:
    current, heads = pending(database_url)
    return current == heads
