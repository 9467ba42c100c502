"""Scaling curves, each reported as a growth factor against its smallest point, measured
in the same run:

* decision latency vs. rules (10 → 10,000): from the adjudication section of the same run
  (re-measured briefly when that section was not run);
* decision latency vs. delegation-chain depth (1 → 8);
* decision latency vs. session history (0 → 10,000 events);
* proxy memory (RSS of the fiveplane process) vs. concurrent MCP sessions (100 →
  10,000), with bare mitmdump under the same load as the baseline.

Identity verification (``proxy/identity``) and session state (``proxy/state``) are being
integrated while this harness is written: the chain and history curves measure what
exists, and each says what it measured. To extend them when a plane lands, change
``chain_setups`` (build the adjudicator + actions for a depth) or ``history_setups``
(build the store/adjudicator + per-decision call for a history length); the timing,
growth factors and report do not change.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import gc
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BENCH_DIR, Section, ensure_paths, fmt, md_table, percentile

ensure_paths()

import adjudication  # noqa: E402

from proxy.action import Action  # noqa: E402
from proxy.engine import Adjudicator  # noqa: E402
from proxy.policy.compiler import compile_text  # noqa: E402
from proxy.principal import Link, Principal, PrincipalKind  # noqa: E402

POLICY_N = 1_000                  # rules in the policy for the chain and history curves
DEPTHS = (1, 2, 4, 8)
HISTORY = (0, 100, 1_000, 10_000)
QUICK_HISTORY = (0, 100, 1_000)
SESSIONS = (100, 1_000, 10_000)
QUICK_SESSIONS = (100, 500)
DECISIONS = 20_000
QUICK_DECISIONS = 3_000
ROUNDS = 5
CLIENT_THREADS = 8
SESSION_TIMEOUT_S = 900.0         # bound for the whole memory run of one target

Call = Callable[[], Any]


# --- timing helper ------------------------------------------------------------------------


@dataclass
class Curve:
    title: str
    x_label: str
    points: list[tuple[Any, str, Callable[[Any], Any], list[Any]]]   # (x, label, fn, args)
    samples: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _time(fn: Callable[[Any], Any], args: list[Any]) -> list[int]:
    pc = time.perf_counter_ns
    out = []
    append = out.append
    for a in args:
        t0 = pc()
        fn(a)
        t1 = pc()
        append(t1 - t0)
    return out


def _measure(curve: Curve, log: Callable[[str], None]) -> None:
    """Interleaved rounds over the curve's points, GC off, warm-up one pass."""
    for _x, _label, fn, args in curve.points:
        for a in args[:2000]:
            fn(a)
    gc.collect()
    gc.disable()
    try:
        for rnd in range(ROUNDS):
            shift = rnd % len(curve.points)
            for _x, label, fn, args in curve.points[shift:] + curve.points[:shift]:
                per = len(args) // ROUNDS
                curve.samples.setdefault(label, []).extend(
                    _time(fn, args[rnd * per:(rnd + 1) * per]))
    finally:
        gc.enable()
    log(f"  scaling: {curve.title} measured")


def _table(curve: Curve, timer_ns: int) -> str:
    rows = []
    base = None
    for _x, label, _fn, _args in curve.points:
        s = sorted(max(0, v - timer_ns) for v in curve.samples[label])
        p50, p99 = percentile(s, 50) / 1e3, percentile(s, 99) / 1e3
        base = base or p50
        rows.append([label, f"{len(s):,}", fmt(p50, 2), fmt(p99, 2),
                     f"**{p50 / base:.2f}x**" if base else "-"])
    return md_table([curve.x_label, "decisions", "p50 µs", "p99 µs", "growth p50 / first"],
                    rows, align=["l", "r", "r", "r", "r"])


def _sequence(pool: adjudication.Pool, count: int) -> list[Action]:
    rng = random.Random(adjudication.SEED)
    order = list(range(len(pool)))
    idx: list[int] = []
    while len(idx) < count:
        rng.shuffle(order)
        idx.extend(order)
    return [pool[i][2] for i in idx[:count]]


