"""fiveplane vs. Cedar (``cedarpy``) on the same policies and the same requests.

The synthetic policies of ``adjudication.py`` (10 to 10,000 rules) are translated into
Cedar by a generic translator of our policy YAML (``translate``), and the adjudication
pool of actions into Cedar requests (``cedar_request``):

* principal ``Agent::"anonymous"``; MCP: action ``Action::"tools/call"`` (the JSON-RPC
  method), resource ``McpServer::"<server>"``, context ``{server, tool, args, host, port,
  scheme}``; HTTP: action ``Action::"<METHOD>"``, resource ``Host::"<host>"``, context
  ``{host, port, scheme, path}``. No entities are needed (an empty ``Entities`` handle).
* ``allow`` rules become ``permit``, refusing rules (``deny``, ``escalate``...) ``forbid``;
  ``match`` keys become the scope (``action``, ``resource``) and ``when`` conditions
  (``==``, ``.contains``, ``like``, ``>``...). Cedar's default is deny, as ours.
* ``network.allow``: a permit is only reachable for an allowed destination, so each
  permit carries the port/scheme condition of the allow entry that covers its hosts (the
  destination of a declared MCP server is fixed by its URL and checked once, at
  translation). ``network.deny`` entries become global ``forbid`` policies.
* Cedar has no regular expressions and its ``like`` has one wildcard that also matches
  ``/``: a ``regex`` predicate and a within-segment path ``*`` are translated to broader
  ``like`` patterns; the report lists every such approximation. Internal-address checks
  and MCP lifecycle plumbing are not translated (the pool has neither).

Both engines are timed in the same process, interleaved in rounds (sizes rotating), on
the same sequence of requests: ours with ``Adjudicator.decide(action)``, Cedar with
``cedarpy.is_authorized(request, PolicySet, Entities)`` (parsed handles, reused), with
``cedarpy.is_authorized_batch`` in batches, and — diagnostic — with cedarpy's Rust entry
point called with pre-serialized context (no Python JSON work). Before timing, every
request of the pool is decided by both and the allow/deny verdicts are compared; a set of
type-confusion probes shows where the two semantics differ (Cedar skips a policy whose
condition errors; fiveplane counts a refusing rule as matched).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from common import Section, ensure_paths, fmt, md_table, percentile, verdict

ensure_paths()

import adjudication  # noqa: E402

from proxy.action import Action, Kind  # noqa: E402
from proxy.engine import Adjudicator  # noqa: E402
from proxy.policy.compiler import compile_text  # noqa: E402
from proxy.policy.matchers import host_test, is_glob  # noqa: E402

SIZES = adjudication.SIZES
# Timed decisions per size and engine (cedarpy's cost grows with the policy size).
FULL_DECISIONS = {10: 20_000, 100: 20_000, 1_000: 5_000, 10_000: 1_000}
QUICK_DECISIONS = {10: 2_000, 100: 2_000, 1_000: 500}
ROUNDS = 5
BATCH = 100
WARMUP = 300                 # requests per engine and size before timing
TARGET_RATIO = 30.0          # cedarpy p50 / fiveplane p50, at 1,000 rules
TARGET_N = 1_000
PRINCIPAL = {"type": "Agent", "id": "anonymous"}


def cedar_version() -> str:
    from importlib.metadata import version
    try:
        return version("cedarpy")
    except Exception:
        return "not installed"


# --- translation ---------------------------------------------------------------------


def lit(value: Any) -> str:
    """A Cedar literal (strings, longs, booleans, sets of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(lit(v) for v in value) + "]"
    raise ValueError(f"no Cedar literal for {value!r}")


def like(pattern: str) -> str:
    """A glob with ``*`` (and ``**``) as a Cedar ``like`` pattern literal."""
    p = re.sub(r"\*+", "*", pattern)
    return '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _any(parts: Sequence[str]) -> str:
    parts = list(dict.fromkeys(parts))
    if not parts:
        return "false"
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


@dataclass
class Translation:
    text: str
    policies: int
    approximations: list[str] = field(default_factory=list)
    not_translated: list[str] = field(default_factory=list)


class Translator:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.approx: dict[str, None] = {}
        self.skipped: dict[str, None] = {}
        net = doc.get("network") or {}
        self.allow = net.get("allow")            # None: any public destination
        self.deny = net.get("deny") or []
        self.skipped["internal/metadata address checks (the pool uses public addresses "
                     "only)"] = None
        self.servers = {name: spec["url"] for name, spec in (doc.get("mcp_servers") or {}).items()}
        self.skipped["MCP lifecycle plumbing for declared servers (the pool has only "
                     "tools/call)"] = None

    # destinations -----------------------------------------------------------------
    def _host_cond(self, patterns: Sequence[str], what: str = "context.host") -> str:
        parts = []
        for p in patterns:
            if p == "*":
                return "true"
            if p.startswith("*."):
                parts.append(f"{what} like {like('*' + p[1:])}")
            elif is_glob(p):
                self.approx[f"host glob `{p}` as a `like` pattern"] = None
                parts.append(f"{what} like {like(p)}")
            else:
                parts.append(f"{what} == {lit(p)}")
        return _any(parts)

    @staticmethod
    def _entry_conds(entry: dict[str, Any]) -> list[str]:
        out = []
        if "ports" in entry:
            ports = _as_list(entry["ports"])
            out.append(f"context.port == {ports[0]}" if len(ports) == 1
                       else f"{lit(ports)}.contains(context.port)")
        if "schemes" in entry:
            schemes = _as_list(entry["schemes"])
            out.append(f"context.scheme == {lit(schemes[0])}" if len(schemes) == 1
                       else f"{lit(schemes)}.contains(context.scheme)")
        return out

    def _dest_cond(self, entry: dict[str, Any]) -> str:
        return " && ".join([self._host_cond(_as_list(entry["host"])), *self._entry_conds(entry)])

    @staticmethod
    def _covers(entry_hosts: Sequence[str], pattern: str) -> bool:
        if "*" in entry_hosts:
            return True
        if pattern.startswith("*."):
            s = pattern[2:]
            return any(e.startswith("*.") and (s == e[2:] or s.endswith("." + e[2:]))
                       for e in entry_hosts)
        return not is_glob(pattern) and host_test(list(entry_hosts))(pattern)

    def _static_dest(self, host: str, port: int, scheme: str) -> bool:
        """Is this fixed destination allowed by the network section?"""
        def admits(e: dict[str, Any]) -> bool:
            return (host_test(_as_list(e["host"]))(host)
                    and ("ports" not in e or port in _as_list(e["ports"]))
                    and ("schemes" not in e or scheme in _as_list(e["schemes"])))
        if any(admits(e) for e in self.deny):
            return False
        return self.allow is None or any(admits(e) for e in self.allow)

    def _network_for_http(self, hosts: Sequence[str] | None) -> list[str]:
        """Conditions a permit needs so that it only fires for allowed destinations."""
        if self.allow is None:
            return []
        if hosts:
            for e in self.allow:
                eh = _as_list(e["host"])
                if all(self._covers(eh, h) for h in hosts):
                    return self._entry_conds(e)
        # generic fallback: the whole allow list
        return [_any([self._dest_cond(e) for e in self.allow])]

    # rules -------------------------------------------------------------------------
    def _args(self, args: dict[str, Any]) -> list[str]:
        out = []
        for name, pred in args.items():
            ref = (f"context.args.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
                   else f"context.args[{lit(name)}]")
            for op, want in pred.items():
                if op in ("gt", "ge", "lt", "le"):
                    sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[op]
                    if not float(want).is_integer():
                        raise ValueError(f"Cedar has no floats: bound {want!r} on `{name}`")
                    out.append(f"{ref} {sym} {int(want)}")
                elif op in ("eq", "ne"):
                    out.append(f"{ref} {'==' if op == 'eq' else '!='} {lit(want)}")
                elif op in ("in", "not_in"):
                    expr = f"{lit(list(want))}.contains({ref})"
                    out.append(expr if op == "in" else f"!{expr}")
                elif op == "regex":
                    out.append(f"{ref} like {like(regex_to_like(want))}")
                    self.approx[f"regex `{want}` as like `{regex_to_like(want)}` (Cedar has "
                                "no regular expressions; broader)"] = None
                elif op == "present":
                    out.append(f"context.args has {name}" if want
                               else f"!(context.args has {name})")
                else:
                    raise ValueError(f"no Cedar translation for predicate `{op}`")
        return out

    def rule(self, spec: dict[str, Any]) -> str:
        m = spec["match"]
        effect = "permit" if spec["effect"] in ("allow", "modify", "narrow") else "forbid"
        when: list[str] = []
        mcp = bool({"server", "mcp_method", "tool", "resource", "prompt", "args"} & m.keys())
        if mcp:
            methods = _as_list(m.get("mcp_method", []))
            for key, implied in (("tool", "tools/call"), ("resource", "resources/read"),
                                 ("prompt", "prompts/get")):
                if key in m:
                    methods = [implied]
                    names = [str(n) for n in _as_list(m[key])]
                    exact = [n for n in names if not is_glob(n)]
                    parts = []
                    if len(exact) == 1:
                        parts.append(f"context.tool == {lit(exact[0])}")
                    elif exact:
                        parts.append(f"{lit(exact)}.contains(context.tool)")
                    parts += [f"context.tool like {like(n)}" for n in names if is_glob(n)]
                    when.append(_any(parts))
            action = ("action" if not methods else
                      f'action == Action::{lit(methods[0])}' if len(methods) == 1 else
                      "action in [" + ", ".join(f"Action::{lit(x)}" for x in methods) + "]")
            servers = [str(s) for s in _as_list(m.get("server", []))]
            if servers and not any(is_glob(s) for s in servers):
                resource = (f"resource == McpServer::{lit(servers[0])}" if len(servers) == 1
                            else "resource in [" + ", ".join(f"McpServer::{lit(s)}"
                                                            for s in servers) + "]")
            else:
                resource = "resource is McpServer"
                if servers:
                    when.append(_any([f"context.server like {like(s)}" for s in servers]))
            if effect == "permit":
                # the destination of a named server is its declared URL: check it now
                for s in servers:
                    url = self.servers.get(s, s if "://" in s else None)
                    if url is None:
                        continue
                    u = urlsplit(url)
                    port = u.port or (443 if u.scheme == "https" else 80)
                    if not self._static_dest(u.hostname or "", port, u.scheme):
                        when.append("false")
                if not servers:
                    when += self._network_for_http(None)
            when += self._args(m.get("args") or {})
        else:
            methods = [str(x).upper() for x in _as_list(m.get("method", []))]
            action = ("action" if not methods else
                      f"action == Action::{lit(methods[0])}" if len(methods) == 1 else
                      "action in [" + ", ".join(f"Action::{lit(x)}" for x in methods) + "]")
            hosts = [str(h).lower() for h in _as_list(m.get("host", []))]
            if len(hosts) == 1 and not hosts[0].startswith("*") and not is_glob(hosts[0]):
                resource = f"resource == Host::{lit(hosts[0])}"
            else:
                resource = "resource is Host"
                if hosts:
                    when.append(self._host_cond(hosts))
            if "scheme" in m:
                when.append(f"{lit([s.lower() for s in _as_list(m['scheme'])])}"
                            ".contains(context.scheme)")
            if "port" in m:
                when.append(f"{lit(_as_list(m['port']))}.contains(context.port)")
            if "path" in m:
                paths = _as_list(m["path"])
                for p in paths:
                    if re.search(r"(?<!\*)\*(?!\*)|\?", p):
                        self.approx[f"path glob `{p}`: Cedar's `*` also matches `/` "
                                    "(broader)"] = None
                when.append(_any([f"context.path like {like(p)}" if is_glob(p)
                                  else f"context.path == {lit(p)}" for p in paths]))
            if effect == "permit":
                when += self._network_for_http(hosts)
        head = f'@id({lit(spec["id"])})\n{effect}(principal, {action}, {resource})'
        return head + (f"\nwhen {{ {' && '.join(when)} }};" if when else ";")

    def translate(self) -> Translation:
        out = []
        for i, e in enumerate(self.deny):
            cond = self._dest_cond(e)
            out.append(f'@id({lit(e.get("id") or f"network.deny[{i}]")})\n'
                       f"forbid(principal, action, resource)\nwhen {{ {cond} }};")
        for spec in self.doc.get("rules") or []:
            out.append(self.rule(spec))
        return Translation("\n".join(out) + "\n", len(out), list(self.approx),
                           list(self.skipped))


def regex_to_like(rx: str) -> str:
    """The literal tail of a regex after its last metacharacter, prefixed by ``*``
    (``[a-z0-9._-]+@example\\.com`` -> ``*@example.com``): broader than the regex."""
    tail = re.split(r"(?<!\\)[\]\)+*?}|]", rx)[-1]
    literal = re.sub(r"\\(.)", r"\1", tail)
    if re.search(r"(?<!\\)[.^$\[(]", tail):
        raise ValueError(f"cannot approximate regex {rx!r} with like")
    return "*" + literal if literal != rx else literal


def translate_yaml(text: str) -> Translation:
    return Translator(yaml.safe_load(text)).translate()


# --- requests --------------------------------------------------------------------------


def cedar_request(a: Action) -> dict[str, Any]:
    if a.kind in (Kind.MCP, Kind.MCP_SERVER):
        ctx: dict[str, Any] = {"server": a.server, "tool": a.name, "args": dict(a.arguments),
                               "host": a.host, "port": a.port, "scheme": a.scheme}
        return {"principal": PRINCIPAL, "action": {"type": "Action", "id": a.mcp_method},
                "resource": {"type": "McpServer", "id": a.server}, "context": ctx}
    ctx = {"host": a.host, "port": a.port, "scheme": a.scheme, "path": a.path}
    return {"principal": PRINCIPAL, "action": {"type": "Action", "id": a.method},
            "resource": {"type": "Host", "id": a.host}, "context": ctx}


def raw_request(req: dict[str, Any]) -> dict[str, Any]:
    """cedarpy's Rust entry point takes the context pre-serialized."""
    return {**req, "context": json.dumps(req["context"])}


# --- probes: where the semantics differ --------------------------------------------------

PROBE_POLICY = """\
version: 1
name: type-confusion-probe
defaults: {effect: deny}
mcp_servers:
  bank: {url: "https://bank.mcp.example.com/mcp"}
rules:
  - {id: transfer-ok, match: {server: bank, tool: transfer}, effect: allow}
  - {id: transfer-cap, match: {server: bank, tool: transfer, args: {amount: {gt: 1000}}},
     effect: deny, reason: transfers over 1000 are not allowed}
"""


def _probe_actions(server: str, host: str) -> list[tuple[str, Action]]:
    def call(tool: str, args: dict[str, Any]) -> Action:
        return dataclasses.replace(adjudication._mcp(0, tool, args), server=server, host=host)
    return [(label, call(tool, args)) for label, tool, args in [
        ("amount 500 (int)", "transfer", {"amount": 500}),
        ("amount 5000 (int)", "transfer", {"amount": 5000}),
        ('amount "5000" (string)', "transfer", {"amount": "5000"}),
        ("amount 5000.5 (float)", "transfer", {"amount": 5000.5}),
        ("amount 500.5 (float)", "transfer", {"amount": 500.5}),
        ("amount null", "transfer", {"amount": None}),
        ("amount true (bool)", "transfer", {"amount": True}),
        ("amount [5000] (list)", "transfer", {"amount": [5000]}),
        ("amount missing", "transfer", {}),
        ("amount 2**70 (big int)", "transfer", {"amount": 2 ** 70}),
    ]]


def _synthetic_probes() -> list[tuple[str, Action]]:
    """Type confusion against the synthetic policy (block 0)."""
    m = adjudication._mcp
    return [
        ('refund amount "50" (string)', m(0, "refund", {"amount": "50"})),
        ("refund amount 50.5 (float)", m(0, "refund", {"amount": 50.5})),
        ("refund amount true (bool)", m(0, "refund", {"amount": True})),
        ("refund amount null", m(0, "refund", {"amount": None})),
        ("send_email to 42 (number)", m(0, "send_email", {"to": 42})),
        ("set_priority level 1 (number)", m(0, "set_priority", {"level": 1})),
        ("search with a float argument", m(0, "search", {"q": "x", "limit": 0.5})),
    ]


# --- the benchmark --------------------------------------------------------------------


@dataclass
class Engines:
    n: int
    adj: Adjudicator
    policy_set: Any
    translation: Translation
    pool: adjudication.Pool
    requests: list[dict[str, Any]]
    seq: list[int]                       # indices into pool/requests, timing order
    ours: list[int] = field(default_factory=list)
    cedar: list[int] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)   # ns per decision, per batch
    raw: list[int] = field(default_factory=list)
    agree: int = 0
    checked: int = 0
    disagree: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


