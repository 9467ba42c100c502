"""``RedisStore`` specifics: the cache and its consistency model across replicas, what is
stored (digests, no values in clear), purge, ``open_store``. The contract itself runs in
``test_contract.py`` (``conftest.BACKENDS["redis"]``)."""

from __future__ import annotations

import threading
import time

import pytest
from redis_fixture import RedisServer

pytest.importorskip("redis")

from proxy.state import BudgetKey, StateError, open_store, session_key
from proxy.state.redis_store import RedisStore

P = "c" * 64
S = session_key(P, "mcp-1")
IBAN = "DE89 3704 0044 0532 0130 00"


def _until(predicate, seconds: float = 2.0) -> float | None:
    """Seconds until ``predicate()`` held, or ``None``."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.0005)
    return None


def _calls(server: RedisServer, command: str) -> int:
    raw = server.client()
    try:
        stats = raw.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        raw.close()


@pytest.fixture
def replicas(redis_server: RedisServer):
    a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
    assert a.connected and b.connected
    yield a, b
    a.close()
    b.close()


def test_open_store_gives_a_redis_store(redis_server: RedisServer) -> None:
    store = open_store(f" {redis_server.url} ")
    try:
        assert isinstance(store, RedisStore)
        assert repr(store) == f"RedisStore('{redis_server.url}', prefix='fp:')"
        store.mark(S, ["x"], 1.0)
    finally:
        store.close()


def test_another_replicas_marks_and_kills_reach_the_cache(
        replicas: tuple[RedisStore, RedisStore]) -> None:
    a, b = replicas
    assert dict(b.marks(S)) == {}                     # cached on b (empty)
    assert b.killed(S, P) is None
    a.mark(S, ["read:customer_pii"], 5.0)
    took = _until(lambda: "read:customer_pii" in b.marks(S), b.stale_after)
    assert took is not None, "b never saw a's mark"
    a.kill(S, "operator", 6.0)
    assert _until(lambda: b.killed(S) == "operator", b.stale_after) is not None
    a.kill_principal(P, "token leaked", 7.0)
    other = session_key(P, "a-new-session")
    assert _until(lambda: b.killed(other, P) == "token leaked", b.stale_after) is not None
    # b's own write merges with a's (write-through) and is visible to a
    b.mark(S, ["untrusted_content"], 8.0)
    assert dict(b.marks(S)) == {"read:customer_pii": 5.0, "untrusted_content": 8.0}
    assert _until(lambda: dict(a.marks(S)) == dict(b.marks(S)), a.stale_after) is not None


def test_cached_reads_do_not_touch_redis(redis_server: RedisServer,
                                         replicas: tuple[RedisStore, RedisStore]) -> None:
    a, _ = replicas
    a.mark(S, ["x"], 1.0)
    snapshot = a.marks(S)
    a.killed(S, P)
    before = (_calls(redis_server, "hgetall"), _calls(redis_server, "hmget"))
    for _ in range(10_000):
        assert a.marks(S) is snapshot
        assert a.killed(S, P) is None
    assert (_calls(redis_server, "hgetall"), _calls(redis_server, "hmget")) == before


def test_stale_after_zero_reads_redis_every_time(redis_server: RedisServer) -> None:
    """The exact mode: every ``marks()``/``killed()`` is one read; the documented cost of
    bypassing the cache. Out-of-band writes (not through a store) are seen at once."""
    exact = RedisStore(redis_server.url, stale_after=0)
    # a long staleness bound: on a loaded machine the default 0.5 s could pass during the
    # test and make the cached store read Redis again
    cached = RedisStore(redis_server.url, stale_after=60)
    try:
        exact.mark(S, ["x"], 1.0)
        assert exact.marks(S) is exact.marks(S)        # unchanged: the same snapshot
        cached.marks(S)
        raw = redis_server.client()
        raw.hset(f"fp:m:{{{S}}}", "planted", "2.0")     # behind the stores' backs
        raw.hset("fp:kills", f"s:{S}", "planted kill")
        raw.close()
        assert dict(exact.marks(S)) == {"x": 1.0, "planted": 2.0}
        assert exact.killed(S) == "planted kill"
        # the cached store does not learn of writes that bypass the scripts (documented)
        assert dict(cached.marks(S)) == {"x": 1.0}
    finally:
        exact.close()
        cached.close()


def test_a_concurrent_reader_converges_within_the_bound(
        replicas: tuple[RedisStore, RedisStore]) -> None:
    """a marks with increasing times while 4 threads read on b (filling b's cache while
    invalidations arrive): b ends with a's last write, within ``stale_after``."""
    a, b = replicas
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                b.marks(S).get("x")
                time.sleep(0)                          # let the writer and listener in
        except BaseException as e:
            errors.append(e)

    pool = [threading.Thread(target=read) for _ in range(4)]
    for t in pool:
        t.start()
    try:
        for i in range(1, 201):
            a.mark(S, ["x"], float(i))
    finally:
        done = time.perf_counter()
        took = _until(lambda: b.marks(S).get("x") == 200.0, 2.0)
        stop.set()
        for t in pool:
            t.join()
    assert errors == []
    assert took is not None and took < b.stale_after + 0.05, took
    assert time.perf_counter() - done < 2.0