# --- chain depth ---------------------------------------------------------------------------


def plain_chain(depth: int) -> Principal:
    kinds = [PrincipalKind.HUMAN] + [PrincipalKind.AGENT] * max(0, depth - 2) + \
        ([PrincipalKind.TOOL] if depth > 1 else [])
    return Principal(tuple(Link(f"p{i}", k) for i, k in enumerate(kinds)))


def chain_setups(policy: Any, seq: list[Action], log: Callable[[str], None]
                 ) -> tuple[list[tuple[str, Adjudicator, list[Action]]], list[str], str]:
    """Per depth: (label, adjudicator, actions). Two series when the identity plane is
    importable: the chain carried on the action (engine only), and a verified delegation
    token of that depth with the identity plane deciding too."""
    out: list[tuple[str, Adjudicator, list[Action]]] = []
    notes: list[str] = []
    plain = Adjudicator(policy)
    for d in DEPTHS:
        p = plain_chain(d)
        out.append((f"depth {d}: chain on the action, engine only", plain,
                    [dataclasses.replace(a, principal=p) for a in seq]))
    verify_md = ""
    try:
        from proxy.identity import IdentityPlane, attenuate, compile_identity, keygen, mint

        priv, pub = keygen()
        now = time.time()
        caps = [{"server": "*"}, {"host": "*"}]
        config, issues = compile_identity(
            {"anonymous": "deny", "trusted_roots": [{"name": "bench", "key": pub.decode()}]})
        if config is None:
            raise RuntimeError(f"compile_identity: {issues}")
        plane = IdentityPlane(config, policy.version)
        adj = Adjudicator(policy, extra_planes=(plane,))
        verify_rows = []
        first_verify = 0.0
        tok = mint(priv, ("alice", "human"), caps, ttl=86_400, now=now)
        for d in range(1, max(DEPTHS) + 1):
            if d > 1:
                tok = attenuate(tok, (f"agent-{d}", "agent"), None, ttl=86_400, now=now)
            if d not in DEPTHS:
                continue
            text = tok.to_text()
            chain = config.verifier.verify(text, now)
            if not hasattr(chain, "principal"):
                raise RuntimeError(f"token of depth {d} did not verify: {chain}")
            acts = [dataclasses.replace(a, principal=chain.principal) for a in seq]
            wrong = sum(1 for a, b in zip(seq[:2000], acts[:2000], strict=True)
                        if plain.decide(a).verdict.proceeds != adj.decide(b).verdict.proceeds)
            if wrong:
                notes.append(f"depth {d}: {wrong} of 2,000 verdicts differ from anonymous")
            out.append((f"depth {d}: verified token + identity plane", adj, acts))
            cold = []
            for _ in range(200):
                config.verifier.clear()
                t0 = time.perf_counter_ns()
                config.verifier.verify(text, now)
                cold.append(time.perf_counter_ns() - t0)
            cold.sort()
            p50 = percentile(cold, 50) / 1e3
            first_verify = first_verify or p50
            verify_rows.append([str(d), f"{len(text):,}", fmt(p50, 1),
                                fmt(percentile(cold, 99) / 1e3, 1),
                                f"**{p50 / first_verify:.2f}x**"])
        verify_md = ("Token verification when the token is new (cache cleared; once per token, "
                     "then cached by digest), 200 verifications per depth:\n\n"
                     + md_table(["depth", "token bytes", "p50 µs", "p99 µs",
                                 "growth p50 / depth 1"], verify_rows))
        notes.append("identity plane: `proxy.identity` (tokens minted with `mint`, extended "
                     "with `attenuate`, verified by the policy's `Verifier`, `IdentityPlane` "
                     "added to the adjudicator; capabilities `server: *`, `host: *` so the "
                     "chain admits the whole pool and verdicts stay comparable)")
    except Exception as e:  # the identity plane is being integrated: report, don't fail
        notes.append(f"identity plane not measured: {e!r}")
        log(f"  scaling: identity plane not measured: {e!r}")
    return out, notes, verify_md


