"""The PostgreSQL store: many worker processes, on many machines, sharing one queue.

Importing it does not need psycopg; opening a store does (``trio-jobs[postgres]``).
"""

from ._store import PostgresStorage as PostgresStorage

__all__ = ["PostgresStorage"]
