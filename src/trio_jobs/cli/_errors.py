"""The command's mistakes: each is reported in one line, and names its exit status."""

from __future__ import annotations


class CliError(Exception):
    """A mistake to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """A malformed command line (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class StoreUnusableError(CliError):
    """The store is missing, corrupt, or not a trio_jobs store (exit status 3).

    Trying again will not help: a person must look. (A service manager can be told
    not to restart a worker that exits with it.)
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, 3)


__all__ = ["CliError", "StoreUnusableError", "UsageError"]
