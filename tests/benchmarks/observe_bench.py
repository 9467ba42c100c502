"""Telemetry overhead: per-request latency with metrics + structured logs on vs. off,
both proxies in the same run.

Two ``fiveplane run`` processes with the same policy: ``on`` (``/metrics`` served, JSON
decision log at info level, the activity feed) and ``off`` (``--metrics off
--decision-log off``; the activity feed is always on: the console reads it). The traffic is
MCP ``tools/call`` over one keep-alive connection per proxy against the e2e MCP server
(``--json-response``): four allowed ``echo`` calls, then one ``delete_all`` the policy
denies (a deny is what the decision log writes a line for and what most counters count).

100 warm-up requests per proxy, then N (2,000; ``--quick`` 500) in 10 interleaved rounds,
the order alternating per round, so a noisy machine slows both alike. Every response is
checked. Reported: p50/p90/p99 and mean per request, the ratio on/off (target: p50 and
mean within 2 %), and ``/metrics`` of the ``on`` proxy afterwards (series count, and the
decision counters checked against the requests sent).
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import BENCH_DIR, Section, ensure_paths, fmt, md_table, percentile, verdict

ensure_paths()

import httpx  # noqa: E402
from clients import JSONRPC_ACCEPT, modern_request  # noqa: E402
from proxy_overhead import (  # noqa: E402
    FIVEPLANE_READY,
    KEEP_ALIVE_S,
    MCP_READY,
    ROUNDS,
    Processes,
    Series,
    _raise_interrupt,
)

FULL_N = 2_000
QUICK_N = 500
WARMUP = 100
TARGET = 1.02
DENY_EVERY = 5
DISTINCT_TOOLS = 10_000


def write_policy(path: Path, mcp_port: int) -> None:
    path.write_text(f"""\
version: 1
name: bench-observe
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{mcp_port}]}}]
mcp_servers:
  bench: {{url: "http://127.0.0.1:{mcp_port}/mcp"}}
