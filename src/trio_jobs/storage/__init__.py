"""Job stores: the protocol, the in-memory default, and the durable backends."""

from ._base import CancelOutcome as CancelOutcome
from ._base import FlowControl as FlowControl
from ._base import Heartbeat as Heartbeat
from ._base import JobStorage as JobStorage
from ._base import WorkerRegistry as WorkerRegistry
from ._base import held_back_jobs as held_back_jobs
from ._base import held_back_types as held_back_types
from ._browse import JobBrowser as JobBrowser
from ._browse import JobPage as JobPage
from ._browse import MinuteCount as MinuteCount
from ._browse import QueueSummary as QueueSummary
from ._memory import MemoryStorage as MemoryStorage
from .postgres import PostgresStorage as PostgresStorage
from .sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "FlowControl",
    "CancelOutcome",
    "Heartbeat",
    "JobStorage",
    "WorkerRegistry",
    "held_back_jobs",
    "held_back_types",
    "JobBrowser",
    "JobPage",
    "MinuteCount",
    "QueueSummary",
    "MemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
]
