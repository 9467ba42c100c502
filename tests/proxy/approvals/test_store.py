"""The approval store contract, over every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.approvals import (
    ApprovalConflict,
    ApprovalError,
    ApprovalNotFound,
    ApprovalStore,
    MemoryApprovalStore,
    SelfApproval,
    SqliteApprovalStore,
    Status,
    call_digest,
    open_approvals,
    request_for,
)
from proxy.decision import Decision, Plane, Verdict
from proxy.principal import Link, Principal, PrincipalKind
from proxy.state import StateError

ESCALATE = Decision(Verdict.ESCALATE, ("refund.over_threshold",), "refund over 500",
                    "sha256:policy-v1", Plane.ENDPOINT)


def test_both_backends_satisfy_the_protocol(store):
    assert isinstance(store, ApprovalStore)


# --- binding to the exact call -------------------------------------------------------------


def test_identical_call_finds_the_same_request(store, call):
    first = request_for(store, call(900), ESCALATE)
    again = request_for(store, call(900), ESCALATE)
    assert again.id == first.id
    assert again.digest == first.digest
    assert store.find(first.digest).id == first.id
    assert len(store.list(Status.PENDING)) == 1


def test_changed_argument_needs_a_new_request(store, call):
    first = request_for(store, call(900), ESCALATE)
    other = request_for(store, call(901), ESCALATE)
    assert other.id != first.id and other.digest != first.digest
    assert {r.id for r in store.list(Status.PENDING)} == {first.id, other.id}


def test_request_records_what_the_approver_sees(store, call, alice, clock):
    r = request_for(store, call(900, api_token="sk-live-0123456789abcdefghij"), ESCALATE,
                    timeout=120)
    assert r.status is Status.PENDING
    assert r.rule_ids == ("refund.over_threshold",)
    assert r.reason == "refund over 500"
    assert r.principal == alice
    assert r.session == "sess-1"
    assert r.policy_version == "sha256:policy-v1"
    assert r.created_at == clock.now and r.expires_at == clock.now + 120
    assert r.action["name"] == "refund" and r.action["server"] == "bank"
    assert r.action["arguments"]["amount"] == 900
    assert r.action["arguments"]["api_token"] == "***"
    assert len(r.id) >= 22 and all(c.isalnum() or c in "-_" for c in r.id)


def test_ids_are_random(store):
    ids = {store.request(f"sha256:{i}", rule_ids=[], reason="", principal=Principal(
        (Link("a", PrincipalKind.AGENT),))).id for i in range(50)}
    assert len(ids) == 50


def test_approved_unused_request_is_found_by_the_identical_call(store, opened):
    r = opened(store)
    store.decide(r.id, True, "bob")
    found = opened(store)
    assert found.id == r.id and found.status is Status.APPROVED
    assert store.find(r.digest).id == r.id


def test_approval_is_single_use(store, opened):
    r = opened(store)
    store.decide(r.id, True, "bob")
    used = store.consume(r.id, r.digest)
    assert used.consumed_at is not None and used.status is Status.APPROVED
    with pytest.raises(ApprovalConflict, match="already used"):
        store.consume(r.id, r.digest)
    # the same call again is held again: a new request, not the used approval
    again = opened(store)
    assert again.id != r.id and again.status is Status.PENDING
    assert store.find(r.digest).id == again.id


def test_approval_cannot_be_replayed_for_another_call(store, call):
    r = request_for(store, call(900), ESCALATE)
    store.decide(r.id, True, "bob")
    other = call_digest(call(5000), ESCALATE.policy_version)
    with pytest.raises(ApprovalConflict, match="another call"):
        store.consume(r.id, other)
    assert store.find(other) is None
    assert store.get(r.id).consumed_at is None        # still usable by its own call
    store.consume(r.id, r.digest)


def test_consume_needs_an_approval(store, opened):
    r = opened(store)
    with pytest.raises(ApprovalConflict, match="pending, not approved"):
        store.consume(r.id)
    store.decide(r.id, False, "bob")
    with pytest.raises(ApprovalConflict, match="denied"):
        store.consume(r.id)
    with pytest.raises(ApprovalNotFound):
        store.consume("nope")


# --- deciding -----------------------------------------------------------------------------


def test_approve_records_approver_time_and_note(store, opened, clock):
    r = opened(store, timeout=60)
    clock.advance(10)
    d = store.decide(r.id, True, "bob", "  refund agreed with the customer ")
    assert d.status is Status.APPROVED and d.approver == "bob"
    assert d.decided_at == clock.now and d.note == "refund agreed with the customer"
    assert d.expires_at == clock.now + 60        # the window to use the approval
    assert store.get(r.id) == d


def test_deny(store, opened):
    r = opened(store)
    d = store.decide(r.id, False, "bob", "no")
    assert d.status is Status.DENIED and d.approver == "bob" and d.note == "no"
    assert store.find(r.digest) is None
    assert opened(store).id != r.id               # a retry asks again


def test_agents_cannot_approve_their_own_calls(store, opened):
    r = opened(store)
    for who in ("refunder", "planner", "alice", " Refunder "):
        with pytest.raises(SelfApproval, match="agents cannot approve their own calls"):
            store.decide(r.id, True, who)
    with pytest.raises(SelfApproval):
        store.decide(r.id, False, "refunder")
    assert store.get(r.id).status is Status.PENDING
    assert store.decide(r.id, True, "bob").approver == "bob"


def test_decided_request_cannot_be_decided_again(store, opened):
    r = opened(store)
    store.decide(r.id, True, "bob")
    with pytest.raises(ApprovalConflict, match="already approved by bob"):
        store.decide(r.id, False, "carol")
    with pytest.raises(ApprovalNotFound):
        store.decide("missing", True, "bob")
    with pytest.raises(ValueError):
        store.decide(opened(store, "sha256:other").id, True, "  ")


def test_expired_request_cannot_be_decided(store, opened, clock):
    r = opened(store, timeout=5)
    clock.advance(5)
    with pytest.raises(ApprovalConflict, match="expired"):
        store.decide(r.id, True, "bob")
    assert store.get(r.id).status is Status.EXPIRED
    with pytest.raises(ApprovalConflict, match="already expired"):
        store.decide(r.id, True, "bob")


# --- expiry -------------------------------------------------------------------------------


def test_expire_marks_pending_requests_past_their_deadline(store, opened, clock):
    short = opened(store, "sha256:short", timeout=5)
    long = opened(store, "sha256:long", timeout=50)
    clock.advance(10)
    expired = store.expire()
    assert [r.id for r in expired] == [short.id]
    assert store.get(short.id).status is Status.EXPIRED
    assert store.get(long.id).status is Status.PENDING
    assert store.expire() == []
    # the identical call after expiry opens a new request
    assert opened(store, "sha256:short").id != short.id


def test_unused_approval_expires(store, opened, clock):
    r = opened(store, timeout=30)
    store.decide(r.id, True, "bob")
    clock.advance(29)
    assert store.find(r.digest).id == r.id
    clock.advance(1)
    assert store.find(r.digest) is None
    with pytest.raises(ApprovalConflict, match="expired unused"):
        store.consume(r.id, r.digest)
    assert store.get(r.id).status is Status.APPROVED    # the record keeps who approved


def test_timeout_must_be_positive(store, opened):
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError):
            opened(store, timeout=bad)


# --- cancel, list, purge, bounds --------------------------------------------------------------


def test_cancel_session_releases_held_and_approved_calls(store, opened):
    held = opened(store, "sha256:1", session="s1")
    approved = opened(store, "sha256:2", session="s1")
    store.decide(approved.id, True, "bob")
    denied = opened(store, "sha256:3", session="s1")
    store.decide(denied.id, False, "bob")
    other = opened(store, "sha256:4", session="s2")
    cancelled = store.cancel_session("s1", "session killed by bob")
    assert {r.id for r in cancelled} == {held.id, approved.id}
    for rid in (held.id, approved.id):
        r = store.get(rid)
        assert r.status is Status.CANCELLED and r.note == "session killed by bob"
    assert store.get(denied.id).status is Status.DENIED
    assert store.get(other.id).status is Status.PENDING
    assert store.cancel_session("", "x") == []


def test_cancel_one(store, opened):
    r = opened(store)
    assert store.cancel(r.id, "operator").status is Status.CANCELLED
    with pytest.raises(ApprovalConflict):
        store.cancel(r.id, "again")
    with pytest.raises(ApprovalNotFound):
        store.cancel("missing", "x")


def test_list_by_status_oldest_first(store, opened, clock):
    ids = []
    for i in range(4):
        ids.append(opened(store, f"sha256:{i}").id)
        clock.advance(1)
    store.decide(ids[1], False, "bob")
    assert [r.id for r in store.list()] == ids
    assert [r.id for r in store.list("pending")] == [ids[0], ids[2], ids[3]]
    assert [r.id for r in store.list(Status.DENIED)] == [ids[1]]
    assert [r.id for r in store.list(limit=2)] == ids[2:]
    with pytest.raises(ValueError):
        store.list("bogus")


def test_too_many_pending_requests_are_refused(make_store, opened, clock):
    store = make_store(clock=clock, max_pending=3)
    for i in range(3):
        opened(store, f"sha256:{i}")
    with pytest.raises(ApprovalError, match="too many pending"):
        opened(store, "sha256:x")
    assert opened(store, "sha256:1").digest == "sha256:1"   # finding one is still fine
    clock.advance(301)                                      # the old ones expire
    opened(store, "sha256:x")


def test_purge_drops_finished_requests(store, opened, clock):
    done = opened(store, "sha256:1")
    store.decide(done.id, False, "bob")
    live = opened(store, "sha256:2")
    usable = opened(store, "sha256:3")
    store.decide(usable.id, True, "bob")
    clock.advance(10)
    assert store.purge(clock.now) == 1
    assert store.get(done.id) is None
    assert store.get(live.id) is not None and store.get(usable.id) is not None


def test_subscribers_hear_every_change(store, opened):
    heard = []
    unsubscribe = store.subscribe(lambda r: heard.append((r.id, r.status)))
    r = opened(store)
    store.decide(r.id, True, "bob")
    store.consume(r.id)
    unsubscribe()
    opened(store, "sha256:other")
    assert heard == [(r.id, Status.PENDING), (r.id, Status.APPROVED), (r.id, Status.APPROVED)]


def test_a_failing_subscriber_does_not_break_the_store(store, opened):
    store.subscribe(lambda r: 1 / 0)
    r = opened(store)
    assert store.decide(r.id, True, "bob").status is Status.APPROVED


def test_closed_store_raises_state_error(make_store, opened):
    store = make_store()
    store.close()
    with pytest.raises(StateError):
        opened(store)


# --- persistence (SQLite) ------------------------------------------------------------------


def test_three_pending_requests_survive_a_restart_and_can_be_approved(tmp_path, call):
    path = tmp_path / "state.sqlite"
    store = SqliteApprovalStore(path)
    held = [request_for(store, call(1000 + i), ESCALATE) for i in range(3)]
    store.close()      # the proxy dies; held connections are lost

    store = SqliteApprovalStore(path)
    pending = store.list(Status.PENDING)
    assert [r.id for r in pending] == [r.id for r in held]
    assert pending[0].principal == held[0].principal
    assert pending[0].action == held[0].action
    for r in pending:
        store.decide(r.id, True, "bob")
    # each retried identical call finds its approval and may use it once
    for i, r in enumerate(held):
        retry = request_for(store, call(1000 + i), ESCALATE)
        assert retry.id == r.id and retry.status is Status.APPROVED
        store.consume(retry.id, retry.digest)
    store.close()

    store = SqliteApprovalStore(path)
    assert all(r.consumed_at is not None for r in store.list(Status.APPROVED))
    assert request_for(store, call(1000), ESCALATE).status is Status.PENDING
    store.close()


def test_sqlite_store_shares_the_state_database(tmp_path, opened):
    from proxy.state import SqliteStore
    from proxy.state.sqlite_db import SqliteDb

    path = tmp_path / "state.sqlite"
    state = SqliteStore(path)
    state.touch("s1", "p", 1.0)
    state.close()
    db = SqliteDb(path)
    approvals = SqliteApprovalStore(db)
    opened(approvals)
    approvals.close()                      # a shared SqliteDb stays open
    assert len(SqliteApprovalStore(db).list()) == 1
    db.close()
    tables = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"approvals", "sessions", "meta"} <= tables
    state = SqliteStore(path)
    assert [s.session for s in state.list_sessions()] == ["s1"]
    state.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "a.sqlite"
    SqliteApprovalStore(path).close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema:approvals'")
    with pytest.raises(StateError, match="newer"):
        SqliteApprovalStore(path)


def test_open_approvals(tmp_path: Path):
    assert isinstance(open_approvals("memory:"), MemoryApprovalStore)
    s = open_approvals(f"sqlite:{tmp_path / 'x.db'}")
    assert isinstance(s, SqliteApprovalStore)
    s.close()
    with pytest.raises(StateError, match="unavailable"):   # nothing listens on port 1
        open_approvals("redis://127.0.0.1:1/0")
    with pytest.raises(StateError):
        open_approvals("")


def test_public_api_is_explicit():
    import proxy.approvals as approvals
    import proxy.control as control

    for module in (approvals, control):
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None, name
