"""Held calls do not slow anyone else: latency of an unrelated allowed MCP call through the
real proxy with 0 calls held vs. with 50 held at once.

    .venv/bin/python tests/benchmarks/held_calls.py [--quick]

One ``fiveplane run`` (real MCP server with ``--json-response``), one keep-alive client
sending ``tools/call echo`` (2026-07-28 stateless, allowed). The 50 held calls come from
another client on 50 connections, in their own session: 25 ``refund`` calls escalated to a
person (approval holds) and 25 ``get_customer`` calls deferred until a ``list_tickets``
completes (parked), each with distinct arguments. Blocks alternate within one run: N echo
calls with nothing held, then N with the 50 held (held blocks start once the evidence log
shows all 50 held); the order flips every round so a noisy phase of a shared machine hits
both. Between held blocks the held session is killed (``POST /api/sessions/ID/kill``), which
releases all 50 as denied. Target: p50 with 50 held ≤ 1.10 times the p50 with none (issue 6).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import BENCH_DIR, Section, ensure_paths, fmt, md_table, percentile, verdict

ensure_paths()

import httpx  # noqa: E402
from clients import JSONRPC_ACCEPT, modern_request  # noqa: E402
from proxy_overhead import (  # noqa: E402
    FIVEPLANE_READY,
    MCP_READY,
    Processes,
    _raise_interrupt,
    make_series,
    proxy_cpu_ns,
)

from proxy.audit.verify import log_files  # noqa: E402
from proxy.state import session_key  # noqa: E402

HELD = 50
TARGET_RATIO = 1.10
FULL = {"rounds": 10, "block": 100, "warmup": 100}
QUICK = {"rounds": 4, "block": 50, "warmup": 50}
TOKEN = "bench-control-token-0123456789"
IDLE_SECONDS = 1.0


def write_policy(path: Path, mcp_port: int) -> None:
    path.write_text(f"""\
version: 1
name: bench-held-calls
defaults: {{effect: deny, approval_timeout: 600}}
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{mcp_port}]}}]
mcp_servers:
  bench: {{url: "http://127.0.0.1:{mcp_port}/mcp"}}
rules:
  - {{id: bench-echo, match: {{server: bench, tool: [echo, get_customer, list_tickets]}},
     effect: allow}}
  - {{id: bench-refund, match: {{server: bench, tool: refund}}, effect: escalate}}
  - id: bench-customer-after-tickets
    match: {{server: bench, tool: get_customer}}
    effect: defer
    until: {{completed: {{server: bench, tool: list_tickets}}}}
    timeout: 600