# --- session history -----------------------------------------------------------------------


def history_setups(adj: Adjudicator, action: Action, lengths: tuple[int, ...],
                   work: Path, log: Callable[[str], None]
                   ) -> tuple[list[tuple[str, Callable[[Any], Any]]], list[str]]:
    """Per store and history length: (label, per-decision call). A session-aware
    decision builds its session context before the rules run, as ``Gateway._with_session``
    (proxy/gateway.py) does: ``touch`` the session, read the kill switch, merge the labels
    of the principal-wide and of the session's marks; that is timed around ``decide``."""
    out: list[tuple[str, Callable[[Any], Any]]] = []
    notes: list[str] = []
    decide = adj.decide
    out.append(("no store (today's engine)", decide))
    try:
        from proxy.state import MemoryStore, SqliteStore
        from proxy.state.store import MAX_EVENTS
        notes.append(f"stores keep the last {MAX_EVENTS:,} events per session "
                     "(`proxy/state/store.py` MAX_EVENTS), so history beyond that is bounded "
                     "by design")
    except Exception as e:
        notes.append(f"session state not measured: {e!r}")
        return out, notes
    now = time.time()
    for name, make in (("MemoryStore", lambda: MemoryStore()),
                       ("SqliteStore", lambda: SqliteStore(work / "state.sqlite3"))):
        try:
            store = make()
            have = 0
            for n in lengths:       # one session per history length, n events each
                session = f"bench-session-{n}"
                store.touch(session, "bench-principal", now)
                t0 = time.perf_counter()
                for i in range(n):
                    store.append_event(session, {"tool": "search", "i": i}, now)
                    if i % 10 == 0:
                        store.mark(session, [f"read:item{i % 200}"], now)
                have = n
                whole = f"bench-principal-{n}"
                store.touch(whole, "bench-principal", now)

                def call(a: Action, st: Any = store, s: str = session, w: str = whole) -> Any:
                    t = time.time()
                    st.touch(s, "bench-principal", t)
                    if st.killed(s, "bench-principal") is None:
                        marks = dict(st.marks(w))
                        marks.update(st.marks(s))
                    return decide(a)
                out.append((f"{name}, {n:,} events", call))
                log(f"  scaling: {name}: history {n:,} built "
                    f"({time.perf_counter() - t0:.1f} s)")
            events_t = []
            for _ in range(200):
                t0 = time.perf_counter_ns()
                store.events(session, 100)
                events_t.append(time.perf_counter_ns() - t0)
            events_t.sort()
            notes.append(f"{name}: reading the last 100 events (`events(session, 100)`) "
                         f"p50 {percentile(events_t, 50) / 1e3:,.0f} µs (diagnostic, "
                         f"{have:,} events appended)")
        except Exception as e:
            notes.append(f"{name} not measured: {e!r}")
            log(f"  scaling: {name} not measured: {e!r}")
    return out, notes


