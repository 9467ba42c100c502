"""``SqliteStore``: the embedded default state backend (stdlib ``sqlite3``, one file).

Consistency model
-----------------
* Budgets, events, provenance values, counts: read from and written to the database in
  ``BEGIN IMMEDIATE`` transactions — exact across threads, and across processes that
  share the file.
* Marks snapshots and the kill list are cached in the process (write-through; marks in a
  bounded LRU of sessions), so ``marks()`` and ``killed()`` cost a dict lookup.
  - one process using the file (the default, ``shared=False``): exact, because every write
    goes through this object and updates the cache after it commits;
  - several processes sharing the file (``shared=True``): each cached read first asks
    SQLite whether another connection committed (``PRAGMA data_version``, about a
    microsecond) and drops the caches if so — exact again, at that cost;
  - several machines: the Redis backend.
* ``touch`` writes at most once per ``touch_interval`` seconds per session and principal
  (activity is for listing and idle purge, not for decisions): a per-process cache of the
  last time written answers the others without a lock or SQL, so the stored ``last_seen``
  — and so ``list_sessions(active_since)`` and ``purge`` — may lag the latest touch by
  less than ``touch_interval``. A new session, a new principal or an earlier time is
  written at once. The cache is kept when another process commits (with ``shared=True``
  too): otherwise processes sharing the file would clear each other's and write on every
  touch.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import StateError
from .provenance import normalized_digests
from .sqlite_db import SqliteDb
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

EMPTY: MappingProxyType[str, float] = MappingProxyType({})
_CHUNK = 500   # values per IN (...) query

SCHEMA: list[list[str]] = [
    [  # version 1
        """CREATE TABLE sessions(
             session TEXT PRIMARY KEY, principal TEXT,
             first_seen REAL NOT NULL, last_seen REAL NOT NULL,
             n_events INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
        "CREATE INDEX sessions_last_seen ON sessions(last_seen)",
        """CREATE TABLE kills(
             target TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE marks(
             session TEXT NOT NULL, label TEXT NOT NULL,
             last REAL NOT NULL, count INTEGER NOT NULL,
             PRIMARY KEY(session, label)) WITHOUT ROWID""",
        """CREATE TABLE events(
             seq INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL,
             at REAL NOT NULL, data TEXT NOT NULL)""",
        "CREATE INDEX events_session ON events(session, seq)",
        """CREATE TABLE budgets(
             budget_id TEXT NOT NULL, scope TEXT NOT NULL, scope_value TEXT NOT NULL,
             window REAL NOT NULL, idx INTEGER NOT NULL,
             used INTEGER NOT NULL, ends REAL,
             PRIMARY KEY(budget_id, scope, scope_value, window, idx)) WITHOUT ROWID""",
        "CREATE INDEX budgets_ends ON budgets(ends) WHERE ends IS NOT NULL",
        """CREATE TABLE provenance(
             session TEXT NOT NULL, digest BLOB NOT NULL, source TEXT NOT NULL,
             at REAL NOT NULL, expires REAL, strong INTEGER NOT NULL,
             PRIMARY KEY(session, digest)) WITHOUT ROWID""",
        "CREATE INDEX provenance_age ON provenance(session, strong, at)",
        "CREATE INDEX provenance_expires ON provenance(expires) WHERE expires IS NOT NULL",
    ],
    [  # version 2: the compensation journal (rollback)
        """CREATE TABLE journal(
             seq INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL,
             at REAL NOT NULL, data TEXT NOT NULL)""",
        "CREATE INDEX journal_session ON journal(session, seq)",
    ],
]

_ACTIVE = ("INSERT INTO sessions(session, principal, first_seen, last_seen) VALUES(?, NULL, ?, ?) "
           "ON CONFLICT(session) DO UPDATE SET "
           "last_seen = max(last_seen, excluded.last_seen), "
           "first_seen = min(first_seen, excluded.first_seen)")


