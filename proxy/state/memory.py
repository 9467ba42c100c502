"""``MemoryStore``: the state interface in one process's memory (tests, benchmarks).

Same semantics as ``SqliteStore`` (one shared contract suite), nothing persisted, not
shared between processes. One lock makes every method atomic.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import StateError
from .provenance import normalized_digests
from .store import (
    MAX_EVENTS,
    MAX_JOURNAL,
    MAX_LABELS,
    MAX_VALUES,
    BudgetKey,
    BudgetResult,
    Event,
    Scope,
    SessionInfo,
    check_duration,
    check_labels,
    check_limit,
    check_limit_arg,
    check_principal,
    check_reason,
    check_seq,
    check_session,
    check_source,
    check_time,
    encode_event,
    from_units,
    to_units,
    window_of,
)

EMPTY_MARKS: MappingProxyType[str, float] = MappingProxyType({})


@dataclass(slots=True)
class _Session:
    principal: str | None
    first_seen: float
    last_seen: float


@dataclass(slots=True)
class _Values:
    # digest -> (source, expires); insertion order = age (a refresh moves to the end)
    strong: OrderedDict[bytes, tuple[str, float | None]] = field(default_factory=OrderedDict)
    text: OrderedDict[bytes, tuple[str, float | None]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self.strong) + len(self.text)


class MemoryStore:
    def __init__(self, *, max_labels: int = MAX_LABELS, max_events: int = MAX_EVENTS,
                 max_values: int = MAX_VALUES, max_journal: int = MAX_JOURNAL) -> None:
        self.max_labels = max_labels
        self.max_journal = max_journal
        self.max_events = max_events
        self.max_values = max_values
        self._lock = threading.Lock()
        self._closed = False
        self._sessions: dict[str, _Session] = {}
        self._kills: dict[str, tuple[str, float]] = {}     # "s:<session>" / "p:<principal>"
        self._marks: dict[str, MappingProxyType[str, float]] = {}   # immutable snapshots
        self._counts: dict[str, dict[str, int]] = {}
        self._events: dict[str, deque[tuple[int, float, str]]] = {}
        self._seq = 0
        self._budgets: dict[tuple[str, str, str, float, int], int] = {}
        self._values: dict[str, _Values] = {}
        self._journal: dict[str, dict[int, tuple[float, str]]] = {}   # seq order = age

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._sessions)})"

    def _open(self) -> None:
        if self._closed:
            raise StateError("the state store is closed")

    def _active(self, session: str, now: float) -> None:
        s = self._sessions.get(session)
        if s is None:
            self._sessions[session] = _Session(None, now, now)
        else:
            s.last_seen = max(s.last_seen, now)
            s.first_seen = min(s.first_seen, now)

    # --- sessions -----------------------------------------------------------------------

    def touch(self, session: str, principal_digest: str, now: float) -> None:
        """Exact (nothing is debounced here): ``list_sessions`` sees every touch."""
        if type(session) is str and type(now) is float and -math.inf < now < math.inf:
            # Fast path for a known session of the same principal: both were checked when
            # stored, so only the update needs the lock.
            s = self._sessions.get(session)
            if s is not None and type(principal_digest) is str \
                    and s.principal == principal_digest:
                with self._lock:
                    self._open()
                    if self._sessions.get(session) is s and s.principal == principal_digest:
                        if now > s.last_seen:
                            s.last_seen = now
                        elif now < s.first_seen:
                            s.first_seen = now
                        return
        check_session(session)
        check_principal(principal_digest)
        now = check_time(now)
        with self._lock:
            self._open()
            self._active(session, now)
            self._sessions[session].principal = principal_digest

    def list_sessions(self, active_since: float = -math.inf) -> list[SessionInfo]:
        with self._lock:
            self._open()
            out = []
            for key, s in self._sessions.items():
                kill = self._kills.get("s:" + key)
                if s.last_seen >= active_since or kill is not None:
                    out.append(SessionInfo(key, s.principal, s.first_seen, s.last_seen,
                                           kill[0] if kill else None,
                                           kill[1] if kill else None))
        out.sort(key=lambda i: (-i.last_seen, i.session))
        return out

    def kill(self, session: str, reason: str, now: float) -> None:
        check_session(session)
        reason = check_reason(reason)
        now = check_time(now)
        with self._lock:
            self._open()
            self._kills.setdefault("s:" + session, (reason, now))
            if session not in self._sessions:
                self._sessions[session] = _Session(None, now, now)

    def kill_principal(self, principal_digest: str, reason: str, now: float) -> None:
        check_principal(principal_digest)
        reason = check_reason(reason)
        now = check_time(now)
        with self._lock:
            self._open()
            self._kills.setdefault("p:" + principal_digest, (reason, now))

    def killed(self, session: str, principal_digest: str | None = None) -> str | None:
        self._open()                      # no lock: one atomic dict lookup (or two)
        if not self._kills:
            return None
        kill = self._kills.get("s:" + session)
        if kill is None and principal_digest:
            kill = self._kills.get("p:" + principal_digest)
        return kill[0] if kill else None

    # --- marks ----------------------------------------------------------------------------

    def mark(self, session: str, labels: Iterable[str], now: float) -> None:
        check_session(session)
        names = check_labels(labels)
        now = check_time(now)
        if not names:
            return
        with self._lock:
            self._open()
            new = self._marks.get(session, EMPTY_MARKS).copy()   # a dict copy, at C speed
            for label in names:
                last = new.get(label)
                new[label] = now if last is None or now > last else last
            if len(new) > self.max_labels:
                raise StateError(f"session {session} would hold more than {self.max_labels} "
                                 "mark labels; refusing rather than forgetting one")
            counts = self._counts.setdefault(session, {})
            for label in names:
                counts[label] = counts.get(label, 0) + 1
            self._marks[session] = MappingProxyType(new)
            self._active(session, now)

    def marks(self, session: str) -> Mapping[str, float]:
        # No lock: snapshots are immutable and replaced whole; a dict lookup is atomic.
        self._open()
        return self._marks.get(session, EMPTY_MARKS)

    def mark_counts(self, session: str) -> Mapping[str, int]:
        with self._lock:
            self._open()
            return dict(self._counts.get(session, {}))

    # --- events ---------------------------------------------------------------------------

    def append_event(self, session: str, event: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(event)
        now = check_time(now)
        with self._lock:
            self._open()
            self._seq += 1
            q = self._events.get(session)
            if q is None:
                q = self._events[session] = deque(maxlen=self.max_events)
            q.append((self._seq, now, text))
            self._active(session, now)
            return self._seq

    def events(self, session: str, limit: int = 100) -> list[Event]:
        limit = min(check_limit_arg(limit), self.max_events)
        with self._lock:
            self._open()
            q = self._events.get(session)
            rows = list(q)[-limit:] if q and limit else []
        return [Event(seq, at, json.loads(text)) for seq, at, text in rows]

    # --- budgets --------------------------------------------------------------------------

    def consume(self, key: BudgetKey, amount: float, limit: float,
                window_seconds: float | None, now: float) -> BudgetResult:
        units = to_units(amount)
        cap = check_limit(limit)
        now = check_time(now)
        w = window_of(window_seconds, now)
        k = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._lock:
            self._open()
            used = self._budgets.get(k, 0)
            ok = used + units <= cap
            if ok:
                self._budgets[k] = used + units
        after = used + units if ok else used
        return BudgetResult(ok, from_units(used), from_units(after), from_units(cap),
                            w.start, w.end)

    def release(self, key: BudgetKey, amount: float, window_seconds: float | None,
                now: float) -> float:
        units = to_units(amount)
        now = check_time(now)
        w = window_of(window_seconds, now)
        k = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._lock:
            self._open()
            used = self._budgets.get(k)
            if used is None:
                return 0.0
            used = max(0, used - units)
            self._budgets[k] = used
        return from_units(used)

    def budget_used(self, key: BudgetKey, window_seconds: float | None, now: float) -> float:
        now = check_time(now)
        w = window_of(window_seconds, now)
        k = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._lock:
            self._open()
            return from_units(self._budgets.get(k, 0))

    # --- provenance -----------------------------------------------------------------------

    def remember(self, session: str, values: Iterable[str], source: str, now: float,
                 ttl: float | None = None) -> int:
        check_session(session)
        check_source(source)
        now = check_time(now)
        ttl = check_duration(ttl, "ttl")
        expires = None if ttl is None else now + ttl
        items = normalized_digests(values)
        if not items:
            return 0
        evicted = 0
        with self._lock:
            self._open()
            vs = self._values.get(session)
            if vs is None:
                vs = self._values[session] = _Values()
            for digest, strong in items.values():
                vs.strong.pop(digest, None)
                vs.text.pop(digest, None)
                (vs.strong if strong else vs.text)[digest] = (source, expires)
            while len(vs) > self.max_values:
                (vs.text if vs.text else vs.strong).popitem(last=False)
                evicted += 1
            self._active(session, now)
        return evicted

    def seen(self, session: str, values: Iterable[str],
             now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else check_time(now)
        wanted = normalized_digests(values, kinds=False)
        out: dict[str, str] = {}
        with self._lock:
            self._open()
            vs = self._values.get(session)
            if vs is None:
                return out
            for value, (digest, _) in wanted.items():
                entry = vs.strong.get(digest) or vs.text.get(digest)
                if entry is not None and (entry[1] is None or entry[1] > now):
                    out[value] = entry[0]
        return out

    # --- compensation journal ------------------------------------------------------------

    def journal_add(self, session: str, entry: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(entry)
        now = check_time(now)
        with self._lock:
            self._open()
            held = self._journal.setdefault(session, {})
            if len(held) >= self.max_journal:
                raise StateError(f"session {session} already journals {self.max_journal} "
                                 "compensations; refusing rather than dropping one")
            self._seq += 1
            held[self._seq] = (now, text)
            self._active(session, now)
            return self._seq

    def journal_update(self, session: str, seq: int, entry: Mapping[str, Any]) -> bool:
        check_session(session)
        check_seq(seq)
        text = encode_event(entry)
        with self._lock:
            self._open()
            held = self._journal.get(session)
            if held is None or seq not in held:
                return False
            held[seq] = (held[seq][0], text)
            return True

    def journal(self, session: str) -> list[Event]:
        check_session(session)
        with self._lock:
            self._open()
            rows = list(self._journal.get(session, {}).items())
        return [Event(seq, at, json.loads(text)) for seq, (at, text) in rows]

    def journal_take(self, session: str) -> list[Event]:
        check_session(session)
        with self._lock:
            self._open()
            held = self._journal.pop(session, {})
        return [Event(seq, at, json.loads(text)) for seq, (at, text) in held.items()]

    def journal_sessions(self) -> list[str]:
        with self._lock:
            self._open()
            return sorted(s for s, held in self._journal.items() if held)

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, now: float, idle_seconds: float) -> int:
        now = check_time(now)
        idle = check_time(idle_seconds, "idle_seconds")
        cutoff = now - idle
        removed = 0
        with self._lock:
            self._open()
            gone = [k for k, s in self._sessions.items()
                    if s.last_seen < cutoff and "s:" + k not in self._kills]
            for k in gone:
                del self._sessions[k]
                self._marks.pop(k, None)
                self._counts.pop(k, None)
                self._events.pop(k, None)
                self._values.pop(k, None)
            removed += len(gone)
            dead = set(gone)
            for vs in self._values.values():
                for od in (vs.strong, vs.text):
                    expired = [d for d, (_, exp) in od.items() if exp is not None and exp <= now]
                    for d in expired:
                        del od[d]
                    removed += len(expired)
            ended = [k for k in self._budgets
                     if (k[3] and (k[4] + 1) * k[3] <= now)
                     or (k[1] == Scope.SESSION.value and k[2] in dead)]
            for k in ended:
                del self._budgets[k]
            removed += len(ended)
        return removed

    def close(self) -> None:
        with self._lock:
            self._closed = True

