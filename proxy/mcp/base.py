"""Small shared types of the MCP package: what holds a call (``Hold``), what goes to the
evidence log (``Note``), stable server identities, and access to a state store's SQLite file.

Importable without mitmproxy.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from ..action import Action
from ..decision import Verdict
from ..state.errors import StateError
from ..state.sqlite_db import SqliteDb

STDIO_SCHEME = "stdio"
MAX_SERVER_CHARS = 2048
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Hold:
    """Why an MCP call (or a tools/list result, or a request on a session) may not proceed.

    ``verdict`` is ``ESCALATE`` (a person may release it: a changed pin) or ``DENY``;
    ``rule_id`` names the cause in evidence and in the JSON-RPC error the agent sees."""

    rule_id: str
    reason: str
    verdict: Verdict = Verdict.DENY
    detail: Mapping[str, Any] = field(default=_EMPTY)

    def to_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "reason": self.reason, "verdict": self.verdict.value,
                **({"detail": dict(self.detail)} if self.detail else {})}


@dataclass(frozen=True, slots=True)
class Note:
    """Something to record in the evidence log (the caller writes it).

    ``outcome`` (the evidence schema's words): ``forwarded`` (evidence only: the result went
    through unchanged), ``redacted`` (tools removed from the list the agent sees), ``cut``
    (the list was refused), ``held`` (calls to the server are held). ``verdict`` is what the
    record's decision says: allow for ``forwarded``, escalate for ``held``, deny else."""

    rule_ids: tuple[str, ...]
    reason: str
    outcome: str
    detail: Mapping[str, Any] = field(default=_EMPTY)

    @property
    def verdict(self) -> Verdict:
        return {"forwarded": Verdict.ALLOW, "held": Verdict.ESCALATE}.get(self.outcome,
                                                                           Verdict.DENY)

    def to_dict(self) -> dict[str, Any]:
        return {"rule_ids": list(self.rule_ids), "reason": self.reason,
                "outcome": self.outcome, "detail": dict(self.detail)}


def server_identity(action: Action) -> str:
    """The stable identity of the MCP server an action talks to: ``scheme://host:port/path``
    (explicit port, no query), or ``stdio:<server-id>`` for a wrapped stdio server. Never
    the policy's name for it (names can be reassigned) and never a command line."""
    if action.scheme == STDIO_SCHEME:
        return stdio_identity(action.host)
    host = f"[{action.host}]" if ":" in action.host else action.host
    path = action.path.rstrip("/") or "/"
    return f"{action.scheme}://{host}:{action.port}{path}"


def stdio_identity(server_id: str) -> str:
    return f"{STDIO_SCHEME}:{server_id}"


def check_server(server: object) -> str:
    if not isinstance(server, str) or not server:
        raise ValueError("a server identity must be a non-empty string")
    if len(server) > MAX_SERVER_CHARS:
        raise ValueError(f"a server identity is at most {MAX_SERVER_CHARS} characters")
    try:
        server.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a server identity must be valid Unicode text") from None
    return server


def short_hash(*parts: str) -> str:
    h = hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


# --- adapters over a state store ----------------------------------------------------------

A = TypeVar("A")


def sqlite_db(store: object) -> SqliteDb | None:
    """The ``SqliteDb`` under a ``SqliteStore`` (``None`` for other stores). The pins, binding
    and shadowing tables live in the same file, each with its own schema version."""
    db = getattr(store, "_db", None)
    return db if isinstance(db, SqliteDb) else None


def check_open(store: object) -> None:
    """For the in-memory adapters: a closed ``MemoryStore`` refuses like the store does."""
    if getattr(store, "_closed", False):
        raise StateError("the state store is closed")


class AdapterCache:
    """One adapter object per store (weakly keyed: the adapter goes with the store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_store: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def get(self, store: Any, make: Callable[[], A]) -> A:
        with self._lock:
            found = self._by_store.get(store)
            if found is None:
                found = make()
                self._by_store[store] = found
            return found  # type: ignore[no-any-return]


_REDIS = AdapterCache()


def redis_state(store: object) -> Any:
    """The pins/bindings/offers adapter over a ``RedisStore`` (``None`` for other stores;
    the ``redis`` package is only imported when such a store exists)."""
    module = sys.modules.get("proxy.state.redis_store")
    if module is None or not isinstance(store, module.RedisStore):
        return None
    from .redis_state import RedisMcpState

    return _REDIS.get(store, lambda: RedisMcpState(store))
