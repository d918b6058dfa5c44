"""Alembic environment for the studio database.

`Database.migrate()` passes its own connection in `config.attributes["connection"]`. From the command line
(`alembic -c storage/alembic.ini revision --autogenerate -m "..."`) the URL comes from STUDIO_DATABASE_URL,
or else from `sqlalchemy.url` in storage/alembic.ini.
"""

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from storage.tables import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    """Run the migrations on the given connection, or on a new one to the configured URL."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("STUDIO_DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.begin() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run them against a database.")
run_migrations()
