"""Database setup, migrations and integrity checks."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, inspect, text

from storage.db import Database, DatabaseIntegrityError, alembic_config, open_database
from storage.repository import ensure_defect_class, get_defect_class
from storage.tables import Base, UTCDateTime

INITIAL_REVISION = "0001_initial"


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_migrate_creates_every_table_and_is_idempotent(empty_db: Database) -> None:
    assert empty_db.current_revision() is None
    empty_db.migrate()
    empty_db.migrate()
    assert empty_db.current_revision() == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(empty_db.engine).get_table_names())


def test_migrations_match_the_orm_tables(db: Database) -> None:
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrade_from_initial_revision_keeps_rows(empty_db: Database) -> None:
    empty_db.migrate(INITIAL_REVISION)
    assert empty_db.current_revision() == INITIAL_REVISION
    with empty_db.engine.begin() as connection:
        insert = text("INSERT INTO defect_classes (name, token, init_word, created_at) VALUES (:n, :t, :w, :at)")
        connection.execute(
            insert.bindparams(bindparam("at", type_=UTCDateTime())),
            {"n": "crazing", "t": "<crazing>", "w": "cracks", "at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)},
        )
    empty_db.migrate()
    assert empty_db.current_revision() == head_revision()
    with empty_db.session() as s:
        crazing = get_defect_class(s, "crazing")
    assert crazing is not None
    assert (crazing.token, crazing.init_word) == ("<crazing>", "cracks")
    assert crazing.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_timestamps_load_timezone_aware_utc_and_naive_ones_are_refused(db: Database) -> None:
    with db.transaction() as s:
        crazing = ensure_defect_class(s, "crazing", "<crazing>", "cracks")
    with db.session() as s:
        loaded = get_defect_class(s, "crazing")
    assert loaded.created_at.tzinfo is UTC
    assert loaded.created_at == crazing.created_at
    with pytest.raises(Exception, match="Naive datetime"), db.transaction() as s:
        get_defect_class(s, "crazing").created_at = datetime(2025, 1, 1)
        s.flush()


def test_sqlite_connections_use_foreign_keys_wal_and_busy_timeout(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite pragmas")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_open_database_creates_a_migrated_sqlite_file(tmp_path: Path) -> None:
    database = open_database(tmp_path / "data")
    try:
        assert (tmp_path / "data" / "studio.db").is_file()
        assert database.current_revision() == head_revision()
        with database.transaction() as s:
            ensure_defect_class(s, "scratches", "<scratches>", "scratch")
    finally:
        database.dispose()
    reopened = open_database(tmp_path / "data")
    with reopened.session() as s:
        assert get_defect_class(s, "scratches") is not None
    reopened.dispose()


def test_integrity_check_reports_foreign_key_violations(tmp_path: Path) -> None:
    database = open_database(tmp_path)
    database.dispose()
    with sqlite3.connect(tmp_path / "studio.db") as raw:
        raw.execute(
            "INSERT INTO decisions (sample_id, status, user, at, outcome) "
            "VALUES (999, 'accepted', 'mallory', '2025-01-01 00:00:00', 'applied')"
        )
    raw.close()
    with pytest.raises(DatabaseIntegrityError, match="foreign-key"):
        open_database(tmp_path)


def test_integrity_check_passes_on_a_healthy_database(db: Database) -> None:
    db.integrity_check()
