"""The ``trio-jobs`` command: run workers, submit and inspect jobs, see the demo.

Every command works on one store, chosen the same way:

- ``--db PATH``: an SQLite file (the default: ``./trio_jobs.db``, or ``$TRIO_JOBS_DB``);
- ``--dsn DSN``: a PostgreSQL database (or ``$TRIO_JOBS_DSN``), its tables in the
  schema ``--schema`` (default ``trio_jobs``, or ``$TRIO_JOBS_SCHEMA``).

Options on the command line beat the environment; giving both ``--db`` and
``--dsn`` is a usage error. Only ``worker`` and ``migrate`` create a store;
reading commands open it read-only. Output is an aligned table for people, or JSON
with ``--json``. A mistake (bad JSON, unknown id, unopenable database, ...) prints
one line, ``trio-jobs: error: ...``, and exits with status 2 for a usage error, 3
for a store that is missing, corrupt or not a trio_jobs store, or 1 for anything
else.
"""

from ._errors import CliError as CliError
from ._errors import StoreUnusableError as StoreUnusableError
from ._errors import UsageError as UsageError
from ._main import build_parser as build_parser
from ._main import main as main
from ._store import StoreSpec as StoreSpec
from ._store import open_storage as open_storage

__all__ = [
    "CliError",
    "StoreSpec",
    "StoreUnusableError",
    "UsageError",
    "build_parser",
    "main",
    "open_storage",
]
