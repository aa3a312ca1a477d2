"""Opening a :class:`SQLiteStorage` file, and what its driver errors mean.

Runs in worker threads: :func:`connect` opens the one connection a store uses
(WAL mode, busy timeout, migrations); :func:`translate_error` turns a driver error
into one that says what is wrong with which file.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from typing import Final

from ..._exceptions import StorageCorruptError, StorageUnavailableError
from ._schema import BATCH_ROW, check_schema, migrate

#: How long a writer waits for another connection's write lock before giving up.
BUSY_TIMEOUT: Final = 5.0
#: The connection's page cache, in KiB (SQLite's default is 2 MiB). A claim reads
#: the pages of the ready index, the claimed rows and the status index; in a big
#: table these outgrow 2 MiB, and a cache that churns on every claim made claims
#: four times slower in ``bench/sqlite_claims.py``. Pages are cached as read.
CACHE_KIB: Final = 16 * 1024

# Primary SQLite result codes (``exc.sqlite_errorcode & 0xFF``).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26


class StorageLockedError(StorageUnavailableError, TimeoutError):
    """Another connection kept the database locked past the busy timeout."""


class StoragePermissionError(StorageUnavailableError, PermissionError):
    """The database file (or its directory) may not be written."""


def connect(path: str, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the connection and bring the schema up to date (in a worker thread).

    ``read_only`` opens the file with SQLite's ``mode=ro``: nothing is created,
    switched or migrated, and a file without trio_jobs tables is refused.
    """
    if read_only:
        return _connect_read_only(path)
    if path not in (":memory:", ""):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"cannot open SQLite database {path}: directory {directory} does not exist"
            )
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # one thread at a time, under the store's lock
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
        migrate(conn, path)
        conn.execute(BATCH_ROW)  # the one-row table of batch inserts
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_read_only(path: str) -> sqlite3.Connection:
    if os.path.isdir(path):
        raise StorageUnavailableError(f"cannot use SQLite database {path}: it is a directory")
    if not os.path.isfile(path):
        raise StorageCorruptError(f"no SQLite database at {path}: nothing was created there yet")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=False)  # fmt: skip
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
        check_schema(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def translate_error(path: str, exc: sqlite3.Error) -> Exception:
    """Turn a driver error into one that says what is wrong with which file."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    where = f"SQLite database {path}"
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageLockedError(
            f"{where} is locked: another connection kept it locked for more than"
            f" the {BUSY_TIMEOUT:g} s busy timeout ({exc})"
        )
    if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        what = "is corrupt" if code == _SQLITE_CORRUPT else "is not a trio_jobs SQLite database"
        return StorageCorruptError(f"{where} {what}: {exc}")
    if code in (_SQLITE_PERM, _SQLITE_READONLY):
        return StoragePermissionError(f"cannot write {where}: {exc}")
    if code in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_FULL):
        return StorageUnavailableError(f"cannot use {where}: {exc}")
    return exc


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (persistent: the first connection does it for all).

    Switching needs an exclusive lock and SQLite answers "locked" at once, without
    its busy handler, while another connection is opening the same new file; so
    retry within the busy timeout (this runs in a worker thread: sleeping is fine).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() in ("wal", "memory"):  # an in-memory database has no WAL
            return
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(f"could not switch to WAL mode (still {mode})")
        time.sleep(0.01)
