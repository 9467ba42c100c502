"""What the per-decision session context costs ``SqliteStore`` in SQL: ``touch`` is debounced
(at most one write per ``touch_interval`` per session), ``killed`` and ``marks`` are served
from the process's caches. Counted with ``sqlite3.Connection.set_trace_callback`` (every
statement SQLite runs on the store's connection), not timed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.state import SqliteStore
from proxy.state.session import session_key

P = "a" * 64
S = session_key(P, "conversation-1")
S2 = session_key(P, "conversation-2")
T0 = 1_000_000.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE")


class Trace:
    def __init__(self, store: SqliteStore) -> None:
        self.statements: list[str] = []
        conn = store._db.conn
        assert conn is not None
        conn.set_trace_callback(self.statements.append)

    @property
    def writes(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(_WRITES)]

    def begins(self) -> int:
        return sum(1 for s in self.statements if s.strip().upper() == "BEGIN IMMEDIATE")

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture(params=["memory", "file", "shared"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "state.db"
    s = SqliteStore(path, shared=request.param == "shared", touch_interval=1.0)
    yield s
    s.close()


def _last_seen(store: SqliteStore, session: str) -> float:
    return {i.session: i.last_seen for i in store.list_sessions()}[session]


def test_a_thousand_touches_within_a_second_write_at_most_twice(store: SqliteStore) -> None:
    trace = Trace(store)
    times = [T0 + i * 0.0009 for i in range(1000)]       # 0 .. 0.8991 s
    for t in times:
        store.touch(S, P, t)
    assert trace.begins() <= 2
    assert 1 <= sum(1 for s in trace.writes if "INTO sessions" in s) <= 2
    assert _last_seen(store, S) >= times[-1] - store.touch_interval   # the documented lag


def test_a_touch_after_the_interval_writes_again(store: SqliteStore) -> None:
    store.touch(S, P, T0)
    trace = Trace(store)
    store.touch(S, P, T0 + 0.5)
    assert trace.writes == []
    assert _last_seen(store, S) == T0                    # lags, by less than the interval
    trace.clear()
    store.touch(S, P, T0 + 1.5)
    assert trace.begins() == 1
    assert _last_seen(store, S) == T0 + 1.5
    trace.clear()
    store.touch(S, P, T0 + 1.6)                          # debounced again from the new write
    assert trace.writes == []


def test_new_sessions_principals_and_earlier_times_are_written_at_once(
        store: SqliteStore) -> None:
    store.touch(S, P, T0)
    trace = Trace(store)
    store.touch(S2, P, T0 + 0.1)                         # a new session
    assert trace.begins() == 1
    trace.clear()
    store.touch(S, "b" * 64, T0 + 0.2)                   # another principal
    assert trace.begins() == 1
    trace.clear()
    store.touch(S, "b" * 64, T0 - 5.0)                   # earlier: may move first_seen
    assert trace.begins() == 1
    info = {i.session: i for i in store.list_sessions()}
    assert (info[S].principal, info[S].first_seen, info[S].last_seen) == (
        "b" * 64, T0 - 5.0, T0 + 0.2)
    assert info[S2].last_seen == T0 + 0.1


def test_the_fast_path_still_validates(store: SqliteStore) -> None:
    store.touch(S, P, T0)
    trace = Trace(store)
    for bad in (math.nan, math.inf, -math.inf, True, "1"):
        with pytest.raises(ValueError):
            store.touch(S, P, bad)                       # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.touch(S, "", T0 + 0.1)
    assert trace.writes == []
    store.touch(S, P, int(T0) + 1)                       # an int time is a time
    assert _last_seen(store, S) == T0 + 1


def test_purge_forgets_what_was_written(store: SqliteStore) -> None:
    store.touch(S, P, T0)
    store.purge(now=T0 + 100.0, idle_seconds=10.0)
    assert store.list_sessions() == []
    store.touch(S, P, T0 + 0.5)          # the row is gone: written again, not debounced
    assert _last_seen(store, S) == T0 + 0.5


def test_killed_and_marks_run_no_sql(store: SqliteStore) -> None:
    whole = "principal-" + P
    store.touch(S, P, T0)
    store.mark(S, ["read:private"], T0)
    store.mark(whole, ["read:mail"], T0)
    store.marks(S)
    store.marks(whole)                                   # first reads fill the cache
    trace = Trace(store)
    for i in range(1000):                                # what _with_session does
        store.touch(S, P, T0 + i * 0.0005)
        assert store.killed(S, P) is None
        marks = dict(store.marks(whole))
        marks.update(store.marks(S))
    assert marks == {"read:private": T0, "read:mail": T0}
    # shared=True asks SQLite whether another process committed (a read), nothing else
    assert [s for s in trace.statements if s != "PRAGMA data_version"] == []


def test_another_process_writing_does_not_undo_the_debounce(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    a = SqliteStore(db, shared=True)
    b = SqliteStore(db, shared=True)                     # another connection: another process
    try:
        a.touch(S, P, T0)
        b.touch(S2, P, T0)
        trace = Trace(a)
        for i in range(100):
            b.touch(S2, P, T0 + 2.0 * (i + 1))          # b writes every time
            assert a.killed(S, P) is None               # a notices, drops its caches
            a.touch(S, P, T0 + 0.001 * (i + 1))         # but still does not write
        assert trace.writes == []
        b.kill(S, "operator", T0 + 1.0)
        assert a.killed(S, P) == "operator"             # kills stay exact across processes
    finally:
        a.close()
        b.close()
