"""Wake-ups between the processes sharing one SQLite file: a datagram per commit that matters.

SQLite has no LISTEN/NOTIFY, so :class:`SQLiteStorage` brings its own channel.
Each store that waits for work binds a Unix datagram socket in a directory beside
the database file (``jobs.db`` -> ``jobs.db-wake/<pid>-<random>.sock``). A store
whose commit makes work claimable (a save, a retry or release, a requeue, a
rescue) or asks a running job to stop sends one byte to every socket there:
:data:`WORK` or :data:`CANCEL`. The waiting side sleeps in the kernel
(``wait_readable``) and costs nothing until a datagram comes.

Why datagram sockets, rather than watching the WAL file with inotify: they carry
what happened (only commits that create work wake anyone; a heartbeat or a
completion wakes no one), they work wherever Unix sockets do (Linux, macOS, the
BSDs; inotify is Linux only and fires on every write of every commit, checkpoints
included), and a sender never blocks: a full receive queue means wake-ups are
pending there already, so the datagram is dropped. Nothing is lost by a dropped or
missed datagram: waiters also poll at the runner's ``poll_interval``, the
backstop (and the only way to notice writes by other programs).

Housekeeping: the owner removes its socket when the store closes. A process that
died without closing leaves its socket file behind; the next sender finds nobody
bound to it (``ECONNREFUSED``) and removes it. The directory itself stays, like
SQLite's ``-wal`` and ``-shm`` files. The sockets are made with the process's
umask: processes of other users that may write the database but not the sockets
fall back to polling.

Unix socket paths are limited to about 100 bytes. Beside a database with a longer
path, the sockets are addressed through ``/proc/self/fd/<directory fd>/`` on
Linux; where that is not possible either, the store only polls.

The thread-side half (:meth:`WakeChannel.note`, :meth:`WakeChannel.flush`) runs in
the store's worker threads, one at a time under the store's lock; the other
methods run in the Trio thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from typing import Final

#: A commit made a job claimable (now or at a later time): sent to the sockets of
#: stores waiting for work (``...-w.sock``).
WORK: Final = "w"
#: A commit asked a running job to stop: sent to the sockets of stores waiting for
#: cancellation requests (``...-c.sock``).
CANCEL: Final = "c"
KINDS: Final = (WORK, CANCEL)

_SUFFIX: Final = ".sock"
#: A path at most this long (in bytes) is used as the socket's address as it is.
_MAX_PATH: Final = 100
#: The cached listing of the directory is refreshed at least this often (seconds),
#: even if its mtime did not change (file systems with coarse timestamps).
_RELIST: Final = 1.0


def wake_directory(path: str) -> str | None:
    """The directory of the sockets for the database at ``path``.

    None for an in-memory database (nobody else to wake), and where Unix datagram
    sockets do not exist (Windows): the store then only polls.
    """
    if path in ("", ":memory:") or not hasattr(socket, "AF_UNIX"):
        return None
    return os.path.realpath(path) + "-wake"


class WakeChannel:
    """One store's end of the wake-up channel: its listening sockets and its sending side.

    A store listens for each kind (:data:`WORK`, :data:`CANCEL`) on a socket of its
    own, bound when it first waits for that kind, so that senders wake only the
    stores that care: a worker busy running jobs reads no :data:`WORK` datagram
    until it waits for work again, and the ones sent meanwhile just queue.

    Args:
        directory: Where the sockets live (see :func:`wake_directory`).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._dir_fd: int | None = None
        self._dir_fd_lock = threading.Lock()  # both threads may open it
        # Trio thread: the sockets this store listens on, by kind.
        self._listeners: dict[str, socket.socket] = {}
        # Worker threads (under the store's lock): what the batch running now
        # should announce, the sending socket, the cached listing of peers.
        self._pending: set[str] = set()
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_mtime: int | None = None
        self._listed_at = -_RELIST

    # -- the listening side (Trio thread) -------------------------------------------

    def listener(self, kind: str) -> socket.socket | None:
        """This store's socket for ``kind``, if it listens for it."""
        return self._listeners.get(kind)

    def listen(self, kind: str) -> socket.socket:
        """Bind this store's socket for ``kind`` (creating the directory) and return it.

        Raises:
            OSError: The directory or the socket cannot be made (the store polls).
        """
        sock = self._listeners.get(kind)
        if sock is not None:
            return sock
        os.makedirs(self.directory, exist_ok=True)
        address = self._address(self._name(kind))
        if address is None:
            raise OSError(f"no usable socket address in {self.directory}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        self._listeners[kind] = sock
        return sock

    def receive(self, kind: str) -> bool:
        """Drain the datagrams waiting on the socket for ``kind``; True if there were any."""
        sock = self._listeners.get(kind)
        got = False
        while sock is not None:
            try:
                sock.recv(16)
            except OSError:  # BlockingIOError when drained
                break
            got = True
        return got

    def close_listeners(self) -> list[socket.socket]:
        """Stop listening: remove this store's socket files; return the sockets to close.

        The caller tells Trio (``notify_closing``) before closing them. The store
        may listen again later.
        """
        sockets = list(self._listeners.values())
        for kind in self._listeners:
            address = self._address(self._name(kind))
            if address is not None:
                with contextlib.suppress(OSError):
                    os.unlink(address)
        self._listeners.clear()
        return sockets

    def close_sender(self) -> None:
        """Release the sending side (call under the store's lock, no batch running)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()
        with self._dir_fd_lock:
            if self._dir_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._dir_fd)
                self._dir_fd = None
        self._listed_mtime = None
        self._listed_at = -_RELIST

    def _name(self, kind: str) -> str:
        return f"{self._token}-{kind}{_SUFFIX}"

    # -- the sending side (worker threads) ----------------------------------------------

    def note(self, kind: str) -> None:
        """Remember to announce ``kind`` once the transaction running now commits."""
        self._pending.add(kind)

    def flush(self, committed: bool) -> None:
        """After a batch: if it committed, wake the other stores waiting for what it noted.

        Never raises: a wake-up that cannot be sent is left to the poll.
        """
        kinds, self._pending = self._pending, set()
        if not committed or not kinds:
            return
        try:
            peers = self._list_peers()
            if not peers:
                return
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            wanted = tuple(f"-{kind}{_SUFFIX}" for kind in kinds)
            for name in list(peers):
                if name.endswith(wanted) and not name.startswith(self._token):
                    self._send(name)
        except OSError:
            return

    def _send(self, name: str) -> None:
        assert self._sender is not None
        address = self._address(name)
        if address is None:
            return
        try:
            self._sender.sendto(b"!", address)
        except (BlockingIOError, InterruptedError):
            pass  # its queue is full: it has wake-ups pending already
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody listens there any more (a process that died): clean up.
            with contextlib.suppress(OSError):
                os.unlink(address)
            with contextlib.suppress(ValueError):
                self._peers.remove(name)
        except OSError:
            pass

    def _list_peers(self) -> list[str]:
        """The socket files in the directory, listed again when it changed (or every second)."""
        now = time.monotonic()
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._peers, self._listed_mtime, self._listed_at = [], None, now
            return self._peers
        if mtime != self._listed_mtime or now - self._listed_at >= _RELIST:
            self._peers = [n for n in os.listdir(self.directory) if n.endswith(_SUFFIX)]
            self._listed_mtime, self._listed_at = mtime, now
        return self._peers

    def _address(self, name: str) -> str | None:
        """The address of socket ``name``: its path, or a short way to it on Linux."""
        path = os.path.join(self.directory, name)
        if len(os.fsencode(path)) <= _MAX_PATH:
            return path
        with self._dir_fd_lock:
            if self._dir_fd is None:
                if not os.path.isdir("/proc/self/fd"):
                    return None
                try:
                    self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    return None
            return f"/proc/self/fd/{self._dir_fd}/{name}"