def test_a_fill_that_raced_an_invalidation_is_not_cached(
        replicas: tuple[RedisStore, RedisStore]) -> None:
    """The cache guard, made deterministic: b reads the marks, then (before b stores the
    answer) a writes and b's listener processes the invalidation. b must not cache the
    answer it read before a's write, or it would serve it until the next invalidation."""
    a, b = replicas
    a.mark(S, ["x"], 1.0)
    real = b._r.hgetall
    raced: list[bool] = []

    def hgetall_then_race(key: str) -> dict:
        answer = real(key)                            # read before a's write ...
        if not raced:
            raced.append(True)
            seq = b._inv_seq
            a.mark(S, ["x"], 2.0)                     # ... a writes, b hears of it ...
            assert _until(lambda: b._inv_seq > seq) is not None
        return answer                                 # ... then b would cache the answer

    b._r.hgetall = hgetall_then_race  # type: ignore[method-assign]
    assert dict(b.marks(S)) == {"x": 1.0}              # an answer from before the write
    assert dict(b.marks(S)) == {"x": 2.0}              # not served again from the cache


def test_the_marks_cache_is_bounded(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, cache_sessions=3)
    try:
        for i in range(10):
            store.mark(f"s{i}", ["x"], float(i))
            assert dict(store.marks(f"s{i}")) == {"x": float(i)}
        assert len(store._marks) <= 3
        assert dict(store.marks("s0")) == {"x": 0.0}  # evicted, read back from Redis
    finally:
        store.close()


