"""``publish`` / ``subscribe`` across replicas (the approvals feature will use it: "an
approval granted on replica A releases the call held on replica B within 1 s"), with
resubscription after a lost connection and after a Redis restart."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from redis_fixture import RedisServer

pytest.importorskip("redis")

from proxy.state import StateError
from proxy.state.redis_store import RedisStore

WITHIN = 1.0


def _until(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class Inbox:
    def __init__(self) -> None:
        self.q: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.reconnects = threading.Event()

    def __call__(self, message: dict[str, Any]) -> None:
        self.q.put((time.perf_counter(), message))

    def reconnected(self) -> None:
        self.reconnects.set()

    def latency(self, sent: float, expect: dict[str, Any]) -> float:
        at, got = self.q.get(timeout=WITHIN)
        assert got == expect
        return at - sent


@pytest.fixture
def pair(redis_server: RedisServer):
    a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
    yield a, b
    a.close()
    b.close()


def test_a_message_from_a_reaches_b_within_a_second(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    inbox = Inbox()
    b.subscribe("approvals", inbox)
    sent = time.perf_counter()
    assert a.publish("approvals", {"id": "ap-1", "verdict": "granted"}) == 1
    assert inbox.latency(sent, {"id": "ap-1", "verdict": "granted"}) < WITHIN
    # Each replica sees its own messages too; other channels are separate.
    own = Inbox()
    a.subscribe("approvals", own)
    other = Inbox()
    b.subscribe("pins", other)
    sent = time.perf_counter()
    assert a.publish("approvals", {"id": "ap-2"}) == 2
    assert inbox.latency(sent, {"id": "ap-2"}) < WITHIN
    assert own.latency(sent, {"id": "ap-2"}) < WITHIN
    assert other.q.empty()


def test_after_bs_connection_was_interrupted(redis_server: RedisServer,
                                             pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    inbox = Inbox()
    b.subscribe("approvals", inbox, on_reconnect=inbox.reconnected)
    raw = redis_server.client()
    # B's listener is the subscriber connection with two channels (invalidations and
    # approvals); A's has one.
    [b_conn] = [c for c in raw.client_list(_type="pubsub") if c["sub"] == "2"]
    assert raw.client_kill_filter(_id=b_conn["id"]) == 1
    raw.close()
    assert inbox.reconnects.wait(WITHIN), "on_reconnect did not run after resubscribing"
    sent = time.perf_counter()
    assert a.publish("approvals", {"id": "ap-3"}) == 1        # B is subscribed again
    assert inbox.latency(sent, {"id": "ap-3"}) < WITHIN


def test_after_a_redis_restart(redis_server: RedisServer,
                               pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    inbox = Inbox()
    b.subscribe("approvals", inbox, on_reconnect=inbox.reconnected)
    redis_server.kill()
    with pytest.raises(StateError, match="unavailable: publish"):
        a.publish("approvals", {"id": "lost"})                # down: an error, not a drop
    redis_server.start()                                      # same port, empty
    assert inbox.reconnects.wait(3.0)
    sent = time.perf_counter()
    assert a.publish("approvals", {"id": "ap-4"}) >= 1
    assert inbox.latency(sent, {"id": "ap-4"}) < WITHIN


def test_unsubscribe_and_bad_callbacks(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    inbox = Inbox()
    calls: list[dict[str, Any]] = []

    def broken(message: dict[str, Any]) -> None:
        calls.append(message)
        raise RuntimeError("a bug in a subscriber")

    unsubscribe = b.subscribe("approvals", inbox)
    b.subscribe("approvals", broken)
    a.publish("approvals", {"n": 1})
    inbox.latency(time.perf_counter(), {"n": 1})
    assert _until(lambda: calls == [{"n": 1}])
    a.publish("approvals", {"n": 2})                          # the dispatcher survived
    inbox.latency(time.perf_counter(), {"n": 2})
    unsubscribe()
    unsubscribe()                                             # idempotent
    a.publish("approvals", {"n": 3})
    assert _until(lambda: len(calls) == 3)
    assert inbox.q.empty()


def test_messages_are_json_objects(pair: tuple[RedisStore, RedisStore]) -> None:
    a, _ = pair
    with pytest.raises(ValueError):
        a.publish("approvals", ["not", "an", "object"])      # type: ignore[arg-type]
    with pytest.raises(ValueError):
        a.publish("approvals", {"x": object()})
    with pytest.raises(ValueError):
        a.subscribe("", lambda m: None)


def test_subscribe_while_redis_is_down_is_a_state_error(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=0.1)
    try:
        redis_server.kill()
        t = time.monotonic()
        with pytest.raises(StateError, match="subscribe approvals"):
            store.subscribe("approvals", lambda m: None)
        assert time.monotonic() - t < 2.0
    finally:
        store.close()


def test_subscription_is_active_when_subscribe_returns(pair: tuple[RedisStore, RedisStore],
                                                       ) -> None:
    """No sleep between subscribe and publish: subscribe waits for Redis's confirmation."""
    a, b = pair
    for i in range(20):
        inbox = Inbox()
        unsubscribe = b.subscribe(f"ch-{i}", inbox)
        assert a.publish(f"ch-{i}", {"i": i}) == 1
        inbox.latency(time.perf_counter(), {"i": i})
        unsubscribe()