def _compare(label: str, ours: Adjudicator, ps: Any, entities: Any,
             items: Sequence[tuple[str, Action]]) -> list[list[str]]:
    import cedarpy

    rows = []
    reqs = [cedar_request(a) for _, a in items]
    res = cedarpy.is_authorized_batch(reqs, ps, entities)
    for (name, a), r in zip(items, res, strict=True):
        d = ours.decide(a)
        ours_ok = d.verdict.proceeds
        err = "; ".join(r.diagnostics.errors)[:90]
        ids = r.diagnostics.id_annotations_by_reason
        decided = ", ".join(ids.get(p, p) for p in r.diagnostics.reasons) or "-"
        rows.append([label, name, f"{d.verdict.value} ({', '.join(d.rule_ids)})",
                     f"{r.decision.value} ({decided})",
                     "same" if ours_ok == r.allowed else "**differs**", err or "-"])
    return rows


def run(quick: bool = False, log: Callable[[str], None] = print) -> Section:
    import cedarpy
    from cedarpy import _internal

    section = Section(f"fiveplane vs. Cedar (cedarpy {cedar_version()}): same policies, "
                      "same requests")
    counts = QUICK_DECISIONS if quick else FULL_DECISIONS
    entities = cedarpy.Entities.from_json_str("[]")
    raw_entities = entities._inner
    runs: list[Engines] = []
    for n, decisions in counts.items():
        text = adjudication.generate_policy(n)
        adj = Adjudicator(compile_text(text, f"<bench-{n}>"))
        t0 = time.perf_counter()
        tr = translate_yaml(text)
        ps = cedarpy.PolicySet.from_str(tr.text)
        parse_s = time.perf_counter() - t0
        assert len(ps) == tr.policies, (len(ps), tr.policies)
        pool = adjudication.build_pool(n // 10)
        reqs = [cedar_request(a) for _, _, a in pool]
        rng = random.Random(adjudication.SEED)
        order = list(range(len(pool)))
        seq: list[int] = []
        while len(seq) < decisions:
            rng.shuffle(order)
            seq.extend(order)
        e = Engines(n, adj, ps, tr, pool, reqs, seq[:decisions])
        # agreement on the whole pool (--quick: its first 1,024 requests)
        checked = pool if not quick else pool[:1024]
        res = cedarpy.is_authorized_batch(reqs[:len(checked)], ps, entities)
        for (cat, _, a), r in zip(checked, res, strict=True):
            ours_ok = adj.decide(a).verdict.proceeds
            if ours_ok == r.allowed:
                e.agree += 1
            else:
                e.disagree[cat] = e.disagree.get(cat, 0) + 1
                if len(e.examples) < 3:
                    e.examples.append(f"{a.summary()} {dict(a.arguments)}: fiveplane "
                                      f"{'allow' if ours_ok else 'refuse'}, Cedar "
                                      f"{r.decision.value} {r.diagnostics.errors[:1]}")
        runs.append(e)
        e.checked = len(checked)
        log(f"  cedar: N={n:>6,}: {tr.policies:,} Cedar policies parsed in {parse_s:.2f} s; "
            f"pool agreement {e.agree:,}/{len(checked):,}")

    # warm-up
    for e in runs:
        w = [e.pool[i][2] for i in e.seq[:WARMUP]]
        for a in w:
            e.adj.decide(a)
        for i in e.seq[:WARMUP]:
            cedarpy.is_authorized(e.requests[i], e.policy_set, entities)
    raw_reqs = {e.n: [raw_request(r) for r in e.requests] for e in runs}
    timer = adjudication.time_empty([e.pool[0][2] for e in runs] * 2000)
    timer.sort()
    timer_ns = percentile(timer, 50)
    pc = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for rnd in range(ROUNDS):
            shift = rnd % len(runs)
            for e in runs[shift:] + runs[:shift]:
                per = len(e.seq) // ROUNDS
                idx = e.seq[rnd * per:(rnd + 1) * per]
                e.ours += adjudication.time_calls(e.adj.decide, [e.pool[i][2] for i in idx])
                reqs, ps = e.requests, e.policy_set
                is_auth = cedarpy.is_authorized
                for i in idx:
                    r = reqs[i]
                    t0 = pc()
                    is_auth(r, ps, entities)
                    t1 = pc()
                    e.cedar.append(t1 - t0)
                batch = cedarpy.is_authorized_batch
                for k in range(0, len(idx) - BATCH + 1, BATCH):
                    chunk = [reqs[i] for i in idx[k:k + BATCH]]
                    t0 = pc()
                    batch(chunk, ps, entities)
                    t1 = pc()
                    e.batch.append((t1 - t0) / BATCH)
                raw = raw_reqs[e.n]
                raw_batch = _internal.is_authorized_batch
                for i in idx:
                    one = [raw[i]]
                    t0 = pc()
                    raw_batch(one, ps, raw_entities, None, False)
                    t1 = pc()
                    e.raw.append(t1 - t0)
            log(f"  cedar: round {rnd + 1}/{ROUNDS} done")
    finally:
        gc.enable()

    def stats(xs: Sequence[float]) -> tuple[float, float]:
        s = sorted(max(0.0, x - timer_ns) for x in xs)
        return percentile(s, 50) / 1e3, percentile(s, 99) / 1e3

    def mean(xs: Sequence[float]) -> float:
        return sum(max(0.0, x - timer_ns) for x in xs) / len(xs) / 1e3

    rows = []
    data: dict[str, dict[int, float]] = {"fiveplane": {}, "cedarpy": {},
                                         "cedarpy batch": {}}
    for e in runs:
        o50, o99 = stats(e.ours)
        c50, c99 = stats(e.cedar)
        r50, _ = stats(e.raw)
        ratio = c50 / o50 if o50 else float("inf")
        data["fiveplane"][e.n] = o50
        data["cedarpy"][e.n] = c50
        data["cedarpy batch"][e.n] = mean(e.batch)
        target = ""
        if e.n == TARGET_N:
            target = f"≥ {TARGET_RATIO:g}x: {verdict(ratio >= TARGET_RATIO)}"
            if ratio < TARGET_RATIO:
                section.missed.append(f"cedarpy/fiveplane p50 ratio {ratio:.1f}x < "
                                      f"{TARGET_RATIO:g}x at N={TARGET_N:,}")
        rows.append([f"{e.n:,}", f"{e.translation.policies:,}", f"{len(e.ours):,}",
                     fmt(o50, 2), fmt(o99, 2), fmt(c50, 1), fmt(c99, 1), fmt(mean(e.cedar), 1),
                     fmt(mean(e.batch), 1),
                     fmt(r50, 1), f"**{ratio:,.0f}x**", f"{mean(e.batch) / mean(e.ours):,.0f}x",
                     target])
    section.add(md_table(
        ["rules N", "Cedar policies", "decisions each", "fiveplane p50 µs",
         "fiveplane p99 µs", "cedarpy p50 µs", "cedarpy p99 µs", "cedarpy mean µs",
         f"cedarpy batch of {BATCH}: mean µs/decision", "cedarpy Rust call, no Python JSON: "
         "p50 µs", "ratio p50 cedarpy / fiveplane", "ratio mean batch / mean fiveplane",
         f"target (N = {TARGET_N:,})"], rows, align=["l"] + ["r"] * 11 + ["l"]))
    first, last = runs[0], runs[-1]
    section.data["p50_us"] = data
    cat_rows = []
    for c, weight, proceeds, _ in adjudication.CATEGORIES:
        row: list[object] = [c, f"{weight} %", "allow" if proceeds else "refuse"]
        for e in (first, last):
            o = sorted(x - timer_ns for x, i in zip(e.ours, e.seq, strict=False)
                       if e.pool[i][0] == c)
            k = sorted(x - timer_ns for x, i in zip(e.cedar, e.seq, strict=False)
                       if e.pool[i][0] == c)
            row += [fmt(percentile(o, 50) / 1e3, 2) if o else "-",
                    fmt(percentile(k, 50) / 1e3, 1) if k else "-"]
        cat_rows.append(row)
    section.add("\n".join([
        f"- growth p50({last.n:,}) / p50({first.n:,}): fiveplane "
        f"{data['fiveplane'][last.n] / data['fiveplane'][first.n]:.2f}x, cedarpy "
        f"{data['cedarpy'][last.n] / data['cedarpy'][first.n]:.2f}x (Cedar evaluates every "
        "policy; fiveplane's index only the candidates)",
        f"- same process, same request sequences, {ROUNDS} interleaved rounds (sizes "
        f"rotating), warm-up {WARMUP} requests per engine and size, GC off while timing; "
        f"timer overhead {timer_ns} ns subtracted; `PolicySet` and `Entities` parsed once "
        "and reused (cedarpy's fast path)",
        "- cedarpy `is_authorized` = what a Python caller pays: the wrapper serializes the "
        "context to JSON and parses the JSON answer; the \"Rust call\" column calls "
        "`cedarpy._internal.is_authorized_batch` with one pre-serialized request (the "
        "engine plus the Rust/Python boundary)",
    ]))

    section.add(f"p50 µs per action category (N={first.n:,} and N={last.n:,}):\n\n" + md_table(
        ["category", "share", "expect", f"fiveplane N={first.n:,}", f"cedarpy N={first.n:,}",
         f"fiveplane N={last.n:,}", f"cedarpy N={last.n:,}"], cat_rows,
        align=["l", "r", "l", "r", "r", "r", "r"]))

    # agreement
    agree_rows = []
    for e in runs:
        total = e.checked
        cats = ", ".join(f"{c}: {k}" for c, k in sorted(e.disagree.items())) or "-"
        agree_rows.append([f"{e.n:,}", f"{total:,}", f"{e.agree:,}", f"{total - e.agree:,}",
                           cats])
        if total != e.agree:
            section.missed.append(f"cedar translation disagrees on {total - e.agree} "
                                  f"requests at N={e.n:,}: {e.examples[:1]}")
    tr = runs[-1].translation
    section.add("Allow/deny agreement on every request of the pool (both engines, before "
                "timing):\n\n" + md_table(
                    ["rules N", "requests", "same verdict", "different", "differences by "
                     "category"], agree_rows, align=["l", "r", "r", "r", "l"])
                + "\n\nTranslation approximations (broader in Cedar; the pool does not "
                "exercise the difference): " + "; ".join(tr.approximations)
                + ".\nNot translated: " + "; ".join(tr.not_translated) + ".")

    # type confusion
    probe_adj = Adjudicator(compile_text(PROBE_POLICY, "<probe>"))
    probe_tr = translate_yaml(PROBE_POLICY)
    probe_ps = cedarpy.PolicySet.from_str(probe_tr.text)
    probe_rows = _compare("probe policy", probe_adj, probe_ps, entities,
                          _probe_actions("bank", "bank.mcp.example.com"))
    probe_rows += _compare(f"synthetic N={runs[0].n}", runs[0].adj, runs[0].policy_set,
                           entities, _synthetic_probes())
    differs = sum(1 for r in probe_rows if "differs" in r[4])
    unsafe = [r for r in probe_rows if "differs" in r[4] and r[3].startswith("Allow")]
    section.data["type_confusion"] = {"probes": len(probe_rows), "differ": differs,
                                      "cedar_allows_ours_refuses": len(unsafe)}
    section.add(
        "Type confusion (finding): the probe policy is\n\n```yaml\n" + PROBE_POLICY
        + "```\n\ntranslated to\n\n```cedar\n" + probe_tr.text + "```\n\n"
        + md_table(["policy", "request (tools/call)", "fiveplane", "Cedar (policies that "
                    "decided)", "allow/deny", "Cedar errors"], probe_rows,
                   align=["l"] * 6)
        + f"\n\n{differs} of {len(probe_rows)} probes differ; in {len(unsafe)} of them Cedar "
        "**allows** what fiveplane refuses. Cedar skips a policy whose condition raises an "
        "error (a string or a missing `amount` makes `context.args.amount > 1000` an "
        "error), so the `forbid` silently drops out and the unconditional `permit` "
        "decides; fiveplane counts a refusing rule whose argument cannot be tested as "
        "matched (fail closed). Cedar also has no floats and no `null`: such a request "
        "cannot be built (`NoDecision`, counted as deny), while fiveplane decides on the "
        "number (`500.5` is within the cap).")
    return section


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--print-policy", type=int, metavar="N",
                   help="print the Cedar translation of the N-rule policy and exit")
    args = p.parse_args(argv)
    if args.print_policy:
        print(translate_yaml(adjudication.generate_policy(args.print_policy)).text)
        return 0
    print(run(args.quick).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
