"""tusd-py migrate: create or upgrade the state database schema."""

from __future__ import annotations

from ..config import Settings

HELP = "create or upgrade the state database schema"
DESCRIPTION = "Create or upgrade the state database schema to this version."


def run(settings: Settings) -> int:
    from ..state import migrations

    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    print("tusd-py: the database schema is up to date.")
    return 0
