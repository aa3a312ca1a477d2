"""Job stores: the protocol, the in-memory default, and the durable backends."""

from ._base import CancelOutcome as CancelOutcome
from ._base import FlowControl as FlowControl
from ._base import Heartbeat as Heartbeat
from ._base import JobStorage as JobStorage
from ._base import WorkerRegistry as WorkerRegistry
from ._memory import MemoryStorage as MemoryStorage
from .postgres import PostgresStorage as PostgresStorage
from .sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "FlowControl",
    "CancelOutcome",
    "Heartbeat",
    "JobStorage",
    "WorkerRegistry",
    "MemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
]
