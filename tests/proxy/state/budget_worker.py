"""A worker process for the cross-process budget test (not a test module).

    python budget_worker.py DB_PATH

Reads one JSON command per line from stdin — ``{"budget": ID, "calls": N, "amount": A,
"limit": L, "start_at": T, "pause": P, "racy": false}`` — waits until wall-clock time
``T`` (so all workers start together), makes N ``consume`` calls on the global budget ID
with ``P`` seconds between calls (as an agent's calls have gaps; it lets the processes
interleave instead of one taking the lock back at once), and prints the number that passed
and the number of ``StateError``s as one JSON line. Exits on an empty line / EOF.

``racy``: a deliberately broken consume (read, then write in a second transaction), to
show the harness notices over-spending.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from proxy.state import MAX_AMOUNT, BudgetKey, BudgetResult, SqliteStore, StateError


def main() -> int:
    store = SqliteStore(sys.argv[1], shared=True, busy_timeout=10.0)

    def racy_consume(key: BudgetKey, amount: float, limit: float, window: None,
                     now: float) -> BudgetResult:
        used = store.budget_used(key, window, now)
        time.sleep(0.0001)
        if used + amount > limit:
            return BudgetResult(False, used, used, limit)
        store.release(key, 0, window, now)   # (no-op) keeps the shape of two transactions
        return store.consume(key, amount, MAX_AMOUNT, window, now)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        cmd = json.loads(line)
        key = BudgetKey.global_(cmd["budget"])
        delay = cmd["start_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        consume = racy_consume if cmd.get("racy") else store.consume
        pause = cmd.get("pause", 0)
        passed = errors = 0
        for _ in range(cmd["calls"]):
            try:
                passed += consume(key, cmd["amount"], cmd["limit"], None, time.time()).ok
            except StateError:
                errors += 1
            if pause:
                time.sleep(pause)
        print(json.dumps({"passed": passed, "errors": errors}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
