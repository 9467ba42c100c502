"""Audit benchmark: durable group-commit append throughput, verify and explain throughput,
and the in-process cost the audit adds to one decision.

    .venv/bin/python tests/benchmarks/audit_bench.py [--quick]

* append: C asyncio tasks (concurrent proxied requests) each loop ``commit = append(...)``
  then ``await commit.wait()`` — a record counts only once it is fsynced. Two record kinds:
  ``append`` of a prebuilt schema-v1 body (the sink alone: serialize, chain, Merkle, write,
  fsync) and ``record`` (the full path the gateway uses: build the body from an ``Action``
  and ``Decision``, HMAC every argument value, AES-GCM-seal the values, then the sink).
  Latency is append → durable per commit; batches = fsyncs of the log file.
* verify: ``verify()`` over the largest log written (best of 3).
* explain: ``explain_all()`` re-adjudicating every record of a smaller log.
* per-decision cost: ``Adjudicator.decide`` alone vs decide + ``record()`` (caller CPU, not
  waiting) vs decide + record + ``await wait()`` one at a time (a full fsync per decision —
  the worst case, no other traffic to share the batch with). The cost per *proxied request*
  (through the real proxy, audit on vs off in the same run) is ``audit_cost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import Section, ensure_paths, fmt, md_table, percentile, verdict

ensure_paths()

from proxy import testing  # noqa: E402
from proxy.audit import AuditLog, PolicyStore, explain_all, verify  # noqa: E402
from proxy.audit.explain import tally  # noqa: E402
from proxy.audit.schema import build_body  # noqa: E402
from proxy.engine import Adjudicator  # noqa: E402
from proxy.principal import Link, Principal, PrincipalKind  # noqa: E402

TARGET_APPEND = 20_000
TARGET_VERIFY = 100_000

POLICY = """
version: 1
name: bench
defaults: {effect: deny}
network:
  allow: [{host: crm.example.com}, {host: api.example.com}]
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - id: crm-read
    match: {server: crm, tool: "get_*"}
    effect: allow
  - id: refund-cap
    match: {server: crm, tool: refund, args: {amount: {gt: 100}}}
    effect: deny
  - id: refund-ok
    match: {server: crm, tool: refund}
    effect: allow