# --- memory vs. concurrent sessions ----------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _drive_sessions(proxy_url: str, mcp_url: str, target: str, points: tuple[int, ...],
                    pid: int, log: Callable[[str], None], failures: list[str]
                    ) -> list[tuple[int, int, float]]:
    """Open sessions through the proxy in CLIENT_THREADS threads; RSS at each point."""
    import httpx
    import proxy_overhead as po
    from clients import JSONRPC_ACCEPT, legacy_handshake

    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    call = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            f'"arguments":{{"text":"{po.ECHO_TEXT}"}}}}}}')

    def client() -> httpx.Client:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = httpx.Client(proxy=proxy_url, trust_env=False, timeout=30.0,
                                       limits=httpx.Limits(keepalive_expiry=600))
            with lock:
                clients.append(c)
        return c

    def one_session(i: int) -> None:
        c = client()
        sid = legacy_handshake(c, mcp_url, protocol_version=po.LEGACY_VERSION,
                               client_name=f"bench-{i}")
        r = c.post(mcp_url, content=call,
                   headers={"Content-Type": "application/json", "Accept": JSONRPC_ACCEPT,
                            "Mcp-Session-Id": sid, "MCP-Protocol-Version": po.LEGACY_VERSION})
        problem = po._check_echo(r)
        if problem:
            raise AssertionError(f"session {i} via {target}: {problem}")

    deadline = time.monotonic() + SESSION_TIMEOUT_S
    series: list[tuple[int, int, float]] = []
    done = 0
    try:
        with cf.ThreadPoolExecutor(CLIENT_THREADS) as ex:
            list(ex.map(one_session, range(20)))      # warm-up: connections, imports
            time.sleep(0.5)
            series.append((0, rss_kib(pid), 0.0))
            t_start = time.monotonic()
            for goal in points:
                try:
                    list(ex.map(one_session, range(1000 + done, 1000 + goal)))
                except Exception as e:
                    resp = getattr(e, "response", None)
                    detail = (f" ({resp.status_code} from `{resp.headers.get('server', '?')}`:"
                              f" {resp.text[:200]})") if resp is not None else ""
                    failures.append(f"{target}: stopped between {done:,} and {goal:,} "
                                    f"sessions: {e!r}"[:300] + detail)
                    log(f"  scaling: {failures[-1]}")
                    break
                done = goal
                time.sleep(0.5)
                series.append((goal, rss_kib(pid), time.monotonic() - t_start))
                log(f"  scaling: {target}: {goal:,} sessions, RSS "
                    f"{series[-1][1] / 1024:,.1f} MiB")
                if time.monotonic() > deadline:
                    log(f"  scaling: {target}: time bound reached")
                    break
    finally:
        for c in clients:
            c.close()
    return series