def test_values_are_stored_as_digests_not_in_clear(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    try:
        store.remember(S, [IBAN, "victim.secret@example.com"], "src", 1.0, ttl=60)
        raw = redis_server.client()
        dump = b"".join(raw.dump(k) or b"" for k in raw.scan_iter()) + b"".join(raw.keys())
        raw.close()
        assert b"DE89370400440532013000" not in dump
        assert b"victim.secret" not in dump
        assert store.seen(S, [IBAN], now=2.0) == {"DE89370400440532013000": "src"}
    finally:
        store.close()


def test_purge_deletes_the_keys(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    try:
        idle = session_key(P, "idle")
        store.touch(idle, P, 10.0)
        store.mark(idle, ["x"], 10.0)
        store.append_event(idle, {"e": 1}, 10.0)
        store.remember(idle, [IBAN], "src", 10.0, ttl=5)
        store.consume(BudgetKey.session("b", idle), 1, 10, 60, 10.0)
        store.consume(BudgetKey.session("b", idle), 1, 10, None, 10.0)
        store.touch(S, P, 100.0)
        store.mark(S, ["keep"], 100.0)
        assert store.purge(now=100.0, idle_seconds=50.0) >= 3
        raw = redis_server.client()
        left = sorted(k.decode() for k in raw.scan_iter())
        raw.close()
        assert not [k for k in left if idle in k], left
        assert {"fp:sessions", f"fp:s:{{{S}}}", f"fp:m:{{{S}}}", f"fp:mc:{{{S}}}"} <= set(left)
        assert store.purge(now=100.0, idle_seconds=50.0) == 0     # idempotent
        # an active session's ended windows leave its set of counters too
        for t in (100.0, 200.0):
            assert store.consume(BudgetKey.session("per-minute", S), 1, 1, 60, t).ok
        assert store.purge(now=200.0, idle_seconds=1e9) == 1
        raw = redis_server.client()
        members = raw.smembers(f"fp:sb:{{{S}}}")
        raw.close()
        assert [m.decode().rsplit(":", 2)[1:] for m in members] == [["60.0", "3"]]
    finally:
        store.close()


def test_purge_in_batches_skips_killed_sessions(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    try:
        for i in range(450):                         # more than two batches of 200
            store.touch(f"s{i:03d}", P, float(i))
            if i % 3 == 0:
                store.kill(f"s{i:03d}", "operator", float(i))
        assert store.purge(now=1000.0, idle_seconds=1.0) == 300
        assert len(store.list_sessions()) == 150
        assert all(s.killed == "operator" for s in store.list_sessions())
    finally:
        store.close()


def test_purge_on_one_replica_drops_the_others_caches(
        replicas: tuple[RedisStore, RedisStore]) -> None:
    a, b = replicas
    a.mark(S, ["x"], 1.0)
    assert dict(b.marks(S)) == {"x": 1.0}
    a.purge(now=1000.0, idle_seconds=10.0)
    assert _until(lambda: dict(b.marks(S)) == {}, b.stale_after) is not None


def test_touch_is_debounced(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, touch_interval=1.0)
    try:
        store.touch(S, P, 10.0)
        store.touch(S, P, 10.5)                       # within the interval: no write
        assert store.list_sessions()[0].last_seen == 10.0
        store.touch(S, P, 11.5)
        assert store.list_sessions()[0].last_seen == 11.5
    finally:
        store.close()


def test_odd_keys_and_reasons_round_trip(redis_server: RedisServer,
                                         replicas: tuple[RedisStore, RedisStore]) -> None:
    a, b = replicas
    odd = "sess}{with\nnewline and ünïcode 🙂"
    b.killed(odd)
    a.kill(odd, "réason\nwith \"quotes\" / and 🙂", 1.0)
    assert _until(lambda: b.killed(odd) is not None, b.stale_after) is not None
    assert b.killed(odd) == "réason\nwith \"quotes\" / and 🙂"
    a.mark(odd, ["lábel:🙂"], 2.0)
    assert _until(lambda: dict(b.marks(odd)) == {"lábel:🙂": 2.0}, b.stale_after) is not None
    assert [s.session for s in a.list_sessions()] == [odd]
    key = BudgetKey.session("b:udget:", "x:1:y")    # separators inside the names
    assert a.consume(key, 5, 5, None, 1.0).ok
    assert a.consume(BudgetKey.session("b", "udget::x:1:y"), 5, 5, None, 1.0).ok
    wide = BudgetKey.session("bü:dget", "sé:ssion🙂")   # byte lengths, not characters
    assert a.consume(wide, 5, 5, 60, 1.0).ok
    assert not a.consume(wide, 1, 5, 60, 2.0).ok
    assert a.purge(now=1000.0, idle_seconds=1e9) >= 1
    raw = redis_server.client()
    assert raw.smembers("fp:sb:{sé:ssion🙂}") == set()    # cut apart by byte length
    raw.close()
    assert a.consume(wide, 5, 5, 60, 1.0).ok           # the ended window was dropped


def test_close_stops_the_threads_and_refuses_calls(redis_server: RedisServer) -> None:
    before = {t.name for t in threading.enumerate()}
    store = RedisStore(redis_server.url)
    store.subscribe("approvals", lambda m: None)
    store.close()
    store.close()                                      # idempotent
    assert {t.name for t in threading.enumerate() if t.is_alive()} <= before
    with pytest.raises(StateError, match="closed"):
        store.publish("approvals", {})
    with pytest.raises(StateError, match="closed"):
        store.subscribe("approvals", lambda m: None)


def test_a_malformed_invalidation_resynchronises(redis_server: RedisServer,
                                                 replicas: tuple[RedisStore, RedisStore]) -> None:
    """Anything on the invalidation channel that the scripts did not write makes the
    listener drop its caches, reconnect and reload the kills."""
    _, b = replicas
    b.mark(S, ["x"], 1.0)
    assert b.marks(S) is b.marks(S)
    reconnected = threading.Event()
    b.subscribe("probe", lambda m: None, on_reconnect=reconnected.set)
    raw = redis_server.client()
    raw.hset("fp:kills", f"s:{S}", "planted while b trusted its cache")
    raw.publish("fp:inv", b"not json")
    raw.close()
    assert reconnected.wait(2.0)
    assert b.killed(S) == "planted while b trusted its cache"     # reloaded
    assert dict(b.marks(S)) == {"x": 1.0}
