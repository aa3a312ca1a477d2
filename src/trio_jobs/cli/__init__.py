"""The ``trio-jobs`` command: run workers, submit and inspect jobs, see the demo."""

from ._main import CliError as CliError
from ._main import StoreSpec as StoreSpec
from ._main import UsageError as UsageError
from ._main import build_parser as build_parser
from ._main import main as main
from ._main import open_storage as open_storage

__all__ = ["CliError", "StoreSpec", "UsageError", "build_parser", "main", "open_storage"]
