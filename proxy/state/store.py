"""The state interface: one ``StateStore`` protocol, its value types and the argument rules
every backend shares.

Every operation is one atomic step of the backend — one SQLite transaction, one Redis
command or Lua script — so callers never read, compute and write back: ``consume``
checks and adds in one step, ``mark`` keeps the later time in one step, ``remember``
inserts and evicts in one step. Backends:

* ``MemoryStore`` (``memory.py``): one process, nothing persisted; tests and benchmarks.
* ``SqliteStore`` (``sqlite.py``): the embedded default; one file, WAL, exact across
  threads and across processes sharing the file.
* a Redis backend (scale-out, several replicas) implements the same protocol later and
  runs the same contract suite (``tests/proxy/state/test_contract.py``).

Times are seconds (``time.time()`` style floats) passed in by the caller, so decisions
and tests are deterministic; no backend reads the clock except where a method says so.

Argument errors raise ``ValueError``; backend failures raise ``StateError``. The gateway
denies on either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

# --- bounds (per session unless said otherwise) -----------------------------------------

MAX_KEY_CHARS = 256          # session keys, labels, budget ids, sources
MAX_LABELS = 65_536          # distinct mark labels; one more raises StateError (never evicts)
MAX_EVENTS = 1_000           # events kept; older ones are dropped
MAX_EVENT_BYTES = 65_536     # one event, as compact JSON
MAX_VALUES = 10_000          # provenance values; plain text evicted before identifiers
MAX_REASON_CHARS = 2_000     # kill reasons
MAX_JOURNAL = 1_000          # compensations journaled; one more raises StateError (never drops)

# Budget arithmetic is fixed point: amounts are counted in millionths, as integers, so
# sums are exact (0.1 + 0.2 == 0.3) in SQLite and in Redis (INCRBY; Lua numbers are
# doubles, exact up to 2**53).
UNITS_PER_ONE = 1_000_000
MAX_UNITS = 2**53 - 1
MAX_AMOUNT = MAX_UNITS / UNITS_PER_ONE   # about 9.0e9


class Scope(StrEnum):
    SESSION = "session"
    PRINCIPAL = "principal"
    GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class BudgetKey:
    """Which counter a budget charges: ``budget_id`` (the policy's budget) per ``scope``.

    ``scope_value`` is the session key (``session``), the principal digest
    (``principal``) or ``""`` (``global``: one counter for everything).
    """

    budget_id: str
    scope: Scope
    scope_value: str = ""

    def __post_init__(self) -> None:
        _check_name(self.budget_id, "budget id")
        try:
            scope = Scope(self.scope)
        except ValueError:
            raise ValueError(f"budget scope must be one of session, principal, global; "
                             f"got {self.scope!r}") from None
        object.__setattr__(self, "scope", scope)
        if not isinstance(self.scope_value, str):
            raise ValueError("budget scope value must be a string")
        if scope is Scope.GLOBAL:
            if self.scope_value:
                raise ValueError("a global budget has no scope value")
        else:
            _check_name(self.scope_value, f"{scope.value} budget scope value")

    @classmethod
    def session(cls, budget_id: str, session: str) -> BudgetKey:
        return cls(budget_id, Scope.SESSION, session)

    @classmethod
    def principal(cls, budget_id: str, principal_digest: str) -> BudgetKey:
        return cls(budget_id, Scope.PRINCIPAL, principal_digest)

    @classmethod
    def global_(cls, budget_id: str) -> BudgetKey:
        return cls(budget_id, Scope.GLOBAL, "")

    def __str__(self) -> str:
        tail = f":{self.scope_value}" if self.scope_value else ""
        return f"{self.budget_id}@{self.scope.value}{tail}"


@dataclass(frozen=True, slots=True)
class BudgetResult:
    """What ``consume`` did. Refused (``ok`` false): nothing changed, ``used_after`` equals
    ``used_before``. ``window_start``/``window_end``: the fixed window charged (``None``
    without a window) — ``window_end`` is when a refused caller may try again."""

    ok: bool
    used_before: float
    used_after: float
    limit: float
    window_start: float | None = None
    window_end: float | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, round(self.limit - self.used_after, 6))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "used_before": self.used_before, "used_after": self.used_after,
                "limit": self.limit, "window_start": self.window_start,
                "window_end": self.window_end}


@dataclass(frozen=True, slots=True)
class Event:
    """One appended event: ``seq`` grows with every append in the store (across sessions)."""

    seq: int
    at: float
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session: str
    principal: str | None        # None: written to, but never ``touch``ed
    first_seen: float
    last_seen: float
    killed: str | None = None    # the kill reason (the session's own kill)
    killed_at: float | None = None


@runtime_checkable
class StateStore(Protocol):
    """Session state. Thread-safe; every method is atomic on its own."""

    # --- sessions and the kill switch -------------------------------------------------

    def touch(self, session: str, principal_digest: str, now: float) -> None:
        """Record activity (``last_seen = max(last_seen, now)``) and the session's principal.
        Every other write records activity too, without the principal."""
        ...

    def list_sessions(self, active_since: float = -math.inf) -> list[SessionInfo]:
        """Sessions whose ``last_seen >= active_since``, most recent first; killed ones are
        listed whatever their activity."""
        ...

    def kill(self, session: str, reason: str, now: float) -> None:
        """Kill a session: from now on ``killed(session)`` returns ``reason``. Idempotent;
        the first reason is kept."""
        ...

    def kill_principal(self, principal_digest: str, reason: str, now: float) -> None:
        """Kill every session of a principal, present and future (a new session id does not
        escape it): ``killed(s, principal_digest)`` returns ``reason``."""
        ...

    def killed(self, session: str, principal_digest: str | None = None) -> str | None:
        """The kill reason of the session, or of its principal when given; ``None``: alive."""
        ...

    # --- marks: labels with the last time seen ----------------------------------------

    def mark(self, session: str, labels: Iterable[str], now: float) -> None:
        """For each label: ``last = max(last, now)``, ``count += 1``. Raises ``StateError``
        rather than forget a label when the session holds ``MAX_LABELS`` already."""
        ...

    def marks(self, session: str) -> Mapping[str, float]:
        """Snapshot label → last time. Immutable: later marks do not change it. Cheap: a
        backend keeps it in a cache (``SqliteStore``: a dict lookup)."""
        ...

    def mark_counts(self, session: str) -> Mapping[str, int]:
        """Label → how many times it was marked (not cached: for evidence and debugging)."""
        ...

    # --- events -------------------------------------------------------------------------

    def append_event(self, session: str, event: Mapping[str, Any], now: float) -> int:
        """Append a JSON-serializable event (``ValueError`` if not, or over
        ``MAX_EVENT_BYTES``); returns its ``seq``. Keeps the last ``MAX_EVENTS``."""
        ...

    def events(self, session: str, limit: int = 100) -> list[Event]:
        """The last ``limit`` events, oldest first. ``data`` is a fresh copy."""
        ...

    # --- budgets ------------------------------------------------------------------------

    def consume(self, key: BudgetKey, amount: float, limit: float,
                window_seconds: float | None, now: float) -> BudgetResult:
        """Atomically add ``amount`` to the counter of ``key`` in the fixed window holding
        ``now`` (``floor(now / window_seconds)``; ``None``: one window forever) if
        ``used + amount <= limit``; else refuse and change nothing. ``amount`` and
        ``limit``: finite, ``0 <= x <= MAX_AMOUNT``, else ``ValueError``; counted in
        millionths (amounts below 0.000001 round to 0)."""
        ...

    def release(self, key: BudgetKey, amount: float, window_seconds: float | None,
                now: float) -> float:
        """Give back ``amount`` taken by ``consume`` (the call was later refused or failed).
        ``window_seconds`` and ``now``: the values given to that ``consume`` — the amount
        returns to the window it was taken from. Never below zero. Returns ``used``."""
        ...

    def budget_used(self, key: BudgetKey, window_seconds: float | None, now: float) -> float:
        """What the window holding ``now`` has used (read only: for display, never for a
        check-then-act — use ``consume``)."""
        ...

    # --- provenance -----------------------------------------------------------------------

    def remember(self, session: str, values: Iterable[str], source: str, now: float,
                 ttl: float | None = None) -> int:
        """Remember values seen in untrusted output (normalized with ``normalize_value``;
        values that normalize to ``None`` are skipped) with their ``source``. A value seen
        again takes the new source and time. Over ``MAX_VALUES``: the oldest plain-text
        values are evicted first, identifiers (IBAN, e-mail, URL, number) last. ``ttl``:
        seconds until forgotten (``None``: kept until evicted or purged). Returns how many
        values were evicted (the caller may mark the session so policy can see it)."""
        ...

    def seen(self, session: str, values: Iterable[str],
             now: float | None = None) -> dict[str, str]:
        """Normalized value → source, for the given values that were remembered and have
        not expired at ``now`` (``None``: ``time.time()``)."""
        ...

    # --- compensation journal ----------------------------------------------------------
    # What the proxy must undo when the session is rolled back: one JSON entry per
    # side-effecting call (``proxy/rollback.py`` owns the entry format). Entries are never
    # dropped to make room (``StateError`` past ``MAX_JOURNAL``), ``purge`` keeps them, and
    # ``journal_take`` hands each one out exactly once, whatever the number of callers,
    # threads, processes or replicas.

    def journal_add(self, session: str, entry: Mapping[str, Any], now: float) -> int:
        """Append a JSON-serializable entry (``ValueError`` if not, or over
        ``MAX_EVENT_BYTES``); returns its ``seq``, unique in the store and growing."""
        ...

    def journal_update(self, session: str, seq: int, entry: Mapping[str, Any]) -> bool:
        """Replace the data of entry ``seq`` while it is still journaled (its time and
        place stay). ``False``: it was taken already (or never existed)."""
        ...

    def journal(self, session: str) -> list[Event]:
        """The session's journaled entries, oldest first (read only)."""
        ...

    def journal_take(self, session: str) -> list[Event]:
        """Atomically remove and return every entry of the session, oldest first: of
        concurrent callers, one gets each entry and the others get none of it."""
        ...

    def journal_sessions(self) -> list[str]:
        """Sessions that hold journaled entries (sorted)."""
        ...

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, now: float, idle_seconds: float) -> int:
        """Delete sessions idle since ``now - idle_seconds`` (not killed ones) with their
        marks, events and values; expired values; budget windows that have ended. Returns
        how many rows went. Backends with expiring keys (Redis) may do nothing."""
        ...

    def close(self) -> None:
        """Release the backend; further calls raise ``StateError``."""
        ...


