"""Alembic environment: one migration chain for PostgreSQL and SQLite.

tusd_py.state.migrations hands us a synchronous connection in config.attributes["connection"]
(or we open one from sqlalchemy.url, for the plain `alembic` command).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from tusd_py.state.sql import metadata_obj

config = context.config


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata_obj,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
