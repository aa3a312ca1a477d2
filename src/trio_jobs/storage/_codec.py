"""JSON encoding shared by the durable stores.

Payloads, results, metadata, errors and retry policies are stored as JSON text:
readable by any tool, and never a code-execution channel (no pickle).
"""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime
from typing import Any

from .._records import ErrorInfo
from .._retry import RetryConfig, RetryStrategy

# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(value: Any, field: str) -> str:
    """Encode ``value`` as JSON text.

    Raises:
        TypeError: the value is not JSON-encodable; the message names ``field``.
    """
    if value is None:  # most results and many payloads: skip the encoder
        return "null"
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{field} must be JSON-encodable for a durable store: {exc}") from None


def decode_json(text: str | None) -> Any:
    """Decode JSON text; ``None`` decodes to ``None``."""
    # Most stored payloads, results and metadata are empty, and a claim decodes
    # three per job: skip the parser for those.
    if text is None or text == "null":
        return None
    if text == "{}":
        return {}
    return json.loads(text)


def encode_error(error: ErrorInfo | None) -> str | None:
    """Encode an :class:`ErrorInfo` as JSON text."""
    if error is None:
        return None
    return json.dumps(
        {
            "message": error.message,
            "type": error.type,
            "traceback": error.traceback,
            "attempt": error.attempt,
            "timestamp": error.timestamp.isoformat(),
            "retryable": error.retryable,
        }
    )


def decode_error(text: str | None) -> ErrorInfo | None:
    """Decode what :func:`encode_error` wrote."""
    if text is None:
        return None
    data = json.loads(text)
    return ErrorInfo(
        message=data["message"],
        type=data["type"],
        traceback=data.get("traceback"),
        attempt=data.get("attempt", 0),
        timestamp=datetime.fromisoformat(data["timestamp"]),
        retryable=data.get("retryable", False),
    )


class BatchCodec:
    """Encodes the fields jobs of one batch share (metadata, retry) once per object.

    ``submit_many`` makes every job of a batch from one template, so their
    metadata and retry policy are the same objects: encoding them once per batch
    instead of once per job is most of what a batch saves over single submits.
    """

    def __init__(self) -> None:
        self._metadata: dict[int, tuple[Any, str]] = {}
        self._retry: dict[int, tuple[Any, str | None]] = {}

    def metadata(self, value: Any) -> str:
        """``encode_json(dict(value), "metadata")``, once per object."""
        hit = self._metadata.get(id(value))
        if hit is None or hit[0] is not value:
            hit = self._metadata[id(value)] = (value, encode_json(dict(value), "metadata"))
        return hit[1]

    def retry(self, config: RetryConfig | None) -> str | None:
        """:func:`encode_retry`, once per object."""
        hit = self._retry.get(id(config))
        if hit is None or hit[0] is not config:
            hit = self._retry[id(config)] = (config, encode_retry(config))
        return hit[1]


def encode_retry(config: RetryConfig | None) -> str | None:
    """Encode a :class:`RetryConfig` as JSON text, without ``is_retryable``.

    A predicate cannot travel between processes; a worker that claims the job
    decides retryability with the heuristics of :func:`is_retryable_error`.
    """
    if config is None:
        return None
    return json.dumps(
        {
            "max_attempts": config.max_attempts,
            "base_delay": config.base_delay,
            "max_delay": _finite_or_none(config.max_delay),
            "backoff_multiplier": config.backoff_multiplier,
            "jitter": config.jitter,
            "jitter_factor": config.jitter_factor,
            "strategy": config.strategy.value,
        }
    )


def decode_retry(text: str | None) -> RetryConfig | None:
    """Decode what :func:`encode_retry` wrote."""
    if text is None:
        return None
    return _decode_retry(text)


@functools.lru_cache(maxsize=256)
def _decode_retry(text: str) -> RetryConfig:
    # Most jobs share a handful of policies; RetryConfig is frozen, so one decoded
    # object can serve every job that stored the same text.
    data = json.loads(text)
    if data.get("max_delay") is None:
        data["max_delay"] = math.inf
    data["strategy"] = RetryStrategy(data["strategy"])
    return RetryConfig(**data)


def _finite_or_none(value: float) -> float | None:
    return None if math.isinf(value) else value