# --- argument rules shared by the backends ------------------------------------------------


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_KEY_CHARS:
        raise ValueError(f"{what} is longer than {MAX_KEY_CHARS} characters")
    _check_text(value, what)
    return value


def _check_text(value: str, what: str) -> None:
    """Text a backend can store: valid Unicode (no lone surrogates)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not valid Unicode text") from None


def check_session(session: object) -> str:
    return _check_name(session, "session key")


def check_principal(principal: object) -> str:
    return _check_name(principal, "principal digest")


def check_source(source: object) -> str:
    return _check_name(source, "provenance source")


def check_labels(labels: Iterable[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise ValueError("labels must be an iterable of strings, not one string")
    out = dict.fromkeys(_check_name(label, "label") for label in labels)
    return tuple(out)


def check_time(now: object, what: str = "now") -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"{what} must be a finite number of seconds, got {now!r}")
    return float(now)


def check_duration(value: object, what: str) -> float | None:
    if value is None:
        return None
    seconds = check_time(value, what)
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a kill needs a reason")
    reason = reason[:MAX_REASON_CHARS]
    _check_text(reason, "kill reason")
    return reason


def check_limit(limit: object) -> int:
    return to_units(limit, "limit")


def to_units(value: object, what: str = "amount") -> int:
    """A finite non-negative number → integer millionths; anything else → ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    if value > MAX_AMOUNT:
        raise ValueError(f"{what} {value!r} is over {MAX_AMOUNT:.6g}, the most a budget counts")
    units = value * UNITS_PER_ONE if isinstance(value, int) else round(value * UNITS_PER_ONE)
    return min(int(units), MAX_UNITS)


def from_units(units: int) -> float:
    return units / UNITS_PER_ONE


@dataclass(frozen=True, slots=True)
class Window:
    """The fixed window a budget call falls in. ``length`` 0: no window (``index`` 0)."""

    length: float
    index: int

    @property
    def start(self) -> float | None:
        return self.index * self.length if self.length else None

    @property
    def end(self) -> float | None:
        return (self.index + 1) * self.length if self.length else None


def window_of(window_seconds: object, now: float) -> Window:
    length = check_duration(window_seconds, "window_seconds")
    if length is None:
        return Window(0.0, 0)
    return Window(length, math.floor(now / length))


def encode_event(event: object) -> str:
    if not isinstance(event, Mapping):
        raise ValueError("an event must be a mapping")
    try:
        # ensure_ascii: lone surrogates (from invalid UTF-8 upstream) become \\u escapes
        text = json.dumps(event, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"an event must be JSON-serializable: {e}") from None
    if len(text) > MAX_EVENT_BYTES:
        raise ValueError(f"an event must be at most {MAX_EVENT_BYTES} bytes as JSON")
    return text


def check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"a journal seq must be a positive integer, got {seq!r}")
    return seq


def check_limit_arg(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    return min(limit, MAX_EVENTS)