rules:
  - {{id: bench-echo, match: {{server: bench, tool: echo}}, effect: allow}}
  - {{id: bench-no-wipe, match: {{server: bench, tool: delete_all}}, effect: deny,
      reason: the benchmark's deny}}
""")


def _check(resp: httpx.Response) -> str | None:
    if resp.status_code != 200:
        return f"status {resp.status_code}: {resp.text[:300]}"
    msg = resp.json()
    if "result" in msg:
        return None
    rules = ((msg.get("error") or {}).get("data") or {}).get("rule_ids")
    return None if rules == ["bench-no-wipe"] else f"unexpected reply {resp.text[:300]}"


def make_series(target: str, proxy_url: str, mcp_url: str, total: int) -> Series:
    client = httpx.Client(proxy=proxy_url, trust_env=False, timeout=30.0,
                          limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_S))
    bodies, headers = [], []
    for i in range(total):
        tool = "delete_all" if i % DENY_EVERY == DENY_EVERY - 1 else "echo"
        body, hdrs = modern_request("tools/call", {"name": tool,
                                                   "arguments": {"text": "bench"}}, id=i + 1)
        bodies.append(json.dumps(body).encode())
        headers.append({"Content-Type": "application/json", "Accept": JSONRPC_ACCEPT, **hdrs})
    post = client.post
    return Series("mcp", target, client, lambda i: post(mcp_url, content=bodies[i],
                                                        headers=headers[i]), _check)


def _stats(lat_ns: list[int]) -> dict[str, float]:
    s = sorted(lat_ns)
    return {"p50": percentile(s, 50) / 1e6, "p90": percentile(s, 90) / 1e6,
            "p99": percentile(s, 99) / 1e6, "mean": sum(s) / len(s) / 1e6}


def run(quick: bool = False, log: Callable[[str], None] = print) -> Section:
    n = QUICK_N if quick else FULL_N
    per_round = n // ROUNDS
    section = Section("Telemetry overhead: metrics and structured logs on vs. off")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = tempfile.TemporaryDirectory(prefix="fiveplane-observe-bench-")
    work = Path(tmp.name)
    procs = Processes(work)
    series: dict[str, Series] = {}
    try:
        from mitmproxy import certs

        confdir = work / "certs"
        certs.CertStore.create_store(confdir, "mitmproxy", 2048)
        py = sys.executable
        mcp = procs.start("mcp-server", [py, BENCH_DIR / "mcp_server_bench.py", "--port",
                                         "0", "--json-response", "--name", "bench"], MCP_READY)
        mcp_url = f"http://127.0.0.1:{mcp.port}/mcp"
        policy = work / "policy.yaml"
        write_policy(policy, mcp.port)
        flags = {"on": ["--log-format", "json", "--log-level", "info"],
                 "off": ["--metrics", "off", "--decision-log", "off"]}
        proxies = {}
        for tag, extra in flags.items():
            proxies[tag] = procs.start(f"fiveplane-{tag}", [
                py, "-m", "proxy", "run", "--policy", policy, "--listen", "127.0.0.1:0",
                "--certs", confdir, "--state-dir", work / f"state-{tag}", "--reload-interval",
                "0", "--control", "127.0.0.1:0", "--control-token", "bench-token-0123456789",
                *extra], FIVEPLANE_READY)
        for tag, proxy in proxies.items():
            series[tag] = make_series(tag, f"http://127.0.0.1:{proxy.port}", mcp_url,
                                      WARMUP + n)
            series[tag].proxy_pid = proxy.proc.pid
        for s in series.values():
            s.run(WARMUP, timed=False)
        order = list(series)
        for rnd in range(ROUNDS):
            for tag in (order if rnd % 2 == 0 else order[::-1]):
                gc.collect()
                gc.disable()
                try:
                    series[tag].run(per_round, timed=True)
                finally:
                    gc.enable()
            log(f"  observe: round {rnd + 1}/{ROUNDS} done")
        for p in (mcp, *proxies.values()):
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} died during the run:\n{p.output()[-3000:]}")
        import re

        control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxies["on"].output())
        assert control, proxies["on"].output()[-2000:]
        scraped = httpx.get(control.group(1) + "/metrics", trust_env=False, timeout=10).text
        log_lines = sum(1 for line in proxies["on"].output().splitlines()
                        if '"event":"decision"' in line)
        cardinality = distinct_tools(f"http://127.0.0.1:{proxies['on'].port}", mcp_url,
                                     control.group(1), log)
    finally:
        for s in series.values():
            s.client.close()
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        tmp.cleanup()

    on, off = _stats(series["on"].latencies_ns), _stats(series["off"].latencies_ns)
    rows = [[tag, len(series[tag].latencies_ns), fmt(st["p50"], 3), fmt(st["p90"], 3),
             fmt(st["p99"], 3), fmt(st["mean"], 3)]
            for tag, st in (("off", off), ("on", on))]
    section.add(md_table(["telemetry", "requests", "p50 ms", "p90 ms", "p99 ms", "mean ms"],
                         rows, align=["l", "r", "r", "r", "r", "r"]))
    p50_ratio, mean_ratio = on["p50"] / off["p50"], on["mean"] / off["mean"]
    section.add(md_table(
        ["ratio on/off", "value", "difference", "target"],
        [["p50", f"{p50_ratio:.3f}", f"{(p50_ratio - 1) * 100:+.1f} %",
          f"≤ {TARGET:.2f} {verdict(p50_ratio <= TARGET)}"],
         ["mean", f"{mean_ratio:.3f}", f"{(mean_ratio - 1) * 100:+.1f} %",
          f"≤ {TARGET:.2f} {verdict(mean_ratio <= TARGET)}"]],
        align=["l", "r", "r", "l"]))
    families = _families(scraped)
    sent = WARMUP + n
    denies = sum(1 for i in range(sent) if i % DENY_EVERY == DENY_EVERY - 1)
    counted = families.get(('fiveplane_rule_decisions_total',
                            (("rule", "bench-no-wipe"), ("verdict", "deny"))), 0.0)
    series_count = len(families)
    section.add(
        f"`/metrics` of the `on` proxy afterwards: {series_count} series; "
        f"`fiveplane_rule_decisions_total{{rule=\"bench-no-wipe\",verdict=\"deny\"}}` = "
        f"{counted:.0f} for {denies} denied requests sent "
        f"({'match' if counted == denies else 'MISMATCH'}); {log_lines} JSON decision log "
        f"lines. {WARMUP} warm-up + {n} timed requests per proxy in {ROUNDS} interleaved "
        f"rounds, one keep-alive connection each, every {DENY_EVERY}th call denied.")
    for name, ratio in (("p50", p50_ratio), ("mean", mean_ratio)):
        if ratio > TARGET:
            section.missed.append(f"telemetry overhead {name} {ratio:.3f} > {TARGET}")
    if counted != denies:
        section.missed.append(f"metrics counted {counted:.0f} denies, {denies} were sent")
    section.data["ratio_p50"] = p50_ratio
    before, after, seconds, denied = cardinality
    section.add(
        f"Cardinality: {DISTINCT_TOOLS:,} calls with distinct tool names through the `on` "
        f"proxy ({denied:,} denied by the default, {seconds:.0f} s): `/metrics` had "
        f"{before} series before and {after} after (tool names are never labels).")
    if after != before:
        section.missed.append(f"distinct tool names added {after - before} series")
    log("  observe: in-process gateway decisions ...")
    section.add(in_process(quick))
    return section


def in_process(quick: bool) -> str:
    """The observers' own cost per decision, without the network noise: the real Gateway
    (MemorySink evidence) deciding the same MCP requests with telemetry on vs. none,
    interleaved in blocks."""
    import io
    import logging
    import time

    from proxy.evidence import MemorySink
    from proxy.gateway import Gateway
    from proxy.observe import Telemetry
    from proxy.observe.logs import configure_logging
    from proxy.policy import compile_file
    from proxy.translate import RequestView

    with tempfile.TemporaryDirectory() as d:
        policy = Path(d) / "p.yaml"
        write_policy(policy, 9)
        compiled = compile_file(policy)
    configure_logging("info", "json", io.StringIO())
    telemetry = Telemetry.create()
    gateways = {"off": Gateway(compiled, MemorySink()),
                "on": Gateway(compiled, MemorySink(), observers=telemetry.observers())}
    views = []
    for i in range(DENY_EVERY):
        tool = "delete_all" if i == DENY_EVERY - 1 else "echo"
        body, hdrs = modern_request("tools/call", {"name": tool, "arguments": {"text": "b"}})
        views.append(RequestView("POST", "http", "127.0.0.1", 9, "/mcp", (
            ("content-type", "application/json"),
            *((k.lower(), v) for k, v in hdrs.items())), json.dumps(body).encode()))
    blocks, per = (10, 1000) if quick else (20, 2500)
    times: dict[str, list[int]] = {"off": [], "on": []}
    pc = time.perf_counter_ns
    for b in range(blocks):
        for tag in (("off", "on") if b % 2 == 0 else ("on", "off")):
            gw = gateways[tag]
            for sink in (gw._evidence,):
                sink.records.clear()       # type: ignore[attr-defined]
            gc.collect()
            gc.disable()
            try:
                for i in range(per):
                    t0 = pc()
                    gw.request(views[i % DENY_EVERY])
                    times[tag].append(pc() - t0)
            finally:
                gc.enable()
    logging.getLogger().handlers.clear()
    off, on = sorted(times["off"]), sorted(times["on"])
    rows = [[tag, len(v), fmt(percentile(v, 50) / 1e3, 1), fmt(percentile(v, 99) / 1e3, 1),
             fmt(sum(v) / len(v) / 1e3, 1)] for tag, v in (("off", off), ("on", on))]
    added = (sum(on) / len(on) - sum(off) / len(off)) / 1e3
    return (md_table(["in-process gateway.request", "decisions", "p50 µs", "p99 µs",
                      "mean µs"], rows, align=["l", "r", "r", "r", "r"])
            + f"\n\nTelemetry adds {added:.1f} µs per decision on average (metrics, JSON "
            "decision log line for each deny, activity feed), measured in-process without "
            "network noise.")


def distinct_tools(proxy_url: str, mcp_url: str, control: str,
                   log: Callable[[str], None]) -> tuple[int, int, float, int]:
    """Series count before and after DISTINCT_TOOLS calls naming a new tool each."""
    import time

    with httpx.Client(proxy=proxy_url, trust_env=False, timeout=30.0) as client:
        def send(name: str, i: int) -> httpx.Response:
            body, hdrs = modern_request("tools/call", {"name": name, "arguments": {}}, id=i)
            return client.post(mcp_url, content=json.dumps(body).encode(), headers={
                "Content-Type": "application/json", "Accept": JSONRPC_ACCEPT, **hdrs})

        send("tool-first", 0)            # opens the default rule's series
        before = len(_families(httpx.get(control + "/metrics", trust_env=False).text))
        started = time.monotonic()
        denied = 0
        for i in range(DISTINCT_TOOLS):
            r = send(f"tool-{i:05d}-distinct", i + 1)
            denied += "error" in r.json()
            if (i + 1) % 2500 == 0:
                log(f"  observe: {i + 1:,} distinct tool names sent")
        seconds = time.monotonic() - started
        after = len(_families(httpx.get(control + "/metrics", trust_env=False).text))
    return before, after, seconds, denied


def _families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    section = run(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(section.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
