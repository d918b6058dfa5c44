"""Fixtures for storage tests: a real database (SQLite in tmp_path, or STUDIO_TEST_DATABASE_URL) and a file store."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from storage.db import Database
from storage.files import FileStore, sha256_hex
from storage.tables import Base

TEST_DATABASE_URL_VARIABLE = "STUDIO_TEST_DATABASE_URL"


def _drop_everything(database: Database) -> None:
    with database.engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The test database URL: STUDIO_TEST_DATABASE_URL (emptied before each test) or a fresh SQLite file."""
    return os.environ.get(TEST_DATABASE_URL_VARIABLE) or f"sqlite:///{tmp_path / 'studio.db'}"


@pytest.fixture
def empty_db(database_url: str) -> Iterator[Database]:
    """A database without any table."""
    database = Database(database_url)
    if not database.is_sqlite:
        _drop_everything(database)
    yield database
    if not database.is_sqlite:
        _drop_everything(database)
    database.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A database migrated to the latest schema."""
    empty_db.migrate()
    return empty_db


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files")


def _sample_fields(source_image_id: int, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sha256": sha256_hex(f"sample-{source_image_id}-{overrides.get('seed', 7)}".encode()),
        "class_name": "crazing",
        "source_image_id": source_image_id,
        "model_hash": "m" * 16,
        "model_ref": "stabilityai/sd-turbo",
        "token": "<crazing>",
        "adapter_path": None,
        "adapter_version": None,
        "strength": 0.6,
        "steps": 4,
        "guidance": 0.0,
        "seed": 7,
        "prompt": "a photo of <crazing> on a steel surface",
        "negative_prompt": "",
        "width": 200,
        "height": 200,
        "window_json": {"x": 10, "y": 20, "w": 200, "h": 200},
        "boxes_json": [{"label": "crazing", "xmin": 5, "ymin": 5, "xmax": 50, "ymax": 60}],
        "params_json": {"scheduler": "euler", "strength": 0.6},
        "created_by": "alice",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def sample_fields() -> Callable[..., dict[str, Any]]:
    """Builds a complete set of add_sample() fields: sample_fields(source_image_id, **overrides)."""
    return _sample_fields