def memory_vs_sessions(quick: bool, log: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    import proxy_overhead as po

    points = QUICK_SESSIONS if quick else SESSIONS
    old_term = signal.signal(signal.SIGTERM, po._raise_interrupt)
    tmp = tempfile.TemporaryDirectory(prefix="fiveplane-scaling-")
    work = Path(tmp.name)
    procs = po.Processes(work)
    results: dict[str, list[tuple[int, int, float]]] = {}
    failures: list[str] = []
    try:
        from mitmproxy import certs
        confdir = work / "certs"
        certs.CertStore.create_store(confdir, "mitmproxy", 2048)
        py = sys.executable
        for target in ("fiveplane", "mitmdump"):
            mcp = procs.start(f"mcp-{target}", [py, BENCH_DIR / "mcp_server_bench.py", "--port",
                                                "0", "--json-response", "--name", "bench"],
                              po.MCP_READY)
            mcp_url = f"http://127.0.0.1:{mcp.port}/mcp"
            if target == "fiveplane":
                policy = work / "policy.yaml"
                po.write_policy(policy, 9, mcp.port, 10)
                proxy = procs.start("fiveplane", [
                    py, "-m", "proxy", "run", "--policy", policy, "--listen", "127.0.0.1:0",
                    "--certs", confdir, "--state-dir", work / "state", "--reload-interval",
                    "0"], po.FIVEPLANE_READY)
            else:
                proxy = procs.start("mitmdump", [
                    po.MITMDUMP, "--listen-host", "127.0.0.1", "-p", "0", "--set",
                    f"confdir={confdir}", "--set", "connection_strategy=lazy", "--set",
                    "http3=false", "--set", "flow_detail=0"], po.MITMDUMP_READY)
            proxy_url = f"http://127.0.0.1:{proxy.port}"
            results[target] = _drive_sessions(proxy_url, mcp_url, target, points,
                                              proxy.proc.pid, log, failures)
            proxy.stop()
            mcp.stop()
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        tmp.cleanup()
    rows = []
    five, mitm = results["fiveplane"], results["mitmdump"]
    first = {t: next(r for n, r, _ in results[t] if n == points[0]) for t in results}
    for (n, r5, t5), (_n, rm, _tm) in zip(five, mitm, strict=False):
        rows.append([f"{n:,}", fmt(r5 / 1024, 1), f"{r5 / first['fiveplane']:.2f}x" if n else "",
                     fmt(rm / 1024, 1), f"{rm / first['mitmdump']:.2f}x" if n else "",
                     fmt((r5 - rm) / 1024, 1), fmt(n / t5, 0) if n and t5 else ""])
    last5, lastm = five[-1], mitm[-1]
    per5 = (last5[1] - first["fiveplane"]) * 1024 / max(1, last5[0] - points[0])
    perm = (lastm[1] - first["mitmdump"]) * 1024 / max(1, lastm[0] - points[0])
    data = {"fiveplane": five, "mitmdump": mitm, "growth": last5[1] / first["fiveplane"]}
    md = ("Proxy memory (VmRSS) vs. concurrent MCP sessions (2025-11-25 style: `initialize`, "
          "`notifications/initialized`, one `tools/call echo` per session; sessions are never "
          "closed, so all stay live):\n\n" + md_table(
              ["sessions", "fiveplane RSS MiB", "growth vs first", "mitmdump RSS MiB",
               "growth vs first", "fiveplane minus mitmdump MiB", "sessions/s (fiveplane)"],
              rows, align=["l"] + ["r"] * 6)
          + f"\n\n- growth RSS({last5[0]:,}) / RSS({points[0]:,}): fiveplane "
          f"**{last5[1] / first['fiveplane']:.2f}x** ({per5:,.0f} bytes per added session), "
          f"bare mitmdump {lastm[1] / first['mitmdump']:.2f}x ({perm:,.0f} bytes per added "
          f"session); row 0 = after 20 warm-up sessions\n"
          f"- {CLIENT_THREADS} client threads, each with one keep-alive connection through "
          "the proxy (so the count of live *sessions* grows, not of TCP connections); every "
          "response checked; each target has its own MCP server process (session cap raised "
          "from the MCP SDK's 10,000 to 50,000, see mcp_server_bench.py); loopback only, "
          f"bounded to {SESSION_TIMEOUT_S:.0f} s per target"
          + "".join(f"\n- FAILED: {f}" for f in failures))
    return md, data


# --- the section --------------------------------------------------------------------------


def run(quick: bool = False, log: Callable[[str], None] = print,
        rules_p50: dict[int, float] | None = None, memory: bool = True) -> Section:
    section = Section("Scaling curves (growth factors)")
    decisions = QUICK_DECISIONS if quick else DECISIONS
    timer = sorted(adjudication.time_empty([None] * 20_000))   # type: ignore[list-item]
    timer_ns = percentile(timer, 50)

    # 1. rules
    if rules_p50:
        sizes = sorted(rules_p50)
        rows = [[f"{n:,}", fmt(rules_p50[n], 2), f"**{rules_p50[n] / rules_p50[sizes[0]]:.2f}x**"]
                for n in sizes]
        section.add("Decision latency vs. rules (from the adjudication section of this run, "
                    "p50 of `decide()` over the pool):\n\n"
                    + md_table(["rules", "p50 µs", "growth vs 10 rules"], rows))
        section.data["rules_growth"] = rules_p50[sizes[-1]] / rules_p50[sizes[0]]
    else:
        curve = Curve("rules", "rules", [])
        for n in adjudication.SIZES if not quick else adjudication.SIZES[:3]:
            adj = Adjudicator(compile_text(adjudication.generate_policy(n), f"<{n}>"))
            curve.points.append((n, f"{n:,} rules", adj.decide,
                                 _sequence(adjudication.build_pool(n // 10), decisions)))
        _measure(curve, log)
        section.add("Decision latency vs. rules (adjudication section not run; measured "
                    "here):\n\n" + _table(curve, timer_ns))

    text = adjudication.generate_policy(POLICY_N)
    policy = compile_text(text, f"<bench-{POLICY_N}>")
    seq = _sequence(adjudication.build_pool(POLICY_N // 10), decisions)

    # 2. chain depth
    setups, notes, verify_md = chain_setups(policy, seq, log)
    curve = Curve("chain depth", "principal chain", [(lbl, lbl, adj.decide, acts)
                                                     for lbl, adj, acts in setups])
    _measure(curve, log)
    by_series: dict[str, list[tuple[Any, str, Any, list[Any]]]] = {}
    for pt in curve.points:
        by_series.setdefault(pt[1].split(": ", 1)[1], []).append(pt)
    for series_name, pts in by_series.items():
        sub = Curve(series_name, "principal chain", pts, curve.samples)
        section.add(f"Decision latency vs. delegation-chain depth — {series_name} "
                    f"(N = {POLICY_N:,} rules):\n\n" + _table(sub, timer_ns))
    section.add("\n".join(f"- {n}" for n in [
        *notes,
        "engine only: `Principal.chain` of the given depth on every action; the rules of "
        "the synthetic policy do not test the principal, so this shows what carrying the "
        "chain costs the engine (nothing, by construction: it is a reference)"]))
    if verify_md:
        section.add(verify_md)

    # 3. session history
    with tempfile.TemporaryDirectory(prefix="fiveplane-history-") as d:
        lengths = QUICK_HISTORY if quick else HISTORY
        action = seq[0]
        setups_h, hnotes = history_setups(Adjudicator(policy), action, lengths, Path(d), log)
        pts = [(label, label, fn, seq) for label, fn in setups_h]
        curve = Curve("session history", "history", pts)
        _measure(curve, log)
        groups: dict[str, list[Any]] = {}
        for pt in curve.points:
            groups.setdefault(pt[1].split(",")[0], []).append(pt)
        rows = []
        base = None
        for _g, gpts in groups.items():
            for _x, label, _fn, _args in gpts:
                s = sorted(max(0, v - timer_ns) for v in curve.samples[label])
                p50 = percentile(s, 50) / 1e3
                if base is None:
                    base = p50
                first_in_group = sorted(max(0, v - timer_ns) for v in
                                        curve.samples[gpts[0][1]])
                g0 = percentile(first_in_group, 50) / 1e3
                rows.append([label, f"{len(s):,}", fmt(p50, 2),
                             fmt(percentile(s, 99) / 1e3, 2),
                             f"**{p50 / g0:.2f}x**", f"{p50 / base:.2f}x"])
        section.add(
            "Decision latency vs. session history: `decide()` plus the session context a "
            "session-aware decision builds first, as `Gateway._with_session` does "
            "(`touch(session)`, `killed(session)`, `marks` of the principal and of the "
            f"session: the labels sequence rules match on), N = {POLICY_N:,} rules:\n\n"
            + md_table(
                ["store, events in the session", "decisions", "p50 µs", "p99 µs",
                 "growth vs 0 events (same store)", "vs. engine without store"], rows,
                align=["l"] + ["r"] * 5)
            + "\n\n" + "\n".join(f"- {n}" for n in [
                *hnotes,
                "session state (`proxy/state`) is being wired into the gateway while this is "
                "written (issue 4): this measures the store work per decision, not "
                "sequence-rule evaluation or budgets; extend `history_setups` as the plane "
                "settles"]))

    # 4. memory vs sessions
    if memory:
        md, data = memory_vs_sessions(quick, log)
        section.add(md)
        section.data["memory"] = data
    section.add(f"- latency curves: {decisions:,} decisions per point, {ROUNDS} interleaved "
                "rounds (points rotating), warm-up 2,000 decisions per point, GC off while "
                f"timing, timer overhead {timer_ns} ns subtracted")
    return section


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        print(run(args.quick, log=lambda m: print(m, file=sys.stderr),
                  memory=not args.no_memory).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
