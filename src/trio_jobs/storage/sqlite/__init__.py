"""The SQLite store: one file, shared by the processes of one machine."""

from ._store import SQLiteStorage as SQLiteStorage

__all__ = ["SQLiteStorage"]
