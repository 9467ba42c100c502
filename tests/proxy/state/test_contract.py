"""The ``StateStore`` contract: every backend (``conftest.BACKENDS``) passes all of it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from proxy.errors import GovernanceError
from proxy.state import (
    BudgetKey,
    Scope,
    StateError,
    StateStore,
    session_key,
)
from proxy.state.store import MAX_AMOUNT, MAX_EVENT_BYTES

Factory = Callable[..., StateStore]

S1 = session_key("a" * 64, "mcp-1")
S2 = session_key("a" * 64, "mcp-2")
P = "a" * 64
ATTACKER_IBAN = "DE89 3704 0044 0532 0130 00"
PAYEE_IBAN = "GB82 WEST 1234 5698 7654 32"


def test_backends_implement_the_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)
    assert issubclass(StateError, GovernanceError)


# --- sessions and the kill switch ---------------------------------------------------------


def test_touch_records_principal_and_activity(store: StateStore) -> None:
    store.touch(S1, P, 100.0)
    store.touch(S1, P, 90.0)        # an older time never moves last_seen back
    store.touch(S2, "b" * 64, 120.0)
    sessions = store.list_sessions()
    assert [s.session for s in sessions] == [S2, S1]            # most recent first
    one = sessions[1]
    assert (one.principal, one.first_seen, one.last_seen, one.killed) == (P, 90.0, 100.0, None)
    assert [s.session for s in store.list_sessions(active_since=110.0)] == [S2]


def test_any_write_is_activity(store: StateStore) -> None:
    store.mark(S1, ["x"], 5.0)
    store.append_event(S2, {"e": 1}, 7.0)
    got = {s.session: s for s in store.list_sessions()}
    assert got[S1].principal is None and got[S1].last_seen == 5.0
    assert got[S2].last_seen == 7.0
    store.touch(S1, P, 6.0)
    assert {s.session: s for s in store.list_sessions()}[S1].principal == P


def test_kill_switch(store: StateStore) -> None:
    store.touch(S1, P, 1.0)
    assert store.killed(S1) is None
    store.kill(S1, "operator: runaway refunds", 2.0)
    store.kill(S1, "second reason", 3.0)                        # idempotent, first reason kept
    assert store.killed(S1) == "operator: runaway refunds"
    assert store.killed(S1, P) == "operator: runaway refunds"
    assert store.killed(S2) is None
    info = {s.session: s for s in store.list_sessions(active_since=1000.0)}
    assert info[S1].killed == "operator: runaway refunds"      # listed whatever its age
    assert info[S1].killed_at == 2.0


def test_kill_an_unknown_session_lists_it(store: StateStore) -> None:
    store.kill(S2, "pre-emptive", 4.0)
    assert store.killed(S2) == "pre-emptive"
    assert [s.session for s in store.list_sessions()] == [S2]


def test_kill_principal_reaches_every_session_of_it(store: StateStore) -> None:
    store.kill_principal(P, "token leaked", 1.0)
    fresh = session_key(P, "a-new-session-the-agent-just-made-up")
    assert store.killed(fresh, P) == "token leaked"
    assert store.killed(S1, P) == "token leaked"
    assert store.killed(S1, "b" * 64) is None
    assert store.killed(S1) is None                 # the principal is needed to see it


@pytest.mark.parametrize("reason", ["", "   ", None, "bad\udc80"])
def test_kill_needs_a_reason(store: StateStore, reason: Any) -> None:
    with pytest.raises(ValueError):
        store.kill(S1, reason, 1.0)
    assert store.killed(S1) is None


# --- marks --------------------------------------------------------------------------------


def test_marks_keep_the_last_time_and_count(store: StateStore) -> None:
    assert dict(store.marks(S1)) == {}
    store.mark(S1, ["read:customer_pii", "untrusted_content"], 10.0)
    store.mark(S1, ["read:customer_pii"], 20.0)
    store.mark(S1, ["read:customer_pii"], 15.0)            # late arrival: the later time stays
    assert dict(store.marks(S1)) == {"read:customer_pii": 20.0, "untrusted_content": 10.0}
    assert dict(store.mark_counts(S1)) == {"read:customer_pii": 3, "untrusted_content": 1}
    assert dict(store.marks(S2)) == {}


def test_a_label_twice_in_one_call_counts_once(store: StateStore) -> None:
    store.mark(S1, ["a", "a", "b"], 1.0)
    assert dict(store.mark_counts(S1)) == {"a": 1, "b": 1}


def test_marks_snapshot_is_immutable(store: StateStore) -> None:
    store.mark(S1, ["after:r1"], 1.0)
    snapshot = store.marks(S1)
    store.mark(S1, ["after:r1", "after:r2"], 2.0)
    assert dict(snapshot) == {"after:r1": 1.0}
    assert dict(store.marks(S1)) == {"after:r1": 2.0, "after:r2": 2.0}
    with pytest.raises(TypeError):
        snapshot["x"] = 1.0  # type: ignore[index]


def test_marks_snapshot_read_twice_is_the_same_object(store: StateStore) -> None:
    store.mark(S1, ["x"], 1.0)
    assert store.marks(S1) is store.marks(S1)      # cached: no copy per read


@pytest.mark.parametrize("labels", ["one-string", [""], [1], ["x" * 300], ["bad\udc80"]])
def test_bad_labels_are_refused(store: StateStore, labels: Any) -> None:
    with pytest.raises(ValueError):
        store.mark(S1, labels, 1.0)
    assert dict(store.marks(S1)) == {}


@pytest.mark.parametrize("now", [math.nan, math.inf, "1", None])
def test_bad_times_are_refused(store: StateStore, now: Any) -> None:
    with pytest.raises(ValueError):
        store.mark(S1, ["x"], now)


def test_too_many_labels_is_an_error_not_an_eviction(make_store: Factory) -> None:
    store = make_store(max_labels=5)
    store.mark(S1, ["l1", "l2", "l3", "l4"], 1.0)
    store.marks(S1)
    with pytest.raises(StateError, match="more than 5"):
        store.mark(S1, ["l5", "l6"], 2.0)
    assert dict(store.marks(S1)) == {f"l{i}": 1.0 for i in range(1, 5)}   # nothing changed
    store.mark(S1, ["l1", "l5"], 3.0)
    assert len(store.marks(S1)) == 5


# --- events -------------------------------------------------------------------------------


def test_events_in_order_with_limit(store: StateStore) -> None:
    seqs = [store.append_event(S1, {"n": i, "tool": "refund"}, float(i)) for i in range(5)]
    store.append_event(S2, {"other": True}, 3.0)
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    events = store.events(S1)
    assert [e.data["n"] for e in events] == [0, 1, 2, 3, 4]
    assert [e.seq for e in events] == seqs
    assert [e.at for e in events] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [e.data["n"] for e in store.events(S1, limit=2)] == [3, 4]
    assert store.events(S1, limit=0) == []
    assert store.events("never-seen") == []


def test_events_are_copies(store: StateStore) -> None:
    event = {"args": {"amount": 5}}
    store.append_event(S1, event, 1.0)
    event["args"]["amount"] = 500
    got = store.events(S1)[0].data
    assert got == {"args": {"amount": 5}}
    got["args"]["amount"] = 7
    assert store.events(S1)[0].data == {"args": {"amount": 5}}


def test_events_keep_lone_surrogates_from_invalid_utf8(store: StateStore) -> None:
    store.append_event(S1, {"arg": "caf\udce9"}, 1.0)
    assert store.events(S1)[0].data == {"arg": "caf\udce9"}


def test_events_are_bounded(make_store: Factory) -> None:
    store = make_store(max_events=10)
    for i in range(25):
        store.append_event(S1, {"n": i}, float(i))
    assert [e.data["n"] for e in store.events(S1, limit=1000)] == list(range(15, 25))


@pytest.mark.parametrize("event", [
    {"x": math.nan}, {"x": object()}, {"x": b"bytes"}, ["not", "a", "mapping"],
    {"x": "y" * (MAX_EVENT_BYTES + 1)},
])
def test_bad_events_are_refused(store: StateStore, event: Any) -> None:
    with pytest.raises(ValueError):
        store.append_event(S1, event, 1.0)
    assert store.events(S1) == []


# --- budgets --------------------------------------------------------------------------------

REFUNDS = BudgetKey.session("refunds", S1)


def test_consume_up_to_the_limit_then_refuse(store: StateStore) -> None:
    r = store.consume(REFUNDS, 600, 1000, None, 1.0)
    assert (r.ok, r.used_before, r.used_after, r.limit) == (True, 0.0, 600.0, 1000.0)
    assert (r.window_start, r.window_end, r.remaining) == (None, None, 400.0)
    r = store.consume(REFUNDS, 500, 1000, None, 2.0)
    assert (r.ok, r.used_before, r.used_after) == (False, 600.0, 600.0)   # nothing changed
    r = store.consume(REFUNDS, 400, 1000, None, 3.0)
    assert (r.ok, r.used_after, r.remaining) == (True, 1000.0, 0.0)
    assert not store.consume(REFUNDS, 0.000001, 1000, None, 4.0).ok
    assert store.consume(REFUNDS, 0, 1000, None, 5.0).ok                 # zero always fits
    assert store.budget_used(REFUNDS, None, 6.0) == 1000.0


def test_amount_over_the_limit_alone_is_refused(store: StateStore) -> None:
    r = store.consume(REFUNDS, 1001, 1000, None, 1.0)
    assert not r.ok and r.used_after == 0.0
    assert store.budget_used(REFUNDS, None, 1.0) == 0.0


def test_decimal_amounts_are_exact(store: StateStore) -> None:
    oks = [store.consume(REFUNDS, 0.1, 0.3, None, 1.0).ok for _ in range(4)]
    assert oks == [True, True, True, False]
    assert store.budget_used(REFUNDS, None, 1.0) == 0.3
    key = BudgetKey.session("cents", S1)
    assert sum(store.consume(key, 0.01, 1.0, None, 1.0).ok for _ in range(150)) == 100


def test_lowering_the_limit_takes_effect_at_once(store: StateStore) -> None:
    assert store.consume(REFUNDS, 80, 100, None, 1.0).ok
    r = store.consume(REFUNDS, 0, 50, None, 2.0)
    assert not r.ok and r.used_before == 80.0


def test_scopes_are_separate_counters(store: StateStore) -> None:
    keys = [BudgetKey.session("b", S1), BudgetKey.session("b", S2),
            BudgetKey.principal("b", P), BudgetKey.global_("b"),
            BudgetKey.session("other", S1)]
    for k in keys:
        assert store.consume(k, 10, 10, None, 1.0).ok
        assert not store.consume(k, 1, 10, None, 1.0).ok


def test_fixed_windows(store: StateStore) -> None:
    key = BudgetKey.principal("calls", P)
    r = store.consume(key, 3, 3, 60, 125.0)
    assert r.ok and (r.window_start, r.window_end) == (120.0, 180.0)
    assert not store.consume(key, 1, 3, 60, 179.999).ok
    r = store.consume(key, 1, 3, 60, 180.0)                # a new window starts from zero
    assert r.ok and r.used_before == 0.0 and r.window_start == 180.0
    assert store.budget_used(key, 60, 150.0) == 3.0
    assert store.budget_used(key, 60, 200.0) == 1.0
    # Another window length is another counter (a policy change starts afresh).
    assert store.consume(key, 3, 3, 3600, 125.0).ok
    assert store.consume(key, 3, 3, None, 125.0).ok


def test_release_gives_back_to_the_window_it_was_taken_from(store: StateStore) -> None:
    key = BudgetKey.global_("refund-total")
    assert store.consume(key, 700, 1000, 60, 10.0).ok
    assert not store.consume(key, 400, 1000, 60, 20.0).ok
    assert store.release(key, 700, 60, 10.0) == 0.0
    assert store.consume(key, 400, 1000, 60, 20.0).ok
    # A release at a later time with the consume's `now` goes to the old window.
    assert store.consume(key, 600, 1000, 60, 59.0).ok
    assert store.consume(key, 1000, 1000, 60, 61.0).ok
    assert store.release(key, 600, 60, 59.0) == 400.0
    assert store.budget_used(key, 60, 61.0) == 1000.0


def test_release_never_goes_below_zero(store: StateStore) -> None:
    assert store.release(REFUNDS, 5, None, 1.0) == 0.0          # nothing consumed yet
    assert store.consume(REFUNDS, 5, 10, None, 1.0).ok
    assert store.release(REFUNDS, 50, None, 2.0) == 0.0
    assert store.consume(REFUNDS, 10, 10, None, 3.0).ok
    assert not store.consume(REFUNDS, 0.5, 10, None, 3.0).ok


BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1, -0.5, "10", None, True, MAX_AMOUNT * 2]


@pytest.mark.parametrize("amount", BAD_NUMBERS)
def test_bad_amounts_are_refused_and_change_nothing(store: StateStore, amount: Any) -> None:
    assert store.consume(REFUNDS, 10, 100, None, 1.0).ok
    with pytest.raises(ValueError):
        store.consume(REFUNDS, amount, 100, None, 2.0)
    with pytest.raises(ValueError):
        store.release(REFUNDS, amount, None, 2.0)
    assert store.budget_used(REFUNDS, None, 3.0) == 10.0


@pytest.mark.parametrize("limit", BAD_NUMBERS)
def test_bad_limits_are_refused(store: StateStore, limit: Any) -> None:
    with pytest.raises(ValueError):
        store.consume(REFUNDS, 1, limit, None, 1.0)
    assert store.budget_used(REFUNDS, None, 1.0) == 0.0


@pytest.mark.parametrize("window", [0, -60, math.nan, math.inf, "60"])
def test_bad_windows_are_refused(store: StateStore, window: Any) -> None:
    with pytest.raises(ValueError):
        store.consume(REFUNDS, 1, 10, window, 1.0)


@pytest.mark.parametrize("args", [
    ("", Scope.SESSION, S1), ("b", "tenant", "x"), ("b", Scope.SESSION, ""),
    ("b", Scope.GLOBAL, "something"), ("b", Scope.PRINCIPAL, None),
])
def test_bad_budget_keys(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        BudgetKey(*args)


def test_budget_key_accepts_scope_names() -> None:
    assert BudgetKey("b", "principal", P).scope is Scope.PRINCIPAL  # type: ignore[arg-type]
    assert str(BudgetKey.global_("b")) == "b@global"


# --- provenance -----------------------------------------------------------------------------


def test_remember_and_seen_match_normalized_forms(store: StateStore) -> None:
    store.remember(S1, [ATTACKER_IBAN, "Evil@Attacker.example", "ok"], "mcp:bank/read_tx", 1.0)
    got = store.seen(S1, ["de89370400440532013000", " evil@attacker.EXAMPLE ", PAYEE_IBAN,
                          "ok"], now=2.0)
    assert got == {"DE89370400440532013000": "mcp:bank/read_tx",
                   "evil@attacker.example": "mcp:bank/read_tx"}
    assert store.seen(S2, [ATTACKER_IBAN], now=2.0) == {}      # per session


def test_the_latest_source_wins(store: StateStore) -> None:
    store.remember(S1, [ATTACKER_IBAN], "mcp:bank/read_tx", 1.0)
    store.remember(S1, [ATTACKER_IBAN], "mcp:mail/read_inbox", 2.0)
    assert store.seen(S1, [ATTACKER_IBAN], now=3.0) == {
        "DE89370400440532013000": "mcp:mail/read_inbox"}


def test_short_values_are_not_remembered(store: StateStore) -> None:
    assert store.remember(S1, ["yes", "EUR", "done", "", "   "], "src", 1.0) == 0
    assert store.seen(S1, ["yes", "EUR"], now=2.0) == {}


def test_remembered_values_expire(store: StateStore) -> None:
    store.remember(S1, [ATTACKER_IBAN], "src", 100.0, ttl=60)
    assert store.seen(S1, [ATTACKER_IBAN], now=159.0)
    assert store.seen(S1, [ATTACKER_IBAN], now=160.0) == {}
    store.remember(S1, [ATTACKER_IBAN], "src", 200.0, ttl=60)   # seen again: a new lease
    assert store.seen(S1, [ATTACKER_IBAN], now=259.0)


def test_provenance_memory_is_bounded_and_evicts_text_first(make_store: Factory) -> None:
    store = make_store(max_values=50)
    store.remember(S1, [ATTACKER_IBAN], "bank", 1.0)
    # A hostile server floods the session with long junk strings after the IBAN.
    evicted = 0
    for i in range(10):
        junk = [f"junk string number {i}-{j} padding" for j in range(20)]
        evicted += store.remember(S1, junk, "hostile", 2.0 + i)
    assert evicted == 201 - 50
    assert store.seen(S1, [ATTACKER_IBAN], now=20.0) == {"DE89370400440532013000": "bank"}
    # The oldest junk went first, the newest stayed.
    assert store.seen(S1, ["junk string number 0-0 padding"], now=20.0) == {}
    assert store.seen(S1, ["junk string number 9-19 padding"], now=20.0)


def test_identifiers_are_evicted_oldest_first_when_only_identifiers_remain(
        make_store: Factory) -> None:
    store = make_store(max_values=3)
    for i in range(5):
        store.remember(S1, [f"user{i}@example.com"], "src", float(i))
    got = store.seen(S1, [f"user{i}@example.com" for i in range(5)], now=10.0)
    assert sorted(got) == ["user2@example.com", "user3@example.com", "user4@example.com"]


def test_remember_rejects_bad_arguments(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.remember(S1, ATTACKER_IBAN, "src", 1.0)   # one string, not an iterable of them
    with pytest.raises(ValueError):
        store.remember(S1, [ATTACKER_IBAN], "", 1.0)
    with pytest.raises(ValueError):
        store.remember(S1, [ATTACKER_IBAN], "src", 1.0, ttl=-1)
    assert store.seen(S1, [ATTACKER_IBAN], now=2.0) == {}


# --- compensation journal --------------------------------------------------------------------


def test_journal_keeps_entries_in_order_until_taken(store: StateStore) -> None:
    a = store.journal_add(S1, {"undo": "delete T-1"}, 1.0)
    b = store.journal_add(S1, {"undo": "delete T-2"}, 2.0)
    store.journal_add(S2, {"undo": "other session"}, 3.0)
    assert a < b
    assert [(e.seq, e.at, e.data) for e in store.journal(S1)] == [
        (a, 1.0, {"undo": "delete T-1"}), (b, 2.0, {"undo": "delete T-2"})]
    assert store.journal_sessions() == sorted([S1, S2])
    taken = store.journal_take(S1)
    assert [e.data["undo"] for e in taken] == ["delete T-1", "delete T-2"]
    assert store.journal_take(S1) == [] and store.journal(S1) == []   # exactly once
    assert store.journal_sessions() == [S2]
    assert [e.data for e in store.journal(S2)] == [{"undo": "other session"}]


def test_journal_update_replaces_only_what_is_still_journaled(store: StateStore) -> None:
    seq = store.journal_add(S1, {"state": "pending"}, 5.0)
    assert store.journal_update(S1, seq, {"state": "ready", "id": "T-9"}) is True
    (entry,) = store.journal(S1)
    assert (entry.seq, entry.at, entry.data) == (seq, 5.0, {"state": "ready", "id": "T-9"})
    assert store.journal_update(S2, seq, {"state": "stolen"}) is False   # another session's
    assert store.journal_take(S1)[0].data["id"] == "T-9"
    assert store.journal_update(S1, seq, {"state": "late"}) is False     # taken already
    assert store.journal(S1) == []


def test_journal_is_bounded_and_never_drops(make_store: Factory) -> None:
    store = make_store(max_journal=2)
    store.journal_add(S1, {"n": 1}, 1.0)
    store.journal_add(S1, {"n": 2}, 1.0)
    with pytest.raises(StateError):
        store.journal_add(S1, {"n": 3}, 1.0)
    assert [e.data["n"] for e in store.journal(S1)] == [1, 2]


def test_journal_survives_purge(store: StateStore) -> None:
    store.journal_add(S1, {"undo": 1}, 1.0)
    store.purge(now=1000.0, idle_seconds=1.0)
    assert [e.data for e in store.journal(S1)] == [{"undo": 1}]


@pytest.mark.parametrize("entry", [{"x": float("nan")}, {"x": object()}, ["not", "a", "map"]])
def test_bad_journal_entries_are_refused(store: StateStore, entry: Any) -> None:
    with pytest.raises(ValueError):
        store.journal_add(S1, entry, 1.0)
    assert store.journal(S1) == []
    with pytest.raises(ValueError):
        store.journal_update(S1, 0, {})


def test_journal_take_hands_out_each_entry_once_under_concurrency(store: StateStore) -> None:
    import threading

    n = 200
    added = {store.journal_add(S1, {"i": i}, float(i)) for i in range(n)}
    twins = [t for t in (_twin(store) for _ in range(3)) if t is not None]
    readers = [store, *twins] * (8 // (1 + len(twins)))
    got: list[list[int]] = []
    start = threading.Barrier(len(readers))

    def take(reader: StateStore) -> None:
        start.wait()
        mine: list[int] = []
        for _ in range(20):
            mine.extend(e.seq for e in reader.journal_take(S1))
        got.append(mine)

    threads = [threading.Thread(target=take, args=(r,)) for r in readers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for twin in twins:
            twin.close()
    flat = [seq for mine in got for seq in mine]
    assert sorted(flat) == sorted(added)          # every entry once, none twice


def _twin(store: StateStore) -> StateStore | None:
    """Another store object on the same data (another process would hold one), where the
    backend shares between objects."""
    from proxy.state import SqliteStore

    if isinstance(store, SqliteStore) and store.shared:
        return SqliteStore(store.path, shared=True)
    if type(store).__name__ == "RedisStore":
        from proxy.state.redis_store import RedisStore

        assert isinstance(store, RedisStore)
        return RedisStore(store.url, prefix=store.prefix)
    return None


# --- maintenance -----------------------------------------------------------------------------


def test_purge_removes_idle_sessions_but_keeps_killed_ones(store: StateStore) -> None:
    idle = session_key(P, "idle")
    for s, t in ((S1, 100.0), (idle, 10.0), (S2, 10.0)):
        store.touch(s, P, t)
        store.mark(s, ["x"], t)
        store.append_event(s, {"t": t}, t)
        store.remember(s, [ATTACKER_IBAN], "src", t)
        store.consume(BudgetKey.session("b", s), 1, 10, None, t)
    store.kill(S2, "killed", 11.0)
    assert store.purge(now=200.0, idle_seconds=150.0) >= 1
    assert {s.session for s in store.list_sessions()} == {S1, S2}
    assert dict(store.marks(idle)) == {} and store.events(idle) == []
    assert store.seen(idle, [ATTACKER_IBAN], now=200.0) == {}
    assert store.budget_used(BudgetKey.session("b", idle), None, 200.0) == 0.0
    assert dict(store.marks(S1)) == {"x": 100.0}
    assert store.killed(S2) == "killed" and dict(store.marks(S2)) == {"x": 10.0}


def test_purge_drops_ended_windows_and_expired_values(store: StateStore) -> None:
    key = BudgetKey.global_("rate")
    store.touch(S1, P, 100.0)
    store.consume(key, 5, 5, 60, 100.0)
    store.consume(BudgetKey.global_("lifetime"), 5, 5, None, 100.0)
    store.remember(S1, [ATTACKER_IBAN], "src", 100.0, ttl=10)
    store.remember(S1, [PAYEE_IBAN], "src", 100.0)
    assert store.purge(now=130.0, idle_seconds=1e9) >= 2
    assert store.budget_used(key, 60, 100.0) == 0.0
    assert store.budget_used(BudgetKey.global_("lifetime"), None, 130.0) == 5.0
    assert store.seen(S1, [ATTACKER_IBAN, PAYEE_IBAN], now=100.0) == {
        "GB82WEST12345698765432": "src"}


def test_a_closed_store_raises_state_error(store: StateStore) -> None:
    store.mark(S1, ["x"], 1.0)
    store.marks(S1)
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.marks(S1),
        lambda: store.mark(S1, ["y"], 2.0),
        lambda: store.touch(S1, P, 2.0),
        lambda: store.killed(S1),
        lambda: store.consume(REFUNDS, 1, 10, None, 2.0),
        lambda: store.release(REFUNDS, 1, None, 2.0),
        lambda: store.append_event(S1, {}, 2.0),
        lambda: store.events(S1),
        lambda: store.remember(S1, [ATTACKER_IBAN], "src", 2.0),
        lambda: store.seen(S1, [ATTACKER_IBAN], now=2.0),
        lambda: store.list_sessions(),
        lambda: store.purge(2.0, 1.0),
        lambda: store.journal_add(S1, {}, 2.0),
        lambda: store.journal_take(S1),
        lambda: store.journal_sessions(),
    ]
    for call in calls:
        with pytest.raises(StateError):
            call()

