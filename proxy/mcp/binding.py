"""Session binding: an ``Mcp-Session-Id`` belongs to the principal that created it.

The server hands out a session id on the response carrying the ``InitializeResult``
(``Mcp-Session-Id`` response header). Whoever holds that id can act in the session — the
server trusts it like a bearer token. The proxy binds the id to the principal of the
request that created it (token digest, or ``"anonymous"``) and refuses it from anyone else
(rule ``mcp.session_hijack``).

Bindings live in the state store, keyed by a digest of (server identity, session id): the
raw id, a secret, is never stored. ``binding_get / binding_put / binding_purge``
(``binding_store(store)`` adapts a ``MemoryStore``, ``SqliteStore`` or
``RedisStore``).

An id never seen bound (created before the proxy started with a memory store, or bound in
a purged row) is bound to the first principal presenting it (trust on first use), unless
``check(..., bind_unknown=False)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..decision import Verdict
from ..state.errors import StateError
from ..state.session import ANONYMOUS_DIGEST
from ..state.sqlite_db import SqliteDb
from ..state.store import check_principal, check_time
from .base import AdapterCache, Hold, check_open, check_server, redis_state, short_hash, sqlite_db

HIJACK_RULE = "mcp.session_hijack"
MAX_SESSION_ID_CHARS = 1024


@runtime_checkable
class BindingStore(Protocol):
    """Session-id bindings (proposed additions to ``StateStore``); atomic per method."""

    def binding_get(self, key: str) -> str | None:
        """The principal digest ``key`` is bound to, or None."""
        ...

    def binding_put(self, key: str, principal: str, now: float) -> str:
        """Bind ``key`` to ``principal`` unless it is bound already; returns the principal it
        is bound to now (the earlier one when it was)."""
        ...

    def binding_purge(self, before: float) -> int:
        """Forget bindings made before ``before``; returns how many went."""
        ...


class MemoryBindings:
    def __init__(self, store: object = None) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._bound: dict[str, tuple[str, float]] = {}

    def binding_get(self, key: str) -> str | None:
        check_open(self._store)
        found = self._bound.get(key)
        return found[0] if found else None

    def binding_put(self, key: str, principal: str, now: float) -> str:
        check_principal(principal)
        now = check_time(now)
        with self._lock:
            check_open(self._store)
            return self._bound.setdefault(key, (principal, now))[0]

    def binding_purge(self, before: float) -> int:
        with self._lock:
            old = [k for k, (_, at) in self._bound.items() if at < before]
            for k in old:
                del self._bound[k]
        return len(old)


BINDING_SCHEMA: list[list[str]] = [
    [
        """CREATE TABLE mcp_bindings(
             key TEXT PRIMARY KEY, principal TEXT NOT NULL, at REAL NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX mcp_bindings_at ON mcp_bindings(at)",
    ],
]


class SqliteBindings:
    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        db.migrate("mcp_bindings", BINDING_SCHEMA)

    def binding_get(self, key: str) -> str | None:
        with self._db.read("binding get") as c:
            row = c.execute("SELECT principal FROM mcp_bindings WHERE key = ?",
                            (key,)).fetchone()
        return None if row is None else str(row[0])

    def binding_put(self, key: str, principal: str, now: float) -> str:
        check_principal(principal)
        now = check_time(now)
        with self._db.write("binding put") as c:
            c.execute("INSERT INTO mcp_bindings(key, principal, at) VALUES(?, ?, ?) "
                      "ON CONFLICT(key) DO NOTHING", (key, principal, now))
            row = c.execute("SELECT principal FROM mcp_bindings WHERE key = ?",
                            (key,)).fetchone()
        return str(row[0])

    def binding_purge(self, before: float) -> int:
        with self._db.write("binding purge") as c:
            return c.execute("DELETE FROM mcp_bindings WHERE at < ?", (before,)).rowcount


_ADAPTERS = AdapterCache()


def binding_store(store: Any) -> BindingStore:
    if isinstance(store, BindingStore):
        return store
    shared = redis_state(store)
    if shared is not None:
        return shared  # type: ignore[no-any-return]
    db = sqlite_db(store)
    if db is not None:
        return _ADAPTERS.get(store, lambda: SqliteBindings(db))
    from ..state.memory import MemoryStore

    if store is None:
        return MemoryBindings()
    if isinstance(store, MemoryStore):
        return _ADAPTERS.get(store, lambda: MemoryBindings(store))
    raise StateError(f"{type(store).__name__} cannot bind MCP sessions yet")


def binding_key(server: str, session_id: str) -> str:
    check_server(server)
    if not isinstance(session_id, str) or not session_id.strip():
        raise ValueError("an MCP session id must be a non-empty string")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise ValueError(f"an MCP session id is at most {MAX_SESSION_ID_CHARS} characters")
    return "mcpsid:" + short_hash("fiveplane-mcp-session-v1", server, session_id.strip())


class SessionBinding:
    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.store: BindingStore = binding_store(store)
        self._clock = clock

    def bind(self, server: str, session_id: str, principal_digest: str | None,
             now: float | None = None) -> Hold | None:
        """The response creating ``session_id`` (``Mcp-Session-Id`` on the initialize
        response) went to ``principal_digest``: bind it. A Hold when the id was already bound
        to someone else (a server reissuing an id, or a fixation attempt)."""
        principal = principal_digest or ANONYMOUS_DIGEST
        now = self._clock() if now is None else now
        bound = self.store.binding_put(binding_key(server, session_id), principal, now)
        return None if bound == principal else hijack_hold(server)

    def check(self, server: str, session_id: str, principal_digest: str | None, *,
              bind_unknown: bool = True, now: float | None = None) -> Hold | None:
        """A request to ``server`` presents ``session_id``: None if it belongs to
        ``principal_digest``, else the refusal (``mcp.session_hijack``)."""
        principal = principal_digest or ANONYMOUS_DIGEST
        key = binding_key(server, session_id)
        bound = self.store.binding_get(key)
        if bound is None:
            if not bind_unknown:
                return Hold(HIJACK_RULE,
                            f"MCP session id presented to {server} was not created through "
                            "this proxy", Verdict.DENY, {"server": server})
            now = self._clock() if now is None else now
            bound = self.store.binding_put(key, principal, now)
        return None if bound == principal else hijack_hold(server)

    def purge(self, before: float) -> int:
        return self.store.binding_purge(before)


def hijack_hold(server: str) -> Hold:
    return Hold(HIJACK_RULE,
                f"the MCP session id presented to {server} was created by another principal; "
                "a session belongs to the principal that opened it",
                Verdict.DENY, {"server": server})
