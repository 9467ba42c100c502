"""Budgets on Redis are exact across processes, each with its own ``RedisStore``: a budget
of 1,000 charged with 200 concurrent calls of 10 lets exactly 100 pass — every round."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis_fixture import RedisServer

pytest.importorskip("redis")

from proxy.state import BudgetKey
from proxy.state.redis_store import RedisStore

ROUNDS = 20
CALLS, LIMIT, AMOUNT, PASSES = 200, 1000, 10, 100
PROCESSES, THREADS = 3, 4
FIXTURE = Path(__file__).with_name("redis_fixture.py")
PREFIX = "fp:budget-test:"


def _round(procs: list[subprocess.Popen[str]], budget: str, racy: bool = False) -> list[dict]:
    """One round: the processes make CALLS calls between them, at once (THREADS threads
    each, all starting at the same wall-clock time)."""
    start_at = time.time() + 0.05
    for i, p in enumerate(procs):
        calls = CALLS // len(procs) + (i < CALLS % len(procs))
        cmd = {"budget": budget, "calls": calls, "threads": THREADS, "amount": AMOUNT,
               "limit": LIMIT, "start_at": start_at, "racy": racy}
        assert p.stdin is not None
        p.stdin.write(json.dumps(cmd) + "\n")
        p.stdin.flush()
    return [json.loads(p.stdout.readline()) for p in procs if p.stdout]


def test_three_processes_two_hundred_concurrent_calls(redis_server: RedisServer) -> None:
    procs = [subprocess.Popen([sys.executable, str(FIXTURE), "budget-worker", redis_server.url,
                               PREFIX], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(PROCESSES)]
    check = RedisStore(redis_server.url, prefix=PREFIX)
    try:
        for p in procs:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"ready": True}
        per_process = [0] * PROCESSES
        for r in range(ROUNDS):
            results = _round(procs, f"refunds-{r}")
            assert [x["errors"] for x in results] == [0] * PROCESSES
            assert sum(x["passed"] for x in results) == PASSES, f"round {r}: {results}"
            assert check.budget_used(BudgetKey.global_(f"refunds-{r}"), None, 0) == LIMIT
            per_process = [n + x["passed"] for n, x in zip(per_process, results, strict=True)]
        assert all(per_process), f"the processes did not interleave: {per_process}"
        # The harness notices a broken budget: GET, then a second round trip to add.
        totals = [sum(x["passed"] for x in _round(procs, f"racy-{r}", racy=True))
                  for r in range(5)]
        assert max(totals) > PASSES, f"the racy consume never over-spent: {totals}"
    finally:
        check.close()
        for p in procs:
            if p.stdin:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_twenty_threads_over_four_stores(redis_server: RedisServer) -> None:
    """Four store objects (four connection pools) in one process, 20 threads."""
    stores = [RedisStore(redis_server.url) for _ in range(4)]
    try:
        for r in range(5):
            key = BudgetKey.session("refunds", f"s-{r}")
            start = threading.Barrier(20)
            passed = [0] * 20

            def run(i: int, key: BudgetKey = key, start: threading.Barrier = start,
                    passed: list[int] = passed) -> None:
                start.wait()
                for _ in range(30):
                    passed[i] += stores[i % 4].consume(key, AMOUNT, LIMIT, None,
                                                       time.time()).ok

            pool = [threading.Thread(target=run, args=(i,)) for i in range(20)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            assert sum(passed) == PASSES, f"round {r}: {sum(passed)} passed"
            assert all(s.budget_used(key, None, 0) == LIMIT for s in stores)
    finally:
        for s in stores:
            s.close()


def test_windowed_counters_expire_after_their_window(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, window_grace=60)
    try:
        now = time.time()
        key = BudgetKey.global_("per-minute")
        r = store.consume(key, 1, 10, 60, now)
        assert r.ok and r.window_end is not None
        raw = redis_server.client()
        [counter] = [k for k in raw.scan_iter(b"fp:b:*")]
        ttl = raw.ttl(counter)
        assert r.window_end - now + 60 - 2 <= ttl <= r.window_end - now + 61
        assert store.consume(BudgetKey.global_("lifetime"), 1, 10, None, now).ok
        lifetime = [k for k in raw.scan_iter(b"fp:b:*") if k != counter]
        assert [raw.ttl(k) for k in lifetime] == [-1]        # no window: kept
        raw.close()
    finally:
        store.close()


def test_large_amounts_stay_exact(redis_server: RedisServer) -> None:
    """Units near 2**53: INCRBY/DECRBY on decimal strings, never a Lua float print."""
    store = RedisStore(redis_server.url)
    try:
        key = BudgetKey.global_("big")
        big = 4_000_000_000.123456
        assert store.consume(key, big, 9e9, None, 1.0).ok
        assert store.consume(key, big, 9e9, None, 1.0).ok
        assert not store.consume(key, big, 9e9, None, 1.0).ok
        assert store.budget_used(key, None, 1.0) == 8_000_000_000.246912
        assert store.release(key, big, None, 1.0) == 4_000_000_000.123456
    finally:
        store.close()
