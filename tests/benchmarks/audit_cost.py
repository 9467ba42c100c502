"""What the audit adds to one proxied request: the same ``fiveplane run`` with its evidence
sink durable (the default), batched fsync (``--audit-durability batch``), written without
fsync, and off — four processes, one policy, one upstream, measured in the same run with
interleaved rounds.

    .venv/bin/python tests/benchmarks/audit_cost.py [--quick]
    .venv/bin/python tests/benchmarks/run.py --only audit-cost

* sequential: one keep-alive client, one plain HTTP GET at a time (every request waits for
  its own fsync: the worst case for group commit); p50/p90/p99 latency, proxy CPU per
  request, and the difference to audit off.
* concurrent: C clients at once (threads, one keep-alive connection each); requests/s and
  p50 latency — concurrent decisions share one fsync.

The variants come from ``audit_variant.py`` (benchmark-only; see its docstring). The
``nofsync`` row splits the audit's cost into durability (fsync) and the rest (building,
sealing, chaining, writing the record).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import BENCH_DIR, E2E_DIR, Section, ensure_paths, fmt, md_table, percentile

ensure_paths()

from proxy_overhead import (  # noqa: E402
    FIVEPLANE_READY,
    UPSTREAM_READY,
    Processes,
    Series,
    make_series,
)

VARIANTS = ("off", "nofsync", "batch", "durable")
LABEL = {"off": "audit off (baseline)", "nofsync": "audit, no fsync",
         "batch": "audit, --audit-durability batch", "durable": "audit durable (default)"}
# (audit_variant.py mode, extra ``fiveplane run`` arguments)
LAUNCH = {"off": ("off", []), "nofsync": ("nofsync", []),
          "batch": ("durable", ["--audit-durability", "batch"]), "durable": ("durable", [])}
FULL_N, QUICK_N = 1_500, 300
WARMUP = 100
ROUNDS = 10
CONCURRENCY = 8
FULL_C_N, QUICK_C_N = 2_000, 400


def write_policy(path: Path, upstream_port: int) -> None:
    path.write_text(f"""\
version: 1
name: bench-audit-cost
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{upstream_port}]}}]
rules:
  - {{id: bench, match: {{host: 127.0.0.1, port: {upstream_port}, method: GET,
                          path: /bench}}, effect: allow}}