""")


class HeldCalls:
    """50 calls held in the proxy, sent from a thread with its own event loop."""

    def __init__(self, proxy_url: str, mcp_url: str, session: str) -> None:
        self.proxy_url, self.mcp_url, self.session = proxy_url, mcp_url, session
        self.answers: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)
        self.thread.start()

    async def _send(self) -> None:
        limits = httpx.Limits(max_connections=HELD + 5)
        async with httpx.AsyncClient(proxy=self.proxy_url, trust_env=False, timeout=900,
                                     limits=limits) as client:
            async def one(i: int) -> None:
                if i % 2:
                    params = {"name": "refund", "arguments": {"customer_id": f"h-{i}",
                                                              "amount": 1000 + i}}
                else:
                    params = {"name": "get_customer", "arguments": {"customer_id": f"h-{i}"}}
                body, headers = modern_request("tools/call", params, id=i + 1)
                r = await client.post(self.mcp_url, json=body, headers={
                    "Content-Type": "application/json", "Accept": JSONRPC_ACCEPT,
                    "X-Fiveplane-Session": self.session, **headers})
                self.answers.append(r.json())
            await asyncio.gather(*(one(i) for i in range(HELD)))


def held_count(state: Path) -> int:
    total = 0
    for path in log_files(state / "audit"):
        total += path.read_bytes().count(b'"outcome":"held"')
    return total


def run(quick: bool = False, log: Callable[[str], None] = print) -> Section:
    cfg = QUICK if quick else FULL
    section = Section(f"Held calls: an allowed call with 0 vs. {HELD} calls held in the proxy")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = tempfile.TemporaryDirectory(prefix="fiveplane-held-")
    work = Path(tmp.name)
    procs = Processes(work)
    try:
        from mitmproxy import certs
        confdir = work / "certs"
        certs.CertStore.create_store(confdir, "mitmproxy", 2048)
        py = sys.executable
        mcp = procs.start("mcp-server", [py, BENCH_DIR / "mcp_server_bench.py", "--port", "0",
                                         "--json-response", "--name", "bench"], MCP_READY)
        mcp_url = f"http://127.0.0.1:{mcp.port}/mcp"
        policy = work / "policy.yaml"
        write_policy(policy, mcp.port)
        state = work / "state"
        five = procs.start("fiveplane", [
            py, "-m", "proxy", "run", "--policy", policy, "--listen", "127.0.0.1:0",
            "--certs", confdir, "--state-dir", state, "--reload-interval", "0",
            "--control", "127.0.0.1:0", "--control-token", TOKEN], FIVEPLANE_READY)
        proxy_url = f"http://127.0.0.1:{five.port}"
        found = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", five.output())
        if found is None:
            raise RuntimeError(f"no control API in the proxy output:\n{five.output()}")
        control = found.group(1)
        series = make_series("mcp-2026", "fiveplane", proxy_url, "", mcp_url,
                             cfg["warmup"] + 2 * cfg["rounds"] * cfg["block"])
        series.run(cfg["warmup"], timed=False)
        base: list[int] = []
        held: list[int] = []
        releases: list[float] = []
        idle: dict[str, list[float]] = {"none": [], "held": []}   # proxy CPU ms per s, idle

        def idle_cpu(condition: str) -> None:
            cpu0, t0 = proxy_cpu_ns(five.proc.pid), time.monotonic()
            time.sleep(IDLE_SECONDS)
            idle[condition].append((proxy_cpu_ns(five.proc.pid) - cpu0) / 1e6
                                   / (time.monotonic() - t0))
        log(f"  held: {cfg['rounds']} rounds of {cfg['block']} calls per condition")
        with httpx.Client(trust_env=False, timeout=30,
                          headers={"authorization": f"Bearer {TOKEN}"}) as api:
            for rnd in range(cfg["rounds"]):
                for condition in (("none", "held") if rnd % 2 == 0 else ("held", "none")):
                    if condition == "none":
                        idle_cpu("none")
                        before = len(series.latencies_ns)
                        series.run(cfg["block"], timed=True)
                        base.extend(series.latencies_ns[before:])
                        continue
                    task = f"held-{rnd}"
                    already = held_count(state)
                    calls = HeldCalls(proxy_url, mcp_url, task)
                    deadline = time.monotonic() + 60
                    while held_count(state) < already + HELD:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"only {held_count(state) - already} of "
                                                 f"{HELD} calls were held")
                        time.sleep(0.05)
                    idle_cpu("held")
                    before = len(series.latencies_ns)
                    series.run(cfg["block"], timed=True)
                    held.extend(series.latencies_ns[before:])
                    if calls.answers:
                        raise AssertionError(f"a held call was answered: {calls.answers[0]}")
                    t0 = time.monotonic()
                    r = api.post(f"{control}/api/sessions/{session_key(None, task)}/kill",
                                 json={"reason": "benchmark round over"})
                    r.raise_for_status()
                    calls.thread.join(30)
                    releases.append(time.monotonic() - t0)
                    denied = [a for a in calls.answers
                              if "killed" in a.get("error", {}).get("message", "")]
                    if len(denied) != HELD:
                        raise AssertionError(f"{len(denied)} of {HELD} held calls were "
                                             f"released as denied: {calls.answers[:2]}")
        series.client.close()
        for lat in (base, held):
            lat.sort()
        p50 = {k: percentile(v, 50) / 1e3 for k, v in (("none", base), ("held", held))}
        p99 = {k: percentile(v, 99) / 1e3 for k, v in (("none", base), ("held", held))}
        ratio50, ratio99 = p50["held"] / p50["none"], p99["held"] / p99["none"]
        ok = ratio50 <= TARGET_RATIO
        rows = [[f"{n} held", str(len(v)), fmt(p50[k], 0), fmt(p99[k], 0)]
                for n, k, v in ((0, "none", base), (HELD, "held", held))]
        idle_ms = {k: percentile(sorted(v), 50) for k, v in idle.items()}
        rows = [[*r, fmt(idle_ms[k], 1)] for r, k in zip(rows, ("none", "held"), strict=True)]
        section.add(md_table(["allowed echo call with", "calls", "p50 µs", "p99 µs",
                              "idle proxy CPU ms/s"], rows))
        section.add(md_table(
            ["ratio (held / none)", "value", f"target ≤ {TARGET_RATIO:.2f}"],
            [["p50", f"{ratio50:.3f}x", verdict(ok)], ["p99", f"{ratio99:.3f}x", "(reported)"]]))
        section.add(
            f"{cfg['rounds']} rounds, each one block of {cfg['block']} sequential calls per "
            f"condition on one keep-alive connection, order flipped every round, after "
            f"{cfg['warmup']} warm-up calls. Held: {HELD // 2} escalations (approval holds) "
            f"and {HELD - HELD // 2} deferred calls (parked until a completion that never "
            "comes), on 50 connections in one session; each held block starts once the "
            "evidence log shows all 50 held. Releasing them by killing the session took "
            f"p50 {fmt(percentile(sorted(releases), 50), 2)} s (all {HELD} answered "
            "with a denial naming the kill).")
        section.add(f"Idle proxy CPU: CPU time of the proxy process per second of wall time "
                    f"while no request is in flight ({IDLE_SECONDS:g} s before each block, "
                    "median): what holding the calls costs by itself.")
        section.data["held_ratio_p50"] = ratio50
        if not ok:
            section.missed.append(f"held calls: p50 with {HELD} held is {ratio50:.2f}x the "
                                  f"p50 with none (target ≤ {TARGET_RATIO:.2f}x)")
        return section
    finally:
        procs.stop_all()
        tmp.cleanup()
        signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(run(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True)).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
