"""Adjudication latency: ``Adjudicator.decide(action)`` against synthetic policies of
10 to 10,000 rules.

Each policy is generated in blocks of 10 rules (7 MCP + 3 HTTP) on its own MCP server
and HTTP hosts, so N rules means N/10 servers:

* MCP: exact tool lists, a ``get_*`` glob, argument predicates (``gt``/``le`` on a
  refund amount, an escalate rule above it, ``regex`` on an e-mail address, ``in`` on a
  priority), and a deny rule on ``delete_*``/``export_*``. Every block has the same shape,
  so a larger policy differs from a smaller one only in size (no cross-server rules:
  those would change which rules overlap as N grows, not just N);
* HTTP: an exact host with ``GET``/``POST`` on a ``/v1/items/**`` path glob, a
  ``*.svcB.example.net`` suffix host with ``GET /status/*``, and a ``DELETE`` deny;
* network: every host in ``network.allow`` (exact and ``*.suffix``), a deny list.

The pool of actions (built before timing, verdicts checked against expectations) mixes
allowed calls, deny-rule hits, argument-predicate hits (allow, escalate, no match, a
missing argument that fails closed), unmatched calls (default deny), HTTP allowed and
denied, and destinations refused by the network plane. Every action carries a resolved
public address, as the addon passes one for DNS names.

Timing: each ``decide()`` call is timed alone with ``time.perf_counter_ns()``; the
median cost of the timer pair itself (an empty loop of the same shape) is measured in
the same rounds and subtracted. Policy sizes are interleaved in rounds so machine noise
spreads over all of them. Decision caches inside the endpoint plane are warm (the pool
is replayed), as they are for an agent repeating its calls.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import REPO_ROOT, Section, ensure_paths, fmt, md_table, percentile, verdict

ensure_paths()

from proxy.action import Action, Kind, StopPoint  # noqa: E402
from proxy.engine import Adjudicator  # noqa: E402
from proxy.policy.compiler import compile_text  # noqa: E402

SIZES = (10, 100, 1_000, 10_000)
FULL_DECISIONS = 100_000
QUICK_DECISIONS = 20_000
ROUNDS = 5
POOL_SIZE = 4_096
WARMUP_PASSES = 3            # the whole pool this many times before timing
SEED = 20260728
PUBLIC_ADDRESS = ("93.184.215.14",)

TARGET_P50_US = 5.0          # at 1,000 rules
TARGET_P99_US = 20.0         # at 1,000 rules
TARGET_GROWTH = 1.5          # p50(10,000) / p50(10)
TARGET_N = 1_000


# --- policy generation --------------------------------------------------------------


def generate_policy(n_rules: int) -> str:
    """YAML text of a policy with exactly ``n_rules`` rules (a multiple of 10)."""
    if n_rules % 10:
        raise ValueError("n_rules must be a multiple of 10")
    blocks = n_rules // 10
    out = [
        "version: 1",
        f"name: bench-{n_rules}",
        "description: synthetic benchmark policy",
        "defaults:",
        "  effect: deny",
        "network:",
        "  allow:",
        '    - {id: mcp-hosts, host: "*.mcp.example.com", ports: [443], schemes: [https]}',
    ]
    for b in range(blocks):
        out.append(f"    - {{id: api-{b}, host: api{b}.example.com, ports: [443]}}")
        out.append(f'    - {{id: svc-{b}, host: "*.svc{b}.example.net"}}')
    out += [
        "  deny:",
        '    - {id: paste-sites, host: ["pastebin.com", "*.pastebin.com"]}',
        '    - {id: file-drops, host: ["transfer.sh", "*.file.io"]}',
        "mcp_servers:",
    ]
    for b in range(blocks):
        out.append(f"  srv{b}: {{url: 'https://s{b}.mcp.example.com/mcp'}}")
    out.append("rules:")
    for b in range(blocks):
        s = f"srv{b}"
        out += [
            f"  - {{id: b{b}-read, match: {{server: {s}, tool: [search, list_items]}}, "
            "effect: allow}",
            f'  - {{id: b{b}-get, match: {{server: {s}, tool: "get_*"}}, effect: allow}}',
            f"  - {{id: b{b}-refund-small, match: {{server: {s}, tool: refund, "
            "args: {amount: {gt: 0, le: 100}}}, effect: allow}",
            f"  - {{id: b{b}-refund-large, match: {{server: {s}, tool: refund, "
            "args: {amount: {gt: 100}}}, effect: escalate, reason: refunds over 100 need finance}",
            f"  - {{id: b{b}-email, match: {{server: {s}, tool: send_email, "
            "args: {to: {regex: '[a-z0-9._-]+@example\\.com'}}}, effect: allow}",
            f"  - {{id: b{b}-priority, match: {{server: {s}, tool: set_priority, "
            "args: {level: {in: [low, normal, high]}}}, effect: allow}",
            f'  - {{id: b{b}-no-bulk, match: {{server: {s}, tool: ["delete_*", "export_*"]}}, '
            "effect: deny, "
            "reason: bulk export and deletion are not allowed}",
            f"  - {{id: b{b}-api, match: {{host: api{b}.example.com, method: [GET, POST], "
            'path: "/v1/items/**"}, effect: allow}',
            f'  - {{id: b{b}-status, match: {{host: "*.svc{b}.example.net", method: GET, '
            'path: "/status/*"}, effect: allow}',
            f"  - {{id: b{b}-api-delete, match: {{host: api{b}.example.com, method: DELETE}}, "
            "effect: deny}",
        ]
    return "\n".join(out) + "\n"


# --- the action pool ----------------------------------------------------------------


def _mcp(b: int, name: str, args: dict[str, Any] | None = None,
         server: str | None = None) -> Action:
    return Action(
        Kind.MCP, StopPoint.REQUEST_BODY, "https", f"s{b}.mcp.example.com", 443,
        method="POST", path="/mcp", server=server or f"srv{b}", mcp_method="tools/call",
        name=name, arguments=args or {}, rpc_id=7, addresses=PUBLIC_ADDRESS,
    )


def _http(host: str, method: str, path: str) -> Action:
    return Action(Kind.HTTP, StopPoint.REQUEST_BODY, "https", host, 443, method=method,
                  path=path, addresses=PUBLIC_ADDRESS)


# (category, weight, expected to proceed, factory(block, rng) -> Action)
CATEGORIES: list[tuple[str, int, bool, Callable[[int, random.Random], Action]]] = [
    ("mcp allow (exact)", 15, True,
     lambda b, r: _mcp(b, r.choice(["search", "list_items"]), {"q": "order 42"})),
    ("mcp allow (glob get_*)", 10, True,
     lambda b, r: _mcp(b, r.choice(["get_customer", "get_order"]), {"id": "c-1"})),
    ("mcp args: le/gt allow", 8, True,
     lambda b, r: _mcp(b, "refund", {"customer_id": "c-1", "amount": r.randint(1, 100)})),
    ("mcp args: gt escalate", 4, False,
     lambda b, r: _mcp(b, "refund", {"customer_id": "c-1", "amount": r.randint(101, 5000)})),
    ("mcp args: regex allow", 5, True,
     lambda b, r: _mcp(b, "send_email", {"to": "jane.doe@example.com", "body": "hi"})),
    ("mcp args: regex miss", 3, False,
     lambda b, r: _mcp(b, "send_email", {"to": "x@evil.example.org", "body": "hi"})),
    ("mcp args: in allow", 4, True,
     lambda b, r: _mcp(b, "set_priority", {"level": r.choice(["low", "normal", "high"])})),
    ("mcp args: missing (fail closed)", 2, False,
     lambda b, r: _mcp(b, "refund", {"customer_id": "c-1"})),
    ("mcp deny rule", 10, False,
     lambda b, r: _mcp(b, r.choice(["delete_record", "export_all"]), {})),
    ("mcp unmatched tool", 8, False,
     lambda b, r: _mcp(b, "rename_file", {"path": "/a"})),
    ("mcp unknown server", 2, False,
     lambda b, r: _mcp(b, "search", {"q": "x"}, server=f"https://rogue{b}.example.org/mcp")),
    ("http allow (exact host)", 10, True,
     lambda b, r: _http(f"api{b}.example.com", r.choice(["GET", "POST"]),
                        f"/v1/items/{r.randint(1, 50)}")),
    ("http allow (*.suffix)", 5, True,
     lambda b, r: _http(f"eu{r.randint(1, 3)}.svc{b}.example.net", "GET", "/status/health")),
    ("http deny rule", 6, False,
     lambda b, r: _http(f"api{b}.example.com", "DELETE", f"/v1/items/{r.randint(1, 50)}")),
    ("http unmatched", 4, False,
     lambda b, r: _http(f"api{b}.example.com", "PUT", "/v2/other")),
    ("network deny list", 2, False,
     lambda b, r: _http(r.choice(["pastebin.com", "eu.pastebin.com"]), "GET", "/raw/x")),
    ("network not allowed", 2, False,
     lambda b, r: _http("evil.example.org", "POST", "/upload")),
]


Pool = list[tuple[str, bool, Action]]


def build_pool(blocks: int, size: int = POOL_SIZE, seed: int = SEED) -> Pool:
    """``size`` actions on the first ``blocks`` servers/host groups, drawn by weight."""
    rng = random.Random(seed + blocks)
    weights = [w for _, w, _, _ in CATEGORIES]
    pool = []
    for _ in range(size):
        name, _, proceeds, make = rng.choices(CATEGORIES, weights)[0]
        pool.append((name, proceeds, make(rng.randrange(blocks), rng)))
    return pool


# --- timing ------------------------------------------------------------------------


def time_calls(decide: Callable[[Action], Any], seq: list[Action]) -> list[int]:
    pc = time.perf_counter_ns
    out = []
    append = out.append
    for a in seq:
        t0 = pc()
        decide(a)
        t1 = pc()
        append(t1 - t0)
    return out


def time_empty(seq: list[Action]) -> list[int]:
    pc = time.perf_counter_ns
    out = []
    append = out.append
    for _a in seq:
        t0 = pc()
        t1 = pc()
        append(t1 - t0)
    return out


def _noop(_action: Action) -> None:
    return None


@dataclass
class SizeRun:
    label: str
    n_rules: int
    compile_s: float
    adjudicator: Adjudicator
    seq: list[Action]
    cats: list[str]
    pool: Pool
    samples: list[int] = field(default_factory=list)
    by_category: dict[str, list[int]] = field(default_factory=dict)


def _check_pool(adj: Adjudicator, pool: Pool) -> list[str]:
    wrong = []
    for name, proceeds, action in pool:
        d = adj.decide(action)
        if d.verdict.proceeds is not proceeds or "adjudicator.error" in d.rule_ids:
            wrong.append(f"{name}: {action.summary()} -> {d.verdict.value} {d.rule_ids} "
                         f"({d.reason})")
    return wrong


def profile_decide(run: SizeRun, calls: int, top: int = 14) -> str:
    """cProfile ``calls`` decisions; markdown table of the top functions by own time.
    cProfile inflates absolute times several-fold, so only shares and call counts are shown."""
    decide = run.adjudicator.decide
    seq = (run.seq * (calls // len(run.seq) + 1))[:calls]
    prof = cProfile.Profile()
    prof.enable()
    for a in seq:
        decide(a)
    prof.disable()
    raw: dict[Any, Any] = pstats.Stats(prof, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]:
        where = filename.split(str(REPO_ROOT) + "/")[-1]
        label = f"`{func}` ({where}:{line})" if line else f"`{func}`"
        rows.append([label, fmt(nc / calls, 2), fmt(100 * tt / total, 1) + " %",
                     fmt(100 * ct / total, 1) + " %"])
    return md_table(["function", "calls / decision", "own time", "incl. callees"], rows)


def _prepare(label: str, n: int, adj: Adjudicator, compile_s: float, pool: Pool,
             decisions: int) -> SizeRun:
    wrong = _check_pool(adj, pool)
    if wrong:
        raise AssertionError(f"{len(wrong)} unexpected verdicts for {label}, e.g.:\n"
                             + "\n".join(wrong[:5]))
    rng = random.Random(SEED)
    order = list(range(len(pool)))
    idx: list[int] = []
    while len(idx) < decisions:
        rng.shuffle(order)
        idx.extend(order)
    idx = idx[:decisions]
    return SizeRun(label, n, compile_s, adj, [pool[i][2] for i in idx],
                   [pool[i][0] for i in idx], pool)


def run(quick: bool = False, sizes: tuple[int, ...] = SIZES, log: Callable[[str], None] = print
        ) -> Section:
    decisions = QUICK_DECISIONS if quick else FULL_DECISIONS
    per_round = decisions // ROUNDS
    section = Section("Adjudication: `Adjudicator.decide()` latency")
    runs: list[SizeRun] = []
    for n in sizes:
        text = generate_policy(n)
        t0 = time.perf_counter()
        policy = compile_text(text, f"<bench-{n}>")
        compile_s = time.perf_counter() - t0
        assert len(policy.rules) == n, (len(policy.rules), n)
        adj = Adjudicator(policy)
        runs.append(_prepare(f"{n:,}", n, adj, compile_s, build_pool(n // 10), decisions))
        log(f"  adjudication: N={n:>6,} compiled in {compile_s:.2f} s, pool verdicts checked")
    largest = runs[-1]
    # Diagnostic: the largest policy, but every action on the first server / host group
    # (the N=10 pool's working set). Same algorithm, small working set: separates
    # per-decision work that grows with N from memory-locality effects.
    diag = _prepare(f"{largest.n_rules:,} (pool on 1 server)", largest.n_rules,
                    largest.adjudicator, largest.compile_s, build_pool(1), decisions)
    timed = [*runs, diag]

    # warm-up: caches, branch predictors, the specializing interpreter
    for r in timed:
        for _ in range(WARMUP_PASSES):
            for _name, _p, a in r.pool:
                r.adjudicator.decide(a)
    overhead: list[int] = []
    noop: list[int] = []
    gc.collect()
    gc.disable()
    try:
        for rnd in range(ROUNDS):
            lo, hi = rnd * per_round, (rnd + 1) * per_round
            shift = rnd % len(timed)
            for r in timed[shift:] + timed[:shift]:
                overhead += time_empty(r.seq[lo:hi])
                if r is largest:
                    noop += time_calls(_noop, r.seq[lo:hi])
                r.samples += time_calls(r.adjudicator.decide, r.seq[lo:hi])
            log(f"  adjudication: round {rnd + 1}/{ROUNDS} done")
    finally:
        gc.enable()
    overhead.sort()
    timer_ns = percentile(overhead, 50)
    noop_net = sorted(max(0, s - timer_ns) for s in noop)

    rows = []
    p50s: dict[str, float] = {}
    at_target: tuple[float, float] | None = None
    for r in timed:
        net = sorted(max(0, s - timer_ns) for s in r.samples)
        p50, p99, mx = (percentile(net, 50) / 1e3, percentile(net, 99) / 1e3, net[-1] / 1e3)
        p50s[r.label] = p50
        mean = sum(net) / len(net) / 1e3
        target = ""
        if r is not diag and r.n_rules == TARGET_N:
            at_target = (p50, p99)
            target = (f"p50 ≤ {TARGET_P50_US:g} µs: {verdict(p50 <= TARGET_P50_US)}; "
                      f"p99 ≤ {TARGET_P99_US:g} µs: {verdict(p99 <= TARGET_P99_US)}")
        servers = len({a.server for a in r.seq if a.kind is Kind.MCP and "://" not in a.server})
        rows.append([r.label, f"{servers:,}", fmt(r.compile_s, 2) if r is not diag else "",
                     f"{len(net):,}", fmt(p50, 2), fmt(p99, 2), fmt(mx, 1), fmt(mean, 2),
                     target])
        for cat, s_ in zip(r.cats, r.samples, strict=True):
            r.by_category.setdefault(cat, []).append(max(0, s_ - timer_ns))
    rows.append(["baseline: no-op call", "", "", f"{len(noop_net):,}",
                 fmt(percentile(noop_net, 50) / 1e3, 3), fmt(percentile(noop_net, 99) / 1e3, 3),
                 fmt(noop_net[-1] / 1e3, 1), fmt(sum(noop_net) / len(noop_net) / 1e3, 3), ""])
    section.add(md_table(
        ["rules N", "servers in pool", "compile s", "decisions", "p50 µs", "p99 µs", "max µs",
         "mean µs", "target (N = 1,000)"],
        rows, align=["l"] + ["r"] * 7 + ["l"]))

    section.data["p50_us"] = {r.n_rules: p50s[r.label] for r in runs}
    first, last = runs[0], runs[-1]
    growth = p50s[last.label] / p50s[first.label] if p50s[first.label] > 0 else float("inf")
    notes = [
        f"- growth p50({last.label}) / p50({first.label}) = **{growth:.2f}x** "
        f"(target ≤ {TARGET_GROWTH:g}x: {verdict(growth <= TARGET_GROWTH)}); "
        f"with the {last.label}-rule policy but the 1-server pool: "
        f"{p50s[diag.label] / p50s[first.label]:.2f}x",
        f"- timer overhead (median of an empty `perf_counter_ns()` pair, measured in the same "
        f"rounds, subtracted from every sample): {timer_ns} ns; empty-loop p99 "
        f"{percentile(overhead, 99)} ns, max {overhead[-1]:,} ns",
        "- baseline: a Python call of a no-op function, timed the same way (machine speed "
        "reference)",
        f"- {decisions:,} timed decisions per row in {ROUNDS} interleaved rounds of "
        f"{per_round:,}; pool of {POOL_SIZE:,} actions drawn over all servers/hosts of the "
        f"policy (shuffled, verdicts checked), warm-up {WARMUP_PASSES}x the pool, GC off while "
        "timing",
    ]
    if growth > TARGET_GROWTH:
        section.missed.append(f"adjudication growth {growth:.2f}x > {TARGET_GROWTH:g}x")
    if at_target is not None:
        if at_target[0] > TARGET_P50_US:
            section.missed.append(
                f"adjudication p50 {at_target[0]:.2f} µs > {TARGET_P50_US:g} µs at N=1,000")
        if at_target[1] > TARGET_P99_US:
            section.missed.append(
                f"adjudication p99 {at_target[1]:.2f} µs > {TARGET_P99_US:g} µs at N=1,000")
    section.add("\n".join(notes))

    cat_rows = []
    for c, weight, proceeds, _ in CATEGORIES:
        row: list[object] = [c, f"{weight} %", "allow" if proceeds else "refuse"]
        for r in runs:
            s_ = sorted(r.by_category.get(c, []))
            row.append(fmt(percentile(s_, 50) / 1e3, 2) if s_ else "-")
        cat_rows.append(row)
    section.add("p50 µs per action category:\n\n" + md_table(
        ["category", "share", "expect", *(f"N={r.label}" for r in runs)], cat_rows,
        align=["l", "r", "l"] + ["r"] * len(runs)))

    if section.missed:
        calls = 50_000 if quick else 200_000
        for r in {id(r): r for r in runs if r.n_rules in (TARGET_N, last.n_rules)}.values():
            log(f"  adjudication: profiling N={r.label} ({calls:,} decisions)")
            section.add(f"cProfile, N={r.label}, {calls:,} decisions (a target was missed; "
                        "share of total profiled time, top 14 by own time):\n\n"
                        + profile_decide(r, calls))
    return section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(run(args.quick).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
