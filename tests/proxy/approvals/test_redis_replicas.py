"""Approvals on Redis across replicas: each replica is its own ``RedisStore`` (own pool,
own pub/sub listener) on one real redis-server, as two proxy processes would be."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_fixture import RedisServer

from proxy.approvals import ApprovalConflict, Status, open_approvals
from proxy.approvals.redis_store import RedisApprovalStore
from proxy.state import StateError
from proxy.state.redis_store import RedisStore


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[list[RedisApprovalStore]]:
    states = [RedisStore(redis_server.url, timeout=0.5) for _ in range(3)]
    stores = [RedisApprovalStore(s) for s in states]
    yield stores
    for store, state in zip(stores, states, strict=True):
        store.close()
        state.close()


def test_open_approvals_shares_the_state_stores_connection(redis_server: RedisServer) -> None:
    state = RedisStore(redis_server.url)
    try:
        store = open_approvals(redis_server.url, state=state)
        assert isinstance(store, RedisApprovalStore) and store._state is state
        store.close()
        assert state.connected                      # not closed by the approvals store
        own = open_approvals(redis_server.url)
        assert isinstance(own, RedisApprovalStore) and own._state is not state
        own.close()
    finally:
        state.close()


def test_a_call_held_on_b_wakes_within_a_second_of_approval_on_a(
        replicas: list[RedisApprovalStore], opened: Callable[..., Any]) -> None:
    a, b, _ = replicas
    request = opened(b)
    assert a.get(request.id) == request              # every replica sees the request

    async def held() -> tuple[Status, float]:
        waiting = asyncio.create_task(b.wait(request.id, timeout=10))
        await asyncio.sleep(0.2)                     # b is waiting (its poll is 1 s)
        start = time.perf_counter()
        await asyncio.to_thread(a.decide, request.id, True, "bob")
        status = await waiting
        return status, time.perf_counter() - start

    status, latency = asyncio.run(held())
    assert status is Status.APPROVED
    # well under the 1 s poll: it was the pub/sub message that woke b
    assert latency < 0.5, f"woke after {latency:.3f} s"
    used = b.consume(request.id, request.digest)
    assert used.consumed_at is not None


def test_one_approval_is_used_once_across_replicas(
        replicas: list[RedisApprovalStore], opened: Callable[..., Any]) -> None:
    for _ in range(10):
        request = opened(replicas[0], digest=f"sha256:{time.monotonic_ns():x}")
        replicas[1].decide(request.id, True, "bob")
        barrier = threading.Barrier(len(replicas) * 4)
        outcomes: list[str] = []

        def use(store: RedisApprovalStore, request_id: str = request.id,
                barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                store.consume(request_id)
                outcomes.append("used")
            except ApprovalConflict as e:
                outcomes.append(str(e))

        threads = [threading.Thread(target=use, args=(s,)) for s in replicas for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("used") == 1, outcomes
        assert all("already used" in o for o in outcomes if o != "used")


def test_two_replicas_opening_the_same_call_get_one_request(
        replicas: list[RedisApprovalStore], opened: Callable[..., Any]) -> None:
    barrier = threading.Barrier(9)
    ids: list[str] = []

    def ask(store: RedisApprovalStore) -> None:
        barrier.wait()
        ids.append(opened(store, digest="sha256:same").id)

    threads = [threading.Thread(target=ask, args=(s,)) for s in replicas for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert len(replicas[2].list(Status.PENDING)) == 1


def test_kill_switch_on_a_cancels_a_call_held_on_b(
        replicas: list[RedisApprovalStore], opened: Callable[..., Any]) -> None:
    a, b, _ = replicas
    request = opened(b, session="sess-9")

    async def held() -> Status:
        waiting = asyncio.create_task(b.wait(request.id, timeout=10))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(a.cancel_session, "sess-9", "session killed")
        return await asyncio.wait_for(waiting, 1.0)

    assert asyncio.run(held()) is Status.CANCELLED


def test_redis_down_is_a_clear_error_and_restart_recovers(
        redis_server: RedisServer, opened: Callable[..., Any]) -> None:
    state = RedisStore(redis_server.url, timeout=0.3)
    store = RedisApprovalStore(state)
    try:
        request = opened(store)
        redis_server.kill()
        with pytest.raises(StateError, match="unavailable"):
            store.get(request.id)
        with pytest.raises(StateError, match="unavailable"):
            opened(store, digest="sha256:bb")
        redis_server.start()                         # same port, no persistence: empty
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.get(request.id) is None
                break
            except StateError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        fresh = opened(store, digest="sha256:bb")
        assert store.get(fresh.id) == fresh
    finally:
        store.close()
        state.close()
