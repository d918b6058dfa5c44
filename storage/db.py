"""Database connection, sessions, migrations and integrity checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DATABASE_FILE_NAME = "studio.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseIntegrityError(ValueError):
    """The database cannot be opened, is damaged or holds rows that break foreign keys (the CLI prints one line)."""


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def alembic_config() -> Config:
    """An Alembic configuration pointing at storage/migrations, needing no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


class Database:
    """One engine and one session factory for a database URL (SQLite file or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if self.is_sqlite:
            event.listen(self.engine, "connect", _configure_sqlite_connection)
        self.session_factory: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether this database is SQLite."""
        return self.engine.dialect.name == "sqlite"

    def session(self) -> Session:
        """A new session; the caller closes it (use as a context manager)."""
        return self.session_factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in a transaction that commits on success and rolls back on any exception."""
        with self.session_factory.begin() as session:
            yield session

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to `revision` (default: the latest); does nothing if it is already there."""
        config = alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def current_revision(self) -> str | None:
        """The Alembic revision the schema is at, or None for an empty database."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def integrity_check(self) -> None:
        """Raise DatabaseIntegrityError if SQLite reports corruption or foreign-key violations; ping otherwise."""
        with self.engine.connect() as connection:
            if not self.is_sqlite:
                connection.execute(text("SELECT 1"))
                return
            problems = [row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise DatabaseIntegrityError(f"SQLite integrity check failed for {self.url}: {'; '.join(problems)}")
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if violations:
                listed = "; ".join(f"{table} rowid {rowid} -> {parent}" for table, rowid, parent, _ in violations[:10])
                raise DatabaseIntegrityError(f"{len(violations)} foreign-key violation(s) in {self.url}: {listed}")

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()


def open_database(data_dir: Path, url: str | None = None) -> Database:
    """Open (creating if needed) the studio database, bring its schema up to date and check its integrity.

    Without `url`, the database is the SQLite file `<data_dir>/studio.db`.
    """
    data_dir = Path(data_dir)
    if url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(data_dir / DATABASE_FILE_NAME).resolve()}"
    database = Database(url)
    try:
        database.migrate()
        database.integrity_check()
    except exc.DBAPIError as error:
        database.dispose()
        shown = database.engine.url.render_as_string(hide_password=True)
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
        raise DatabaseIntegrityError(
            f"Cannot open the studio database {shown}: {reason}. Restore it from a backup or move it aside "
            "to start a new one."
        ) from error
    return database