class SqliteStore:
    """Session state in one SQLite file (``":memory:"``: private to this object)."""

    def __init__(self, path: str | Path, *, shared: bool = False, durable: bool = False,
                 busy_timeout: float = 5.0, cache_sessions: int = 4096,
                 touch_interval: float = 1.0, max_labels: int = MAX_LABELS,
                 max_events: int = MAX_EVENTS, max_values: int = MAX_VALUES,
                 max_journal: int = MAX_JOURNAL) -> None:
        self._db = SqliteDb(path, busy_timeout=busy_timeout, durable=durable)
        try:
            self._db.migrate("state", SCHEMA)
        except BaseException:
            self._db.close()
            raise
        self.path = self._db.path
        self.shared = shared and not self._db.in_memory
        self.cache_sessions = max(1, cache_sessions)
        self.touch_interval = touch_interval
        self.max_labels = max_labels
        self.max_events = max_events
        self.max_values = max_values
        self.max_journal = max_journal
        self._lock = self._db.lock
        self._marks: OrderedDict[str, MappingProxyType[str, float]] = OrderedDict()
        self._touched: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._kills: dict[str, str] = {}
        with self._lock:
            self._load_kills()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}, shared={self.shared})"

    @property
    def journal_mode(self) -> str:
        return self._db.journal_mode

    # --- caches -----------------------------------------------------------------------------

    def _load_kills(self) -> None:
        with self._db.read("load kills") as c:
            self._kills = dict(c.execute("SELECT target, reason FROM kills"))

    def _check_open(self) -> None:
        if self._db.conn is None:
            raise StateError(f"state database {self.path} is closed")

    def _sync(self) -> None:
        """Under the lock: refuse when closed; drop caches another process made stale."""
        self._check_open()
        if self.shared and self._db.changed_elsewhere():
            self._marks.clear()
            self._load_kills()    # ``_touched`` is kept: see ``touch``

    def _cache_marks(self, session: str, snapshot: MappingProxyType[str, float]) -> None:
        self._marks[session] = snapshot
        self._marks.move_to_end(session)
        while len(self._marks) > self.cache_sessions:
            self._marks.popitem(last=False)

    # --- sessions -----------------------------------------------------------------------

    def touch(self, session: str, principal_digest: str, now: float) -> None:
        """Record activity of ``session`` by ``principal_digest`` at ``now``.

        Debounced: when this object wrote the same session for the same principal less than
        ``touch_interval`` seconds before ``now`` (and not after it), nothing is written —
        the call is a dict lookup, without the lock or SQL. So the stored ``last_seen``, as
        ``list_sessions(active_since)`` and ``purge`` see it, lags the latest touch by less
        than ``touch_interval`` (1 s by default); a session seen for the first time (in this
        process), a change of principal, or a time earlier than the last write (which may
        move ``first_seen``) is written at once. A row removed by another process's
        ``purge`` comes back at the next write, within ``touch_interval``.
        """
        # Fast path: the cached entry proves the session and principal valid (they were
        # checked when written); NaN and infinities fail the interval test and take the
        # slow path, which rejects them. Entries are tuples replaced whole and
        # ``OrderedDict.get`` is atomic, so no lock is needed to read one.
        if type(session) is str and type(now) is float:
            last = self._touched.get(session)
            if (last is not None and type(principal_digest) is str
                    and 0.0 <= now - last[1] < self.touch_interval
                    and last[0] == principal_digest and self._db.conn is not None):
                return
        check_session(session)
        check_principal(principal_digest)
        now = check_time(now)
        with self._lock:
            self._sync()
            last = self._touched.get(session)
            if (last is not None and last[0] == principal_digest
                    and 0 <= now - last[1] < self.touch_interval):
                return
            with self._db.write("touch") as c:
                c.execute("INSERT INTO sessions(session, principal, first_seen, last_seen) "
                          "VALUES(?, ?, ?, ?) ON CONFLICT(session) DO UPDATE SET "
                          "principal = excluded.principal, "
                          "last_seen = max(last_seen, excluded.last_seen), "
                          "first_seen = min(first_seen, excluded.first_seen)",
                          (session, principal_digest, now, now))
            self._touched[session] = (principal_digest, now)
            self._touched.move_to_end(session)
            while len(self._touched) > self.cache_sessions:
                self._touched.popitem(last=False)

    def list_sessions(self, active_since: float = -math.inf) -> list[SessionInfo]:
        since = -1e308 if active_since == -math.inf else check_time(active_since, "active_since")
        with self._db.read("list sessions") as c:
            rows = c.execute(
                "SELECT s.session, s.principal, s.first_seen, s.last_seen, k.reason, k.at "
                "FROM sessions s LEFT JOIN kills k ON k.target = 's:' || s.session "
                "WHERE s.last_seen >= ? OR k.reason IS NOT NULL "
                "ORDER BY s.last_seen DESC, s.session", (since,)).fetchall()
        return [SessionInfo(*row) for row in rows]

    def kill(self, session: str, reason: str, now: float) -> None:
        check_session(session)
        self._kill("s:" + session, check_reason(reason), check_time(now), session)

    def kill_principal(self, principal_digest: str, reason: str, now: float) -> None:
        check_principal(principal_digest)
        self._kill("p:" + principal_digest, check_reason(reason), check_time(now), None)

    def _kill(self, target: str, reason: str, now: float, session: str | None) -> None:
        with self._lock:
            with self._db.write("kill") as c:
                c.execute("INSERT INTO kills(target, reason, at) VALUES(?, ?, ?) "
                          "ON CONFLICT(target) DO NOTHING", (target, reason, now))
                if session is not None:
                    c.execute("INSERT INTO sessions(session, principal, first_seen, last_seen) "
                              "VALUES(?, NULL, ?, ?) ON CONFLICT(session) DO NOTHING",
                              (session, now, now))
                kept = c.execute("SELECT reason FROM kills WHERE target = ?",
                                 (target,)).fetchone()[0]
            self._kills = {**self._kills, target: kept}

    def killed(self, session: str, principal_digest: str | None = None) -> str | None:
        if self.shared:
            with self._lock:
                self._sync()
                kills = self._kills
        else:
            if self._db.conn is None:
                self._check_open()
            kills = self._kills          # no lock: replaced whole, read with atomic lookups
        if not kills:
            return None                  # the usual case: nothing was ever killed
        reason = kills.get("s:" + session)
        if reason is None and principal_digest:
            reason = kills.get("p:" + principal_digest)
        return reason

    # --- marks ----------------------------------------------------------------------------

    def mark(self, session: str, labels: Iterable[str], now: float) -> None:
        check_session(session)
        names = check_labels(labels)
        now = check_time(now)
        if not names:
            return
        with self._lock:
            self._sync()
            cached = self._marks.get(session)
            with self._db.write("mark") as c:
                c.executemany(
                    "INSERT INTO marks(session, label, last, count) VALUES(?, ?, ?, 1) "
                    "ON CONFLICT(session, label) DO UPDATE SET "
                    "last = max(last, excluded.last), count = count + 1",
                    [(session, label, now) for label in names])
                if cached is not None:
                    total = len(cached) + sum(1 for label in names if label not in cached)
                else:
                    total = c.execute("SELECT count(*) FROM marks WHERE session = ?",
                                      (session,)).fetchone()[0]
                if total > self.max_labels:
                    raise StateError(f"session {session} would hold more than "
                                     f"{self.max_labels} mark labels; refusing rather than "
                                     "forgetting one")
                c.execute(_ACTIVE, (session, now, now))
            if cached is not None:
                new = cached.copy()               # a dict copy, at C speed
                for label in names:
                    last = new.get(label)
                    new[label] = now if last is None or now > last else last
                self._cache_marks(session, MappingProxyType(new))

    def marks(self, session: str) -> Mapping[str, float]:
        if not self.shared:
            # Fast path, no lock: snapshots are immutable and replaced whole, and each
            # OrderedDict call is atomic (a concurrent eviction only costs a reload).
            snapshot = self._marks.get(session)
            if snapshot is not None:
                if self._db.conn is None:
                    self._check_open()
                try:  # noqa: SIM105 -- hot path: suppress() builds an object per call
                    self._marks.move_to_end(session)
                except KeyError:
                    pass
                return snapshot
        check_session(session)
        with self._lock:
            self._sync()
            snapshot = self._marks.get(session)
            if snapshot is not None:
                self._marks.move_to_end(session)
                return snapshot
            with self._db.read("marks") as c:
                rows = c.execute("SELECT label, last FROM marks WHERE session = ?",
                                 (session,)).fetchall()
            snapshot = MappingProxyType(dict(rows)) if rows else EMPTY
            self._cache_marks(session, snapshot)
            return snapshot

    def mark_counts(self, session: str) -> Mapping[str, int]:
        check_session(session)
        with self._db.read("mark counts") as c:
            return dict(c.execute("SELECT label, count FROM marks WHERE session = ?",
                                  (session,)))

    # --- events ---------------------------------------------------------------------------

    def append_event(self, session: str, event: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(event)
        now = check_time(now)
        with self._db.write("append event") as c:
            seq = c.execute("INSERT INTO events(session, at, data) VALUES(?, ?, ?) "
                            "RETURNING seq", (session, now, text)).fetchone()[0]
            c.execute(_ACTIVE, (session, now, now))
            n = c.execute("UPDATE sessions SET n_events = n_events + 1 WHERE session = ? "
                          "RETURNING n_events", (session,)).fetchone()[0]
            if n > self.max_events:
                c.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events "
                          "WHERE session = ? ORDER BY seq LIMIT ?)",
                          (session, n - self.max_events))
                c.execute("UPDATE sessions SET n_events = ? WHERE session = ?",
                          (self.max_events, session))
        return int(seq)

    def events(self, session: str, limit: int = 100) -> list[Event]:
        check_session(session)
        limit = min(check_limit_arg(limit), self.max_events)
        with self._db.read("events") as c:
            rows = c.execute("SELECT seq, at, data FROM events WHERE session = ? "
                             "ORDER BY seq DESC LIMIT ?", (session, limit)).fetchall()
        return [Event(seq, at, json.loads(data)) for seq, at, data in reversed(rows)]

    # --- budgets --------------------------------------------------------------------------

    def consume(self, key: BudgetKey, amount: float, limit: float,
                window_seconds: float | None, now: float) -> BudgetResult:
        units = to_units(amount)
        cap = check_limit(limit)
        now = check_time(now)
        w = window_of(window_seconds, now)
        pk = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._db.write("consume budget") as c:
            row = c.execute("SELECT used FROM budgets WHERE budget_id = ? AND scope = ? AND "
                            "scope_value = ? AND window = ? AND idx = ?", pk).fetchone()
            used = row[0] if row else 0
            ok = used + units <= cap
            if ok and units:
                c.execute("INSERT INTO budgets(budget_id, scope, scope_value, window, idx, "
                          "used, ends) VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                          "SET used = used + excluded.used", (*pk, units, w.end))
        after = used + units if ok else used
        return BudgetResult(ok, from_units(used), from_units(after), from_units(cap),
                            w.start, w.end)

    def release(self, key: BudgetKey, amount: float, window_seconds: float | None,
                now: float) -> float:
        units = to_units(amount)
        now = check_time(now)
        w = window_of(window_seconds, now)
        pk = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._db.write("release budget") as c:
            row = c.execute("UPDATE budgets SET used = max(0, used - ?) WHERE budget_id = ? "
                            "AND scope = ? AND scope_value = ? AND window = ? AND idx = ? "
                            "RETURNING used", (units, *pk)).fetchone()
        return from_units(row[0]) if row else 0.0

    def budget_used(self, key: BudgetKey, window_seconds: float | None, now: float) -> float:
        now = check_time(now)
        w = window_of(window_seconds, now)
        pk = (key.budget_id, key.scope.value, key.scope_value, w.length, w.index)
        with self._db.read("budget used") as c:
            row = c.execute("SELECT used FROM budgets WHERE budget_id = ? AND scope = ? AND "
                            "scope_value = ? AND window = ? AND idx = ?", pk).fetchone()
        return from_units(row[0]) if row else 0.0

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
        with self._db.write("remember values") as c:
            c.executemany(
                "INSERT INTO provenance(session, digest, source, at, expires, strong) "
                "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(session, digest) DO UPDATE SET "
                "source = excluded.source, at = excluded.at, expires = excluded.expires, "
                "strong = excluded.strong",
                [(session, digest, source, now, expires, int(strong))
                 for digest, strong in items.values()])
            total = c.execute("SELECT count(*) FROM provenance WHERE session = ?",
                              (session,)).fetchone()[0]
            excess = max(0, total - self.max_values)
            if excess:
                c.execute("DELETE FROM provenance WHERE session = ? AND digest IN ("
                          "SELECT digest FROM provenance WHERE session = ? "
                          "ORDER BY strong, at LIMIT ?)", (session, session, excess))
            c.execute(_ACTIVE, (session, now, now))
        return excess

    def seen(self, session: str, values: Iterable[str],
             now: float | None = None) -> dict[str, str]:
        check_session(session)
        now = time.time() if now is None else check_time(now)
        wanted = normalized_digests(values, kinds=False)
        if not wanted:
            return {}
        by_digest = {digest: value for value, (digest, _) in wanted.items()}
        digests = list(by_digest)
        out: dict[str, str] = {}
        with self._db.read("seen values") as c:
            for i in range(0, len(digests), _CHUNK):
                chunk = digests[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for digest, source, expires in c.execute(
                        f"SELECT digest, source, expires FROM provenance WHERE session = ? "
                        f"AND digest IN ({marks})", (session, *chunk)):
                    if expires is None or expires > now:
                        out[by_digest[bytes(digest)]] = source
        return out

    # --- compensation journal ------------------------------------------------------------

    def journal_add(self, session: str, entry: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(entry)
        now = check_time(now)
        with self._db.write("journal add") as c:
            held = c.execute("SELECT count(*) FROM journal WHERE session = ?",
                             (session,)).fetchone()[0]
            if held >= self.max_journal:
                raise StateError(f"session {session} already journals {self.max_journal} "
                                 "compensations; refusing rather than dropping one")
            seq = c.execute("INSERT INTO journal(session, at, data) VALUES(?, ?, ?) "
                            "RETURNING seq", (session, now, text)).fetchone()[0]
            c.execute(_ACTIVE, (session, now, now))
        return int(seq)

    def journal_update(self, session: str, seq: int, entry: Mapping[str, Any]) -> bool:
        check_session(session)
        check_seq(seq)
        text = encode_event(entry)
        with self._db.write("journal update") as c:
            return c.execute("UPDATE journal SET data = ? WHERE seq = ? AND session = ?",
                             (text, seq, session)).rowcount == 1

    def journal(self, session: str) -> list[Event]:
        check_session(session)
        with self._db.read("journal") as c:
            rows = c.execute("SELECT seq, at, data FROM journal WHERE session = ? "
                             "ORDER BY seq", (session,)).fetchall()
        return [Event(seq, at, json.loads(data)) for seq, at, data in rows]

    def journal_take(self, session: str) -> list[Event]:
        check_session(session)
        # One write transaction: another connection (process) deleting the same rows
        # waits for it and then finds none.
        with self._db.write("journal take") as c:
            rows = c.execute("DELETE FROM journal WHERE session = ? RETURNING seq, at, data",
                             (session,)).fetchall()
        return [Event(seq, at, json.loads(data)) for seq, at, data in sorted(rows)]

    def journal_sessions(self) -> list[str]:
        with self._db.read("journal sessions") as c:
            return [row[0] for row in c.execute(
                "SELECT DISTINCT session FROM journal ORDER BY session")]

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, now: float, idle_seconds: float) -> int:
        now = check_time(now)
        cutoff = now - check_time(idle_seconds, "idle_seconds")
        idle = ("SELECT session FROM sessions WHERE last_seen < ? AND NOT EXISTS ("
                "SELECT 1 FROM kills WHERE target = 's:' || sessions.session)")
        with self._lock:
            with self._db.write("purge") as c:
                removed = 0
                for table in ("marks", "events", "provenance"):
                    c.execute(f"DELETE FROM {table} WHERE session IN ({idle})", (cutoff,))
                removed += c.execute(
                    f"DELETE FROM budgets WHERE scope = ? AND scope_value IN ({idle})",
                    (Scope.SESSION.value, cutoff)).rowcount
                removed += c.execute(f"DELETE FROM sessions WHERE session IN ({idle})",
                                     (cutoff,)).rowcount
                removed += c.execute("DELETE FROM provenance WHERE expires IS NOT NULL "
                                     "AND expires <= ?", (now,)).rowcount
                removed += c.execute("DELETE FROM budgets WHERE ends IS NOT NULL "
                                     "AND ends <= ?", (now,)).rowcount
            self._marks.clear()
            self._touched.clear()
        return removed

    def close(self) -> None:
        with self._lock:
            self._marks.clear()
            self._touched.clear()
            self._db.close()
