"""``SqliteStore`` specifics: persistence, WAL, the cache and its consistency model,
failures as ``StateError``."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from proxy.errors import GovernanceError
from proxy.state import (
    BudgetKey,
    MemoryStore,
    SqliteStore,
    StateError,
    open_store,
    session_key,
)

P = "c" * 64
S = session_key(P, "mcp-1")
IBAN = "DE89 3704 0044 0532 0130 00"


def test_state_survives_reopening_the_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    store.touch(S, P, 10.0)
    store.mark(S, ["read:customer_pii", "after:r1"], 11.0)
    store.mark(S, ["after:r1"], 12.0)
    store.append_event(S, {"tool": "get_customer"}, 11.0)
    assert store.consume(BudgetKey.session("refunds", S), 600, 1000, None, 11.0).ok
    assert store.consume(BudgetKey.principal("calls", P), 3, 3, 60, 11.0).ok
    store.remember(S, [IBAN], "mcp:bank/get_transactions", 11.0)
    store.kill(session_key(P, "other"), "operator", 13.0)
    store.kill_principal("d" * 64, "token leaked", 13.0)
    store.close()

    again = SqliteStore(db)
    assert dict(again.marks(S)) == {"read:customer_pii": 11.0, "after:r1": 12.0}
    assert dict(again.mark_counts(S)) == {"read:customer_pii": 1, "after:r1": 2}
    assert [e.data for e in again.events(S)] == [{"tool": "get_customer"}]
    refused = again.consume(BudgetKey.session("refunds", S), 500, 1000, None, 20.0)
    assert not refused.ok and refused.used_before == 600.0
    assert not again.consume(BudgetKey.principal("calls", P), 1, 3, 60, 20.0).ok
    assert again.seen(S, [IBAN], now=20.0) == {
        "DE89370400440532013000": "mcp:bank/get_transactions"}
    assert again.killed(session_key(P, "other")) == "operator"
    assert again.killed(session_key("d" * 64, "x"), "d" * 64) == "token leaked"
    assert {s.session for s in again.list_sessions()} == {S, session_key(P, "other")}
    again.close()


def test_file_uses_wal_and_durable_asks_for_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "a.db")
    assert store.journal_mode == "wal"
    store.close()
    durable = SqliteStore(tmp_path / "b.db", durable=True)
    assert durable._db.conn is not None
    assert durable._db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    durable.close()


def test_values_are_stored_as_digests_not_in_clear(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    store.remember(S, [IBAN, "victim.secret@example.com"], "src", 1.0)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"DE89370400440532013000" not in raw
    assert b"victim.secret" not in raw


def test_shared_mode_sees_other_processes_writes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    a = SqliteStore(db, shared=True)
    b = SqliteStore(db, shared=True)        # another connection: as another process would
    assert dict(a.marks(S)) == {}           # cached (empty)
    assert a.killed(S) is None
    b.mark(S, ["untrusted_content"], 5.0)
    b.kill(S, "operator", 6.0)
    assert dict(a.marks(S)) == {"untrusted_content": 5.0}
    assert a.killed(S) == "operator"
    a.mark(S, ["read:customer_pii"], 7.0)   # a's write-through merges with b's write
    assert dict(a.marks(S)) == {"untrusted_content": 5.0, "read:customer_pii": 7.0}
    assert dict(b.marks(S)) == {"untrusted_content": 5.0, "read:customer_pii": 7.0}
    a.close()
    b.close()


def test_unshared_mode_trusts_its_cache(tmp_path: Path) -> None:
    """The documented model: without ``shared=True`` a second writer on the same file is
    not seen by a cached read (one process per file, or shared mode, or Redis)."""
    db = tmp_path / "state.db"
    a = SqliteStore(db)
    b = SqliteStore(db)
    assert dict(a.marks(S)) == {}
    b.mark(S, ["untrusted_content"], 5.0)
    assert dict(a.marks(S)) == {}                       # stale by design
    fresh = SqliteStore(db)
    assert dict(fresh.marks(S)) == {"untrusted_content": 5.0}
    fresh.close()
    # budgets never go through the cache: exact either way
    assert b.consume(BudgetKey.global_("g"), 10, 10, None, 1.0).ok
    assert not a.consume(BudgetKey.global_("g"), 1, 10, None, 1.0).ok
    a.close()
    b.close()


def test_marks_cache_is_bounded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", cache_sessions=3)
    for i in range(10):
        store.mark(f"s{i}", ["x"], float(i))
        assert dict(store.marks(f"s{i}")) == {"x": float(i)}
    assert len(store._marks) == 3
    assert dict(store.marks("s0")) == {"x": 0.0}       # evicted, read back from the file
    store.close()


def test_touch_is_debounced(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", touch_interval=1.0)
    store.touch(S, P, 10.0)
    store.touch(S, P, 10.5)                             # within the interval: no write
    assert store.list_sessions()[0].last_seen == 10.0
    store.touch(S, P, 11.5)
    assert store.list_sessions()[0].last_seen == 11.5
    store.close()


def test_a_locked_database_is_a_state_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db, busy_timeout=0.05)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateError, match="locked") as e:
            store.consume(BudgetKey.global_("g"), 1, 10, None, 1.0)
        assert isinstance(e.value, GovernanceError)
        with pytest.raises(StateError):
            store.mark(S, ["x"], 1.0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.consume(BudgetKey.global_("g"), 1, 10, None, 1.0).ok   # recovers by itself
    assert dict(store.marks(S)) == {}                       # the failed mark left nothing
    store.close()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StateError, match=str(db)):
        SqliteStore(db)


def test_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        SqliteStore(tmp_path / "nope" / "state.db")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema:state'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer"):
        SqliteStore(db)


def test_open_store_specs(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    for spec in (":memory:", "sqlite::memory:", "sqlite://"):
        store = open_store(spec)
        assert isinstance(store, SqliteStore) and store.path == ":memory:"
        store.close()
    for spec in (str(tmp_path / "a.db"), f"sqlite:{tmp_path}/b.db", f"sqlite://{tmp_path}/c.db"):
        store = open_store(spec, shared=True)
        assert isinstance(store, SqliteStore) and store.shared and store.journal_mode == "wal"
        store.close()
    with socket.socket() as s:  # a port nothing listens on: an unreachable Redis
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(StateError, match="Redis"):
        open_store(f"redis://127.0.0.1:{free}/0")
    with pytest.raises(StateError):
        open_store("  ")
