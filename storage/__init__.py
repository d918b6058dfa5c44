"""Persistence for Steel Defect Studio: the SQL database (SQLAlchemy + Alembic), content-addressed files, exports.

Imports no ML or UI libraries, so the engine and the web app can both depend on it.
"""

from storage.db import Database, open_database
from storage.files import FileStore

__all__ = ["Database", "FileStore", "open_database"]
