"""Budgets are exact under concurrency: threads sharing a store, several connections to one
file, several processes sharing one file. A budget of 1,000 charged with calls of 10 lets
exactly 100 pass — every round, never 99 or 101."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.state import MAX_AMOUNT, BudgetKey, BudgetResult, MemoryStore, SqliteStore, StateStore

ROUNDS = 20
LIMIT, AMOUNT, PASSES = 1000, 10, 100
WORKER = Path(__file__).with_name("budget_worker.py")


def _hammer(stores: list[StateStore], key: BudgetKey, threads: int, calls: int) -> list[int]:
    """``threads`` threads (spread over ``stores``), each making ``calls`` consume calls at
    once; returns how many passed per thread."""
    start = threading.Barrier(threads)
    passed = [0] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        store = stores[i % len(stores)]
        try:
            start.wait()
            n = 0
            for _ in range(calls):
                n += store.consume(key, AMOUNT, LIMIT, None, time.time()).ok
            passed[i] = n
        except BaseException as e:  # surfaced below
            errors.append(e)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    return passed


STORES: dict[str, Callable[[Path], StateStore]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite-memory": lambda tmp: SqliteStore(":memory:"),
    "sqlite-file": lambda tmp: SqliteStore(tmp / "state.db"),
}


@pytest.mark.parametrize("backend", list(STORES))
def test_twenty_threads_one_store(backend: str, tmp_path: Path) -> None:
    store = STORES[backend](tmp_path)
    try:
        for r in range(ROUNDS):
            key = BudgetKey.global_(f"refunds-{r}")
            passed = _hammer([store], key, threads=20, calls=100)
            assert sum(passed) == PASSES, f"round {r}: {sum(passed)} passed"
            assert store.budget_used(key, None, time.time()) == LIMIT
    finally:
        store.close()


class RacyStore(MemoryStore):
    """A broken budget (check, then add in a second step): what the tests must catch."""

    def consume(self, key: BudgetKey, amount: float, limit: float,
                window_seconds: float | None, now: float) -> BudgetResult:
        used = self.budget_used(key, window_seconds, now)
        time.sleep(0)                                   # let another thread in
        if used + amount > limit:
            return BudgetResult(False, used, used, limit)
        return super().consume(key, amount, MAX_AMOUNT, window_seconds, now)


def test_the_thread_harness_catches_a_racy_budget() -> None:
    store = RacyStore()
    totals = [sum(_hammer([store], BudgetKey.global_(f"r{r}"), threads=20, calls=100))
              for r in range(3)]
    assert max(totals) > PASSES


def test_several_connections_to_one_file(tmp_path: Path) -> None:
    """Four stores (four connections) in one process: BEGIN IMMEDIATE, not the lock."""
    stores = [SqliteStore(tmp_path / "state.db", shared=True) for _ in range(4)]
    try:
        for r in range(ROUNDS):
            key = BudgetKey.session("refunds", f"s-{r}")
            passed = _hammer(list(stores), key, threads=8, calls=30)
            assert sum(passed) == PASSES, f"round {r}: {sum(passed)} passed"
            assert all(s.budget_used(key, None, 0) == LIMIT for s in stores)
    finally:
        for s in stores:
            s.close()


def _round(procs: list[subprocess.Popen[str]], budget: str, racy: bool = False) -> list[dict]:
    """One round: every worker makes 70 calls at once (210 calls for 100 passes), with
    0.2 ms between its calls so the processes interleave."""
    cmd = {"budget": budget, "calls": 70, "amount": AMOUNT, "limit": LIMIT,
           "start_at": time.time() + 0.02, "pause": 0.0002, "racy": racy}
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(json.dumps(cmd) + "\n")
        p.stdin.flush()
    return [json.loads(p.stdout.readline()) for p in procs if p.stdout]


def test_three_processes_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SqliteStore(db).close()                      # create the schema once, up front
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"ready": True}
        check = SqliteStore(db, shared=True)
        for r in range(ROUNDS):
            results = _round(procs, f"refunds-{r}")
            assert [x["errors"] for x in results] == [0, 0, 0]
            assert sum(x["passed"] for x in results) == PASSES, f"round {r}: {results}"
            assert check.budget_used(BudgetKey.global_(f"refunds-{r}"), None, 0) == LIMIT
        # The harness notices a broken budget: read-then-write in two transactions
        # over-spends in some round (about every second one on a 2-core machine).
        totals = [sum(x["passed"] for x in _round(procs, f"racy-{r}", racy=True))
                  for r in range(10)]
        assert max(totals) > PASSES, f"the racy consume never over-spent: {totals}"
        check.close()
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
