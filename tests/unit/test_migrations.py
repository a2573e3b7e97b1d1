"""The migration chain: one head, known to the server, and it builds the tables we use."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tusd_py.state import migrations
from tusd_py.state.sql import metadata_obj


def test_schema_head_constant_matches_the_alembic_scripts() -> None:
    assert migrations.head_revisions() == {migrations.SCHEMA_HEAD}


def test_upgrade_creates_every_table_and_column_the_code_uses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    assert not migrations.is_current(url)
    assert migrations.upgrade_if_needed(url) is True
    assert migrations.is_current(url)
    assert migrations.upgrade_if_needed(url) is False
    inspector = sa.inspect(sa.create_engine(url))
    for table in metadata_obj.tables.values():
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