""")


def _stats(lat_ns: list[int]) -> dict[str, float]:
    s = sorted(lat_ns)
    return {"p50": percentile(s, 50) / 1e6, "p90": percentile(s, 90) / 1e6,
            "p99": percentile(s, 99) / 1e6}


def concurrent(url: str, upstream_url: str, total: int, clients: int) -> dict[str, float]:
    """``total`` GETs from ``clients`` threads; requests/s and p50 ms."""
    per = total // clients
    lat: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        s = make_series("http", "x", url, upstream_url, "", per)
        try:
            s.run(10, timed=False)
            barrier.wait()
            s.run(per, timed=True)
        except Exception as e:
            errors.append(repr(e))
        finally:
            s.client.close()
        with lock:
            lat.extend(s.latencies_ns)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise AssertionError(f"concurrent run failed: {errors[0]}")
    return {"rps": len(lat) / elapsed, "p50": percentile(sorted(lat), 50) / 1e6}


def run(quick: bool = False, log: Callable[[str], None] = print) -> Section:
    n = QUICK_N if quick else FULL_N
    c_n = QUICK_C_N if quick else FULL_C_N
    section = Section("Audit cost per proxied request: durable vs. batch vs. no fsync vs. off")
    tmp = tempfile.TemporaryDirectory(prefix="fiveplane-audit-cost-")
    work = Path(tmp.name)
    procs = Processes(work)
    series: dict[str, Series] = {}
    try:
        from mitmproxy import certs
        certs.CertStore.create_store(work / "certs", "mitmproxy", 2048)
        py = sys.executable
        upstream = procs.start("http-upstream", [py, E2E_DIR / "servers" / "http_upstream.py",
                                                 "--port", "0"], UPSTREAM_READY)
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        policy = work / "policy.yaml"
        write_policy(policy, upstream.port)
        for v in VARIANTS:
            (work / f"state-{v}").mkdir()
        proxies = {
            v: procs.start(f"fiveplane-{v}", [
                py, BENCH_DIR / "audit_variant.py", LAUNCH[v][0], "--policy", policy,
                "--listen", "127.0.0.1:0", "--certs", work / "certs",
                "--state-dir", work / f"state-{v}", "--reload-interval", "0",
                "--control", "off", *LAUNCH[v][1]], FIVEPLANE_READY)
            for v in VARIANTS}
        for v, p in proxies.items():
            if LAUNCH[v][0] != "durable" and "BENCHMARK ONLY" not in p.output():
                raise AssertionError(f"{v}: the variant did not take effect")
        urls = {v: f"http://127.0.0.1:{p.port}" for v, p in proxies.items()}
        log("  audit cost: " + ", ".join(f"{v} :{p.port}" for v, p in proxies.items()))
        for v in VARIANTS:
            s = make_series("http", v, urls[v], upstream_url, "", WARMUP + n)
            s.proxy_pid = proxies[v].proc.pid
            s.run(WARMUP, timed=False)
            series[v] = s
        for rnd in range(ROUNDS):
            k = rnd % len(VARIANTS)
            for v in VARIANTS[k:] + VARIANTS[:k]:
                gc.collect()
                gc.disable()
                try:
                    series[v].run(n // ROUNDS, timed=True)
                finally:
                    gc.enable()
        log("  audit cost: sequential done")
        conc: dict[str, dict[str, float]] = {}
        for v in (*VARIANTS, *reversed(VARIANTS)):   # twice, in both orders: keep the best
            r = concurrent(urls[v], upstream_url, c_n, CONCURRENCY)
            if v not in conc or r["rps"] > conc[v]["rps"]:
                conc[v] = r
        log("  audit cost: concurrent done")
        for v, p in proxies.items():
            if p.proc.poll() is not None:
                raise RuntimeError(f"{v} died during the run:\n{p.output()[-3000:]}")
        records = {v: _records(work / f"state-{v}" / "audit") for v in VARIANTS}
    finally:
        for s in series.values():
            s.client.close()
        procs.stop_all()
        tmp.cleanup()

    stats = {v: _stats(series[v].latencies_ns) for v in VARIANTS}
    cpu = {v: series[v].proxy_cpu_ns / 1e3 / len(series[v].latencies_ns) for v in VARIANTS}
    base = stats["off"]
    rows = []
    for v in VARIANTS:
        st = stats[v]
        added = "" if v == "off" else (f"+{st['p50'] - base['p50']:.3f} ms "
                                       f"({st['p50'] / base['p50']:.2f}x)")
        rows.append([LABEL[v], fmt(st["p50"], 3), fmt(st["p90"], 3), fmt(st["p99"], 3),
                     added, fmt(cpu[v], 0), f"{records[v]:,}"])
    section.add(md_table(["sequential HTTP GET", "p50 ms", "p90 ms", "p99 ms",
                          "added p50 vs. off", "proxy CPU µs/req", "records on disk"], rows))
    crow = []
    for v in VARIANTS:
        r = conc[v]
        crow.append([LABEL[v], fmt(r["rps"], 0), fmt(r["p50"], 3),
                     "" if v == "off" else f"{r['rps'] / conc['off']['rps']:.2f}x"])
    section.add(md_table([f"{CONCURRENCY} concurrent clients", "requests/s", "p50 ms",
                          "throughput vs. off"], crow))
    fsync_share = stats["durable"]["p50"] - stats["nofsync"]["p50"]
    rest = stats["nofsync"]["p50"] - base["p50"]
    section.add(
        f"{ROUNDS} interleaved rounds of {n // ROUNDS} sequential requests per variant after "
        f"{WARMUP} warm-up requests; concurrent: {c_n:,} requests per variant, run twice in "
        f"opposite orders, best kept. Of the audit's added p50 latency, fsync accounts for "
        f"{fsync_share:+.3f} ms and building + sealing + chaining + writing the record for "
        f"{rest:+.3f} ms. Same process, policy, state store and upstream in every variant; "
        f"only the evidence sink differs. {os.cpu_count()} CPUs, shared with the client.")
    section.data["audit_cost_ms"] = {v: stats[v]["p50"] for v in VARIANTS}
    return section


def _records(audit: Path) -> int:
    n = 0
    for path in audit.glob("audit-*.jsonl"):
        with open(path, "rb") as f:
            n += sum(1 for line in f if b'"type":"record"' in line)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    section = run(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(section.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
