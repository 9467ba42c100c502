"""Cost of `narrow` and `mode: shadow` on the request path, against a baseline in the same run.

``Gateway.request`` for one MCP ``tools/call`` (translation, session context, decision,
evidence to a ``MemorySink``), interleaved round-robin so load on a shared machine hits
every variant alike:

* baseline: an allow rule, nothing else;
* idle narrow + shadow rules: the policy has a narrow rule and a shadow rule for other
  tools (what a policy pays for having them at all);
* shadow matched: a shadow rule matches the call (the would-be decision is computed);
* narrowed: a narrow rule clamps the amount (compose, apply, re-decide, rewrite the body).

    python tests/benchmarks/narrow_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import time

from common import ensure_paths, fmt, md_table, percentile

ensure_paths()

from proxy.evidence import MemorySink  # noqa: E402
from proxy.gateway import Gateway  # noqa: E402
from proxy.policy import compile_text  # noqa: E402
from proxy.translate import RequestView  # noqa: E402

HEAD = """\
version: 1
name: bench
mcp_servers: {bank: {url: "https://bank.example.com/mcp"}}
rules:
  - {id: pay, match: {server: bank, tool: send_money}, effect: allow}
"""
IDLE = """\
  - id: cap-other
    match: {server: bank, tool: transfer}
    effect: narrow
    narrow: {args: {amount: {max: 500}}}
  - {id: trial-other, mode: shadow, match: {server: bank, tool: transfer}, effect: deny}
"""
SHADOW = """\
  - {id: trial, mode: shadow, match: {server: bank, tool: send_money}, effect: deny}
"""
NARROW = """\
  - id: cap
    match: {server: bank, tool: send_money}
    effect: narrow
    narrow: {args: {amount: {max: 500}}}
"""
VARIANTS = {"baseline": HEAD, "idle narrow + shadow rules": HEAD + IDLE,
            "shadow matched": HEAD + SHADOW, "narrowed (900 -> 500)": HEAD + NARROW}

VIEW = RequestView(
    "POST", "https", "bank.example.com", 443, "/mcp",
    (("content-type", "application/json"), ("x-fiveplane-session", "bench")),
    json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "send_money", "arguments": {"recipient": "DE89", "amount": 900}}}).encode())


class _Sink(MemorySink):
    def record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        commit = super().record(*args, **kwargs)
        self.records.clear()  # bounded memory over a long run
        return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    gateways = {name: Gateway(compile_text(text, "bench.yaml"), _Sink())
                for name, text in VARIANTS.items()}
    for gw in gateways.values():  # warm caches, check each variant does what it says
        result = gw.request(VIEW)
        assert result.forwarded, result.decision
    samples: dict[str, list[float]] = {name: [] for name in gateways}
    for _ in range(args.rounds):
        for name, gw in gateways.items():
            start = time.perf_counter_ns()
            gw.request(VIEW)
            samples[name].append((time.perf_counter_ns() - start) / 1000)
    base = sorted(samples["baseline"])
    rows = []
    for name, values in samples.items():
        values.sort()
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append([name, fmt(p50, 1), fmt(p99, 1), fmt(p50 / percentile(base, 50)) + "x"])
    print(f"Gateway.request, one MCP tools/call, {args.rounds} interleaved rounds (µs)\n")
    print(md_table(["variant", "p50", "p99", "p50 / baseline"], rows))


if __name__ == "__main__":
    main()
