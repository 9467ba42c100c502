"""Waiting for a decision: ``wait`` wakes at once on a decision (in-process notification),
``hold`` turns the outcome into proceed / deny and uses the approval once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from proxy.approvals import (
    ApprovalNotFound,
    MemoryApprovalStore,
    Outcome,
    SqliteApprovalStore,
    Status,
    hold,
    request_for,
)
from proxy.decision import Decision, Plane, Verdict

ESCALATE = Decision(Verdict.ESCALATE, ("refund.over_threshold",), "refund over 500",
                    "sha256:policy-v1", Plane.ENDPOINT)


def test_waiter_wakes_within_50ms_of_a_decision_from_another_thread(make_store, opened):
    store = make_store()
    r = opened(store)
    decided_at: list[float] = []

    def approver() -> None:
        time.sleep(0.2)
        decided_at.append(time.perf_counter())
        store.decide(r.id, True, "bob")

    async def main() -> tuple[Status, float]:
        thread = threading.Thread(target=approver)
        thread.start()
        status = await store.wait(r.id, timeout=5)
        woke = time.perf_counter()
        thread.join()
        return status, woke

    status, woke = asyncio.run(main())
    assert status is Status.APPROVED
    assert woke - decided_at[0] < 0.05


def test_waiter_wakes_within_50ms_of_a_decision_on_the_same_loop(make_store, opened):
    store = make_store()
    r = opened(store)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        marks: list[float] = []

        def decide() -> None:
            marks.append(time.perf_counter())
            store.decide(r.id, False, "bob")

        loop.call_later(0.1, decide)
        assert await store.wait(r.id) is Status.DENIED
        return time.perf_counter() - marks[0]

    assert asyncio.run(main()) < 0.05


def test_wait_times_out_pending_and_expires_at_the_deadline(make_store, opened):
    store = make_store()
    r = opened(store, timeout=0.3)

    async def main() -> None:
        t0 = time.perf_counter()
        assert await store.wait(r.id, timeout=0.05) is Status.PENDING
        assert await store.wait(r.id) is Status.EXPIRED
        assert 0.25 < time.perf_counter() - t0 < 1.0
        assert store.get(r.id).status is Status.EXPIRED
        with pytest.raises(ApprovalNotFound):
            await store.wait("missing", 0.1)

    asyncio.run(main())


def test_wait_returns_at_once_when_already_decided(make_store, opened):
    store = make_store()
    r = opened(store)
    store.decide(r.id, True, "bob")
    assert asyncio.run(store.wait(r.id, 5)) is Status.APPROVED


def test_decision_by_another_process_reaches_the_waiter_by_polling(tmp_path, opened):
    path = tmp_path / "a.sqlite"
    holder = SqliteApprovalStore(path, poll=0.05)
    other = SqliteApprovalStore(path)           # e.g. another process on the same file
    r = opened(holder)

    async def main() -> Status:
        asyncio.get_running_loop().call_later(0.1, lambda: other.decide(r.id, True, "bob"))
        return await holder.wait(r.id, timeout=5)

    t0 = time.perf_counter()
    assert asyncio.run(main()) is Status.APPROVED
    assert time.perf_counter() - t0 < 1.0
    holder.close()
    other.close()


# --- hold ------------------------------------------------------------------------------------


def run_hold(store, request, *, decide=None, after=0.05, **kw):
    async def main():
        if decide is not None:
            asyncio.get_running_loop().call_later(after, decide)
        return await hold(store, request, **kw)

    return asyncio.run(main())


def test_hold_approved_proceeds_and_uses_the_approval(store, call):
    r = request_for(store, call(900), ESCALATE)
    result = run_hold(store, r, decide=lambda: store.decide(r.id, True, "bob", "ok"))
    assert result.outcome is Outcome.APPROVED and result.proceeds
    assert result.reason == "approved by bob: ok"
    assert result.request.consumed_at is not None
    d = result.decision(ESCALATE)
    assert d.verdict is Verdict.ALLOW and d.rule_ids == ESCALATE.rule_ids
    assert "approved by bob" in d.reason
    assert result.to_record()["approver"] == "bob"
    assert "arguments" not in str(result.to_record())


def test_hold_denied(store, call):
    r = request_for(store, call(900), ESCALATE)
    result = run_hold(store, r, decide=lambda: store.decide(r.id, False, "bob", "too much"))
    assert result.outcome is Outcome.DENIED and not result.proceeds
    assert result.reason == "denied by bob: too much"
    assert result.decision(ESCALATE).verdict is Verdict.DENY


def test_hold_expires_when_nobody_decides(store, call):
    store = MemoryApprovalStore()
    r = request_for(store, call(900), ESCALATE, timeout=0.2)
    result = run_hold(store, r)
    assert result.outcome is Outcome.EXPIRED
    assert "no approver decided within 0.2 s" in result.reason
    assert store.get(r.id).status is Status.EXPIRED


def test_hold_with_its_own_shorter_limit_leaves_the_request_pending(call):
    store = MemoryApprovalStore()
    r = request_for(store, call(900), ESCALATE, timeout=60)
    result = run_hold(store, r, timeout=0.1)
    assert result.outcome is Outcome.TIMEOUT
    assert store.get(r.id).status is Status.PENDING


def test_hold_abandoned_when_the_client_goes_away(call):
    store = MemoryApprovalStore()
    r = request_for(store, call(900), ESCALATE)
    gone_after = time.monotonic() + 0.1
    result = run_hold(store, r, check_every=0.02,
                      check=lambda: "client disconnected" if time.monotonic() > gone_after
                      else None)
    assert result.outcome is Outcome.ABANDONED and result.reason == "client disconnected"
    # nothing used: a retried identical call finds the same request, still pending
    assert request_for(store, call(900), ESCALATE).id == r.id
    assert store.get(r.id).status is Status.PENDING


def test_hold_released_by_the_kill_switch(store, call):
    r = request_for(store, call(900), ESCALATE)
    result = run_hold(store, r, decide=lambda: store.cancel_session(
        "sess-1", "session killed by bob"))
    assert result.outcome is Outcome.CANCELLED
    assert "session killed by bob" in result.reason


def test_identical_calls_held_together_use_one_approval(call):
    store = MemoryApprovalStore()
    first = request_for(store, call(900), ESCALATE)
    second = request_for(store, call(900), ESCALATE)
    assert first.id == second.id

    async def main():
        asyncio.get_running_loop().call_later(0.05, lambda: store.decide(first.id, True, "bob"))
        return await asyncio.gather(hold(store, first), hold(store, second))

    outcomes = sorted(r.outcome.value for r in asyncio.run(main()))
    assert outcomes == [Outcome.APPROVED.value, Outcome.REPLAYED.value]


def test_retry_after_approval_proceeds_without_waiting(store, call):
    r = request_for(store, call(900), ESCALATE)
    store.decide(r.id, True, "bob")
    retry = request_for(store, call(900), ESCALATE)
    t0 = time.perf_counter()
    result = run_hold(store, retry)
    assert result.outcome is Outcome.APPROVED and time.perf_counter() - t0 < 0.1


def test_fifty_holds_wake_on_their_own_decisions(call):
    store = MemoryApprovalStore()
    requests = [request_for(store, call(1000 + i), ESCALATE) for i in range(50)]

    async def main():
        tasks = [asyncio.create_task(hold(store, r)) for r in requests]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        for i, r in enumerate(requests):
            store.decide(r.id, i % 2 == 0, "bob")
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - t0

    results, took = asyncio.run(main())
    assert [r.outcome for r in results] == [
        Outcome.APPROVED if i % 2 == 0 else Outcome.DENIED for i in range(50)]
    assert took < 0.5
