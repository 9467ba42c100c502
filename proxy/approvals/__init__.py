"""Human approval of held calls (escalate / pause): requests bound to the exact call by a
digest, one ``ApprovalStore`` interface (SQLite by default, memory for tests, Redis for
several processes and replicas), an asyncio waiter fed by change notifications, and
``hold`` for the addon.

Importable without mitmproxy. See ``README.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

from ..state.errors import StateError
from .hold import CHECK_SECONDS, HoldResult, Outcome, hold, request_for
from .memory import MemoryApprovalStore
from .model import (
    DEFAULT_TIMEOUT,
    ApprovalConflict,
    ApprovalError,
    ApprovalNotFound,
    ApprovalRequest,
    SelfApproval,
    Status,
    call_digest,
    canonical_json,
    describe_action,
)
from .redact import MASK, redact
from .sqlite import SqliteApprovalStore
from .store import MAX_PENDING, ApprovalStore, Listener, Notifier, NotifyingStore


def open_approvals(spec: str | Path, *, state: object = None) -> ApprovalStore:
    """The store a ``--approvals`` value (or the state store's spec) names: ``memory:`` —
    ``MemoryApprovalStore``; ``sqlite:PATH`` or a plain path — ``SqliteApprovalStore``;
    ``redis://…`` (``rediss://``, ``unix://``) — ``RedisApprovalStore``, sharing ``state``
    when it is the ``RedisStore`` opened for the same spec (one pool, one listener)."""
    text = str(spec).strip()
    if not text:
        raise StateError("no approval store given")
    if text in ("memory:", "memory://"):
        return MemoryApprovalStore()
    if text.startswith(("redis://", "rediss://", "unix://")):
        try:
            from ..state.redis_store import RedisStore
            from .redis_store import RedisApprovalStore
        except ImportError as e:
            raise StateError(f"approval store {text}: {e}") from None
        if isinstance(state, RedisStore) and state.url == text:
            return RedisApprovalStore(state)
        return RedisApprovalStore(text)
    if text.startswith("sqlite://"):
        text = text[len("sqlite://"):] or ":memory:"
    elif text.startswith("sqlite:"):
        text = text[len("sqlite:"):] or ":memory:"
    return SqliteApprovalStore(text)

__all__ = [
    "CHECK_SECONDS",
    "DEFAULT_TIMEOUT",
    "MASK",
    "MAX_PENDING",
    "ApprovalConflict",
    "ApprovalError",
    "ApprovalNotFound",
    "ApprovalRequest",
    "ApprovalStore",
    "HoldResult",
    "Listener",
    "MemoryApprovalStore",
    "Notifier",
    "NotifyingStore",
    "Outcome",
    "SelfApproval",
    "SqliteApprovalStore",
    "Status",
    "call_digest",
    "canonical_json",
    "describe_action",
    "hold",
    "open_approvals",
    "redact",
    "request_for",
]
