"""Session state: marks (labels with time), events, budgets, provenance values, the kill
switch — behind one interface, ``StateStore``, with an embedded SQLite default.

Importable without mitmproxy. See ``proxy/state/README.md`` for the concepts, the
consistency model and how the Redis backend maps onto the same operations.
"""

from __future__ import annotations

from pathlib import Path

from .errors import StateError
from .memory import MemoryStore
from .provenance import classify, extract_values, iban_valid, normalize_value
from .session import (
    ANONYMOUS_DIGEST,
    MCP_SESSION_HEADER,
    SESSION_HEADER,
    pick_session_id,
    principal_session,
    session_key,
)
from .sqlite import SqliteStore
from .store import (
    MAX_AMOUNT,
    BudgetKey,
    BudgetResult,
    Event,
    Scope,
    SessionInfo,
    StateStore,
)


def open_store(spec: str | Path, *, shared: bool = False) -> StateStore:
    """The store a ``--state`` value names.

    ``memory:`` — ``MemoryStore``; ``sqlite::memory:`` / ``:memory:`` — a private
    in-memory SQLite database; ``sqlite:PATH``, ``sqlite:///ABS/PATH`` or a plain path —
    ``SqliteStore(PATH, shared=shared)``; ``redis://HOST:PORT/DB`` (also ``rediss://``,
    ``unix://``) — ``RedisStore`` (needs the ``redis`` package; ``StateError`` when Redis
    cannot be reached).
    """
    text = str(spec).strip()
    if not text:
        raise StateError("no state store given")
    if text in ("memory:", "memory://"):
        return MemoryStore()
    if text.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis_store import RedisStore
        except ImportError as e:
            raise StateError(f"state store {text}: {e}") from None
        return RedisStore(text)
    if text.startswith("sqlite://"):
        text = text[len("sqlite://"):] or ":memory:"
    elif text.startswith("sqlite:"):
        text = text[len("sqlite:"):] or ":memory:"
    return SqliteStore(text, shared=shared)


__all__ = [
    "ANONYMOUS_DIGEST",
    "MAX_AMOUNT",
    "MCP_SESSION_HEADER",
    "SESSION_HEADER",
    "BudgetKey",
    "BudgetResult",
    "Event",
    "MemoryStore",
    "Scope",
    "SessionInfo",
    "SqliteStore",
    "StateError",
    "StateStore",
    "classify",
    "extract_values",
    "iban_valid",
    "normalize_value",
    "open_store",
    "pick_session_id",
    "principal_session",
    "session_key",
]