"""

CHAIN = Principal((Link("alice@example.com", PrincipalKind.HUMAN),
                   Link("planner", PrincipalKind.AGENT), Link("executor", PrincipalKind.AGENT)))


def workload() -> tuple[Adjudicator, list[Any]]:
    policy = testing.policy(POLICY)
    adjudicator = Adjudicator(policy)
    actions = [
        testing.mcp_call("get_customer", id=42, fields=["name", "email"], principal=CHAIN),
        testing.mcp_call("refund", amount=500, to="DE89370400440532013000", principal=CHAIN),
        testing.mcp_call("refund", amount=20, to="DE89370400440532013000",
                         memo="duplicate charge on order 1234"),
        testing.http_request("GET", "api.example.com", "/v1/items"),
    ]
    return adjudicator, [(a, adjudicator.decide(a)) for a in actions]


class FsyncCounter:
    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self._real = os.fsync

    def __enter__(self) -> FsyncCounter:
        def fsync(fd: int) -> None:
            self.fds[fd] = self.fds.get(fd, 0) + 1
            self._real(fd)

        os.fsync = fsync  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real  # type: ignore[assignment]


def run_append(directory: Path, mode: str, total: int, concurrency: int) -> dict[str, Any]:
    _, pool = workload()
    log = AuditLog(directory, f"bench-{mode}-{concurrency}")
    bodies = [build_body(log.sealer, a, d, decision_id=uuid.uuid4().hex, outcome="forwarded",
                         adjudication_us=3.1, total_us=11.7, time=time.time())
              for a, d in pool]
    per_task = total // concurrency
    ids = [uuid.uuid4().hex for _ in range(per_task * concurrency)]  # the gateway's, not ours
    latencies: list[float] = []

    async def agent(k: int) -> None:
        lat = latencies.append
        for i in range(per_task):
            t0 = time.perf_counter()
            if mode == "append":
                commit = log.append(bodies[(k + i) % len(bodies)])
            else:
                action, decision = pool[(k + i) % len(pool)]
                commit = log.record(action, decision, outcome="forwarded",
                                    decision_id=ids[k * per_task + i], adjudication_us=3.1,
                                    total_us=11.7)
            await commit.wait()
            lat(time.perf_counter() - t0)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(agent(k) for k in range(concurrency)))
        return time.perf_counter() - start

    with FsyncCounter() as counter:
        elapsed = asyncio.run(main())
        batches = counter.fds.get(log._fd, 0)
    log.close()
    n = per_task * concurrency
    latencies.sort()
    return {"mode": mode, "concurrency": concurrency, "records": n, "elapsed": elapsed,
            "rate": n / elapsed, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "batches": batches,
            "batch": n / max(batches, 1), "path": log.path}


def run_cost(directory: Path, n: int) -> list[tuple[str, float]]:
    adjudicator, pool = workload()
    actions = [a for a, _ in pool]
    log = AuditLog(directory, "bench-cost")
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        adjudicator.decide(actions[i % len(actions)])
    out.append(("decide only", (time.perf_counter() - t0) / n * 1e6))
    commits = []
    t0 = time.perf_counter()
    for i in range(n):
        action = actions[i % len(actions)]
        decision = adjudicator.decide(action)
        commits.append(log.record(action, decision, outcome="forwarded",
                                  decision_id=uuid.uuid4().hex))
    out.append(("decide + record() (caller CPU)", (time.perf_counter() - t0) / n * 1e6))
    commits[-1].wait_sync(60)

    async def serial(m: int) -> float:
        t = time.perf_counter()
        for i in range(m):
            action = actions[i % len(actions)]
            decision = adjudicator.decide(action)
            await log.record(action, decision, outcome="forwarded",
                             decision_id=uuid.uuid4().hex).wait()
        return (time.perf_counter() - t) / m * 1e6

    out.append(("decide + record + await durable, one at a time", asyncio.run(serial(200))))
    log.close()
    return out


def raw_baselines(path: Path, batch: int, directory: Path) -> tuple[float, float]:
    """Floors for the same log, in the same run: (records/s of ``os.write`` + ``fsync`` of
    its record lines in batches of ``batch`` lines, no encoding, chain or Merkle tree;
    records/s of reading the file and ``json.loads`` + SHA-256 of every line)."""
    import hashlib
    import json

    lines = path.read_bytes().splitlines(keepends=True)[1:]
    batch = max(1, int(batch))
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "raw.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    t0 = time.perf_counter()
    try:
        for i in range(0, len(lines), batch):
            os.write(fd, b"".join(lines[i:i + batch]))
            os.fsync(fd)
    finally:
        os.close(fd)
    write_rate = len(lines) / (time.perf_counter() - t0)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for line in path.read_bytes().splitlines():
            json.loads(line)
            hashlib.sha256(line).digest()
        best = min(best, time.perf_counter() - t0)
    return write_rate, len(lines) / best


def run(quick: bool = False, log: Any = None, directory: Path | None = None) -> Section:
    """The audit section of the benchmark report (``run.py``)."""
    def say(msg: str) -> None:
        if log is None:
            print(msg, file=sys.stderr, flush=True)
        else:
            log(msg)

    total = 10_000 if quick else 100_000
    levels = (64, 256) if quick else (16, 64, 256, 1024)
    base = directory or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    section = Section("Audit: durable group commit, verify, explain")
    try:
        rows = []
        results = []
        for mode in ("append", "record"):
            for c in levels:
                r = run_append(base / f"{mode}-{c}", mode, total, c)
                results.append(r)
                rows.append([mode, c, f"{r['records']:,}", fmt(r["rate"], 0),
                             fmt(r["p50_ms"]), fmt(r["p99_ms"]), f"{r['batches']:,}",
                             fmt(r["batch"], 1)])
                say(f"  audit: {mode} c={c}: {r['rate']:,.0f} records/s")
        section.add(md_table(["kind", "concurrency", "records", "durable records/s",
                              "p50 ms", "p99 ms", "fsyncs", "records/fsync"], rows))
        best_r = max((r for r in results if r["mode"] == "record"), key=lambda r: r["rate"])
        best = best_r["rate"]
        if best < TARGET_APPEND:
            section.missed.append(f"audit append {best:,.0f} < {TARGET_APPEND:,} records/s")

        biggest = max(results, key=lambda r: (r["records"], r["path"].stat().st_size))
        times = [verify(biggest["path"]) for _ in range(3)]
        assert all(t.ok for t in times), times[0].summary()
        v_elapsed = min(t.elapsed for t in times)
        v_rate = times[0].records / v_elapsed
        size_mb = biggest["path"].stat().st_size / 1e6
        if v_rate < TARGET_VERIFY:
            section.missed.append(f"audit verify {v_rate:,.0f} < {TARGET_VERIFY:,} records/s")
        raw_write, raw_read = raw_baselines(best_r["path"], best_r["batch"], base / "raw")
        section.data.update(append=best, verify=v_rate, raw_write=raw_write, raw_read=raw_read)

        small = base / "explain"
        policy = testing.policy(POLICY)
        PolicyStore(small / "policies").put(policy.source)
        _, pool = workload()
        n_explain = 2_000 if quick else 20_000
        with AuditLog(small, "bench-explain") as alog:
            for i in range(n_explain):
                a, d = pool[i % len(pool)]
                alog.record(a, d, outcome="forwarded", decision_id=uuid.uuid4().hex)
        t0 = time.perf_counter()
        counts = tally(explain_all(alog.path, small / "policies"))
        e_rate = n_explain / (time.perf_counter() - t0)
        assert counts["mismatch"] == 0 and counts["error"] == 0, counts

        best_append = max(r["rate"] for r in results if r["mode"] == "append")
        section.add(md_table(["measure", "value", "baseline (same run)",
                              "ratio value / baseline", "target", "result"], [
            ["durable append, full record() path, best", f"{best:,.0f} records/s",
             f"{raw_write:,.0f} records/s: os.write + fsync of the same lines, "
             f"{best_r['batch']:.0f} per fsync", f"{best / raw_write:.2f}x",
             f"≥ {TARGET_APPEND:,}", verdict(best >= TARGET_APPEND)],
            ["durable append, prebuilt body, best", f"{best_append:,.0f} records/s", "",
             f"{best_append / raw_write:.2f}x", "", ""],
            [f"verify ({times[0].records:,} records, {size_mb:,.0f} MB)",
             f"{v_rate:,.0f} records/s",
             f"{raw_read:,.0f} records/s: json.loads + SHA-256 of every line",
             f"{v_rate / raw_read:.2f}x", f"≥ {TARGET_VERIFY:,}",
             verdict(v_rate >= TARGET_VERIFY)],
            [f"explain --all ({n_explain:,} records, 0 mismatches)",
             f"{e_rate:,.0f} records/s", "", "", "", ""],
        ], align=["l", "r", "l", "r", "r", "l"]))
        cost = run_cost(base / "cost", 10_000 if quick else 50_000)
        decide = cost[0][1]
        section.add(md_table(["per decision (in process)", "µs", "added by audit µs"],
                             [[name, fmt(us, 1), "" if i == 0 else fmt(us - decide, 1)]
                              for i, (name, us) in enumerate(cost)]))
        per_record = biggest["path"].stat().st_size / max(biggest["records"], 1)
        section.add(f"- {total:,} records per append row; append: C asyncio tasks each "
                    "appending and awaiting durability (a record counts once fsynced); "
                    "verify: best of 3 over the largest log; explain re-adjudicates every "
                    f"record; about {per_record:,.0f} bytes per record line\n"
                    "- ratio = fiveplane / baseline: what the chain, Merkle tree, "
                    "canonical encoding and sealing cost over the bare write + fsync (append) "
                    "or the bare parse + hash (verify)")
    finally:
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 15 s)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir, "
                                                    "removed afterwards)")
    args = parser.parse_args()
    section = run(args.quick, directory=Path(args.dir) if args.dir else None)
    print(section.markdown())
    if section.missed:
        print("missed: " + "; ".join(section.missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
