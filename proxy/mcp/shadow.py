"""Shadowing: one tool name offered by two MCP servers to the same agent.

A poisoned server can offer a tool named like another server's (``send_email``) so that the
model calls the wrong one, or describe how the *other* server's tool must be used. Calls are
routed by server identity (the URL the agent addressed, or the wrapped stdio server), never by
bare name, so shadowing cannot redirect a call through the proxy; it is recorded as evidence,
and a policy may deny calls to shadowed names (``mcp.shadowing: deny``).

``ShadowBook.offer(scope, server, names)`` records which server offered which names in a
*scope* and returns a ``ShadowFinding`` for each name another server offered there too.
The scope should span every connection of one agent: the principal session
(``principal_session(digest)``, see ``shadow_scope``), since each MCP connection has its own
``Mcp-Session-Id``. Offers live in the state store (``shadow_offer / shadow_servers /
shadow_names / shadow_purge``; ``shadow_store(store)`` adapts a ``MemoryStore``, a
``SqliteStore`` or a ``RedisStore``), so stdio wrappers and the proxy, in separate
processes, see each other.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..action import Action
from ..decision import Verdict
from ..state.errors import StateError
from ..state.session import principal_session
from ..state.sqlite_db import SqliteDb
from ..state.store import check_session, check_time
from .base import AdapterCache, Hold, check_open, check_server, redis_state, sqlite_db

SHADOW_RULE = "mcp.shadowing"
MAX_NAMES_PER_SCOPE = 100_000
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ShadowFinding:
    name: str
    servers: tuple[str, ...]     # every server that offered the name in the scope, sorted

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "servers": list(self.servers)}


def shadow_scope(action: Action) -> str:
    """The scope to record offers in: the principal session of the action's principal
    (every MCP connection and stdio wrapper of one agent)."""
    verified = getattr(action.principal, "verified", None)
    return principal_session(verified.digest if verified is not None else None)


@runtime_checkable
class ShadowStore(Protocol):
    """Tool offers per scope (proposed additions to ``StateStore``); atomic per method."""

    def shadow_offer(self, scope: str, server: str, names: Iterable[str],
                     now: float) -> dict[str, tuple[str, ...]]:
        """Record that ``server`` offered ``names`` in ``scope``; returns, for each of those
        names that another server offered there too, the other servers."""
        ...

    def shadow_servers(self, scope: str, name: str) -> tuple[str, ...]:
        """Every server that offered ``name`` in ``scope``, sorted."""
        ...

    def shadow_names(self, scope: str, exclude_server: str) -> frozenset[str]:
        """Names offered in ``scope`` by servers other than ``exclude_server``."""
        ...

    def shadow_purge(self, before: float) -> int:
        """Forget offers last seen before ``before``; returns how many went."""
        ...


def _check_names(names: Iterable[str]) -> list[str]:
    out = []
    for name in dict.fromkeys(names):
        if not isinstance(name, str) or not name:
            raise ValueError("tool names must be non-empty strings")
        out.append(name)
    return out


class MemoryShadows:
    def __init__(self, store: object = None) -> None:
        self._store = store
        self._lock = threading.Lock()
        # scope -> name -> server -> last offered
        self._offers: dict[str, dict[str, dict[str, float]]] = {}

    def shadow_offer(self, scope: str, server: str, names: Iterable[str],
                     now: float) -> dict[str, tuple[str, ...]]:
        check_session(scope)
        check_server(server)
        now = check_time(now)
        names = _check_names(names)
        out: dict[str, tuple[str, ...]] = {}
        with self._lock:
            check_open(self._store)
            offers = self._offers.setdefault(scope, {})
            if len(offers) + len(set(names) - offers.keys()) > MAX_NAMES_PER_SCOPE:
                raise StateError(f"more than {MAX_NAMES_PER_SCOPE} tool names offered in "
                                 f"session {scope}")
            for name in names:
                by = offers.setdefault(name, {})
                by[server] = now
                if len(by) > 1:
                    out[name] = tuple(sorted(s for s in by if s != server))
        return out

    def shadow_servers(self, scope: str, name: str) -> tuple[str, ...]:
        check_open(self._store)
        with self._lock:
            return tuple(sorted(self._offers.get(scope, {}).get(name, {})))

    def shadow_names(self, scope: str, exclude_server: str) -> frozenset[str]:
        check_open(self._store)
        with self._lock:
            return frozenset(name for name, by in self._offers.get(scope, {}).items()
                             if any(s != exclude_server for s in by))

    def shadow_purge(self, before: float) -> int:
        gone = 0
        with self._lock:
            for scope in list(self._offers):
                offers = self._offers[scope]
                for name in list(offers):
                    by = offers[name]
                    for server in [s for s, at in by.items() if at < before]:
                        del by[server]
                        gone += 1
                    if not by:
                        del offers[name]
                if not offers:
                    del self._offers[scope]
        return gone


SHADOW_SCHEMA: list[list[str]] = [
    [
        """CREATE TABLE mcp_offers(
             scope TEXT NOT NULL, name TEXT NOT NULL, server TEXT NOT NULL, at REAL NOT NULL,
             PRIMARY KEY(scope, name, server)) WITHOUT ROWID""",
        "CREATE INDEX mcp_offers_at ON mcp_offers(at)",
    ],
]


class SqliteShadows:
    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        db.migrate("mcp_offers", SHADOW_SCHEMA)

    def shadow_offer(self, scope: str, server: str, names: Iterable[str],
                     now: float) -> dict[str, tuple[str, ...]]:
        check_session(scope)
        check_server(server)
        now = check_time(now)
        names = _check_names(names)
        others: dict[str, list[str]] = {}
        with self._db.write("shadow offer") as c:
            c.executemany(
                "INSERT INTO mcp_offers(scope, name, server, at) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(scope, name, server) DO UPDATE SET at = max(at, excluded.at)",
                ((scope, n, server, now) for n in names))
            for i in range(0, len(names), _CHUNK):
                chunk = names[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for name, other in c.execute(
                        f"SELECT name, server FROM mcp_offers WHERE scope = ? AND server != ? "
                        f"AND name IN ({marks})", (scope, server, *chunk)):
                    others.setdefault(name, []).append(other)
            count = c.execute("SELECT count(DISTINCT name) FROM mcp_offers WHERE scope = ?",
                              (scope,)).fetchone()[0]
            if count > MAX_NAMES_PER_SCOPE:
                raise StateError(f"more than {MAX_NAMES_PER_SCOPE} tool names offered in "
                                 f"session {scope}")
        return {name: tuple(sorted(v)) for name, v in others.items()}

    def shadow_servers(self, scope: str, name: str) -> tuple[str, ...]:
        with self._db.read("shadow servers") as c:
            rows = c.execute("SELECT server FROM mcp_offers WHERE scope = ? AND name = ? "
                             "ORDER BY server", (scope, name)).fetchall()
        return tuple(r[0] for r in rows)

    def shadow_names(self, scope: str, exclude_server: str) -> frozenset[str]:
        with self._db.read("shadow names") as c:
            rows = c.execute("SELECT DISTINCT name FROM mcp_offers WHERE scope = ? AND "
                             "server != ?", (scope, exclude_server)).fetchall()
        return frozenset(r[0] for r in rows)

    def shadow_purge(self, before: float) -> int:
        with self._db.write("shadow purge") as c:
            return c.execute("DELETE FROM mcp_offers WHERE at < ?", (before,)).rowcount


_ADAPTERS = AdapterCache()


def shadow_store(store: Any) -> ShadowStore:
    if isinstance(store, ShadowStore):
        return store
    shared = redis_state(store)
    if shared is not None:
        return shared  # type: ignore[no-any-return]
    db = sqlite_db(store)
    if db is not None:
        return _ADAPTERS.get(store, lambda: SqliteShadows(db))
    from ..state.memory import MemoryStore

    if store is None:
        return MemoryShadows()
    if isinstance(store, MemoryStore):
        return _ADAPTERS.get(store, lambda: MemoryShadows(store))
    raise StateError(f"{type(store).__name__} cannot record tool offers yet")


class ShadowBook:
    """Which servers offered which tool names, per scope.

    ``offer`` skips the store when the same server offers the same names in the same scope
    again (a small in-process cache): findings are reported when a name is first shared."""

    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time,
                 cache: int = 4096) -> None:
        self.store: ShadowStore = shadow_store(store)
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()

    def offer(self, scope: str, server: str, names: Iterable[str],
              now: float | None = None) -> list[ShadowFinding]:
        names = frozenset(n for n in names if isinstance(n, str) and n)
        key = (scope, server)
        with self._lock:
            if self._seen.get(key) == names:
                self._seen.move_to_end(key)
                return []
        now = self._clock() if now is None else now
        shared = self.store.shadow_offer(scope, server, sorted(names), now)
        with self._lock:
            self._seen[key] = names
            self._seen.move_to_end(key)
            while len(self._seen) > self._cache:
                self._seen.popitem(last=False)
        return [ShadowFinding(name, tuple(sorted((*others, server))))
                for name, others in sorted(shared.items())]

    def servers(self, scope: str, name: str) -> tuple[str, ...]:
        return self.store.shadow_servers(scope, name)

    def foreign_names(self, scope: str, server: str) -> frozenset[str]:
        return self.store.shadow_names(scope, server)

    def hold(self, scope: str, server: str, name: str) -> Hold | None:
        """For ``shadowing: deny``: the refusal of a call to a name more than one server
        offered in ``scope``."""
        servers = self.servers(scope, name)
        if len(servers) < 2 or server not in servers:
            return None
        return shadow_hold(name, servers)


def shadow_hold(name: str, servers: Iterable[str]) -> Hold:
    servers = tuple(servers)
    return Hold(SHADOW_RULE,
                f"tool `{name}` is offered by {len(servers)} MCP servers in this session "
                f"({', '.join(servers)}); the policy denies calls to shadowed tool names",
                Verdict.DENY, {"name": name, "servers": list(servers)})
