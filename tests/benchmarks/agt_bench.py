"""fiveplane vs. Microsoft's Agent Governance Toolkit (AGT) policy engine.

AGT (PyPI ``agent-governance-toolkit``; its policy engines ship in the ``[core]`` extra,
``agent-governance-toolkit-core``) has two declarative engines:

* ``agent_os.policies.PolicyEvaluator``: one condition per rule (``field``, ``operator``,
  ``value``), first match by priority — cannot say "server X *and* tool Y *and* amount ≤
  100", so it cannot express our rules;
* ``agentmesh.governance.policy.PolicyEngine`` ("Policy Engine ... <5ms"): a rule's
  ``condition`` is an expression string with ``and``/``or``, ``==``/``!=`` on quoted
  strings, ``in [...]`` on strings, numeric ``> >= < <=`` and bare truthiness, over
  dotted context paths; strategies include ``deny_overrides``. **This is the one used.**

What it can express of the synthetic policy (``translate``): exact server + tool lists,
numeric argument bounds, ``in`` on string arguments, exact host + method. Not
expressible: globs (``get_*``, ``delete_*``, ``/v1/items/**``, ``*.svc.example.net``),
regular expressions, ``present``, the network plane (host suffixes, allow-list
semantics). The timed workload is therefore the pool's requests of the categories the
expressed rules decide (``CATEGORIES``), against a policy holding the expressed rules of
all N/10 blocks (N/2 AGT rules for our N).

AGT runs in its own venv (``peers.py``) in a subprocess (``agt_runner.py``); both engines
are timed on the same requests, interleaved in rounds (ours in this process, AGT in the
runner, sizes rotating). Every timed verdict is compared; type-confusion probes show
where the semantics differ.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from common import BENCH_DIR, Section, ensure_paths, fmt, md_table, percentile

ensure_paths()

import adjudication  # noqa: E402
import cedar_bench  # noqa: E402
import peers  # noqa: E402

from proxy.action import Action, Kind  # noqa: E402
from proxy.engine import Adjudicator  # noqa: E402
from proxy.policy.compiler import compile_text  # noqa: E402
from proxy.policy.matchers import is_glob  # noqa: E402

FULL_DECISIONS = {10: 4_500, 100: 1_800, 1_000: 450, 10_000: 60}
QUICK_DECISIONS = {10: 600, 100: 210, 1_000: 45}
OURS_MIN = 3_000            # fiveplane decisions per size at least (long chunks, warm)
ROUNDS = 3
WARMUP = 50
TARGET_N = 1_000
CATEGORIES = (
    "mcp allow (exact)", "mcp args: le/gt allow", "mcp args: gt escalate",
    "mcp args: in allow", "mcp args: missing (fail closed)", "mcp unmatched tool",
    "mcp unknown server", "http deny rule", "http unmatched",
)
ACTION = {"allow": "allow", "deny": "deny", "escalate": "require_approval",
          "pause": "require_approval", "defer": "require_approval"}
_SAFE = re.compile(r"[A-Za-z0-9_.:/@-]+")


@dataclass
class Translation:
    rules: list[dict[str, Any]]
    expressed: dict[str, int] = field(default_factory=dict)      # rule shape -> count
    not_expressed: dict[str, str] = field(default_factory=dict)  # rule shape -> why


def _shape(rule_id: str) -> str:
    return re.sub(r"^b\d+-", "b*-", rule_id)


def _q(v: Any) -> str:
    s = str(v)
    if not _SAFE.fullmatch(s) or " and " in s or " or " in s:
        raise ValueError(f"value {s!r} cannot be quoted in an AgentMesh condition")
    return f"'{s}'"


def translate(doc: dict[str, Any]) -> Translation:
    out = Translation([])
    for spec in doc.get("rules") or []:
        m, shape = spec["match"], _shape(spec["id"])
        try:
            conds = _conditions(m)
        except ValueError as e:
            out.not_expressed[shape] = str(e)
            continue
        action = ACTION.get(spec["effect"])
        if action is None:
            out.not_expressed[shape] = f"effect `{spec['effect']}`"
            continue
        out.rules.append({"name": spec["id"], "condition": " and ".join(conds),
                          "action": action, "priority": 0 if action == "allow" else 100})
        out.expressed[shape] = out.expressed.get(shape, 0) + 1
    if doc.get("network"):
        out.not_expressed["network.allow / network.deny"] = (
            "host suffix patterns (`*.example.com`) and allow-list semantics (deny what is "
            "not listed) have no operator")
    return out


def _conditions(m: dict[str, Any]) -> list[str]:
    def one_of(path: str, values: Sequence[Any]) -> str:
        if any(is_glob(str(v)) for v in values):
            raise ValueError(f"glob {list(values)} in `{path}`: no glob/prefix/regex operator")
        if len(values) == 1:
            return f"{path} == {_q(values[0])}"
        return f"{path} in [{', '.join(_q(v) for v in values)}]"

    conds: list[str] = []
    mcp = bool({"server", "mcp_method", "tool", "resource", "prompt", "args"} & m.keys())
    if mcp:
        if "server" not in m or ("tool" not in m):
            raise ValueError("MCP rule without exact server and tool")
        conds.append(one_of("mcp.server", cedar_bench._as_list(m["server"])))
        conds.append(one_of("mcp.tool", cedar_bench._as_list(m["tool"])))
        for name, pred in (m.get("args") or {}).items():
            for op, want in pred.items():
                if op in ("gt", "ge", "lt", "le"):
                    sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[op]
                    if float(want) < 0:
                        raise ValueError("negative bound: the parser takes digits only")
                    conds.append(f"args.{name} {sym} {want}")
                elif op == "in" and all(isinstance(v, str) for v in want):
                    conds.append(one_of(f"args.{name}", list(want)))
                elif op == "eq" and isinstance(want, str):
                    conds.append(f"args.{name} == {_q(want)}")
                else:
                    raise ValueError(f"predicate `{op}` has no AgentMesh operator")
        return conds
    if set(m) - {"host", "method", "path"}:
        raise ValueError(f"keys {sorted(set(m) - {'host', 'method', 'path'})}")
    if "host" in m:
        hosts = cedar_bench._as_list(m["host"])
        if any(str(h).startswith("*") for h in hosts):
            raise ValueError(f"host suffix {hosts}: no suffix operator")
        conds.append(one_of("http.host", hosts))
    if "method" in m:
        conds.append(one_of("http.method", [str(x).upper() for x in
                                             cedar_bench._as_list(m["method"])]))
    if "path" in m:
        conds.append(one_of("http.path", cedar_bench._as_list(m["path"])))
    return conds


def context(a: Action) -> dict[str, Any]:
    if a.kind is Kind.MCP:
        return {"mcp": {"server": a.server, "tool": a.name}, "args": dict(a.arguments)}
    return {"http": {"host": a.host, "method": a.method, "path": a.path}}


class Runner:
    """The AGT subprocess (``agt_runner.py`` under the peer venv's interpreter)."""

    def __init__(self, exe: str) -> None:
        self.proc = subprocess.Popen(
            [exe, str(BENCH_DIR / "agt_runner.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"AGT runner died: {err[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"AGT runner: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Size:
    n: int
    adj: Adjudicator
    tr: Translation
    actions: list[tuple[str, Action]]
    seq: list[int]
    ours: list[int] = field(default_factory=list)
    agt: list[int] = field(default_factory=list)
    agt_allowed: list[bool] = field(default_factory=list)
    load_s: float = 0.0


def run(quick: bool = False, log: Callable[[str], None] = print) -> Section:
    section = Section("fiveplane vs. Microsoft Agent Governance Toolkit (AgentMesh "
                      "PolicyEngine)")
    exe = peers.python("agt")
    if exe is None:
        section.add(f"Not measured: {peers.missing_reason('agt')}.")
        return section
    runner = Runner(str(exe))
    try:
        return _run(section, runner, quick, log)
    finally:
        runner.close()


def _run(section: Section, runner: Runner, quick: bool, log: Callable[[str], None]
         ) -> Section:
    versions = runner.ask({"cmd": "versions"})
    section.data["versions"] = versions
    counts = QUICK_DECISIONS if quick else FULL_DECISIONS
    sizes: list[Size] = []
    for n, decisions in counts.items():
        text = adjudication.generate_policy(n)
        tr = translate(yaml.safe_load(text))
        pool = [(c, a) for c, _, a in adjudication.build_pool(n // 10) if c in CATEGORIES]
        rng = random.Random(adjudication.SEED)
        order = list(range(len(pool)))
        seq: list[int] = []
        while len(seq) < decisions + WARMUP:
            rng.shuffle(order)
            seq.extend(order)
        s = Size(n, Adjudicator(compile_text(text, f"<bench-{n}>")), tr, pool,
                 seq[:decisions + WARMUP])
        s.load_s = runner.ask({"cmd": "load", "key": str(n), "rules": tr.rules,
                               "default": "deny",
                               "contexts": [context(a) for _, a in pool]})["load_s"]
        sizes.append(s)
        log(f"  agt: N={n:>6,}: {len(tr.rules):,} AgentMesh rules loaded in {s.load_s:.2f} s")
    # warm-up
    for s in sizes:
        for i in s.seq[:WARMUP]:
            s.adj.decide(s.actions[i][1])
        runner.ask({"cmd": "time", "key": str(s.n), "idx": s.seq[:WARMUP]})
        s.seq = s.seq[WARMUP:]
    timer = sorted(adjudication.time_empty([sizes[0].actions[0][1]] * 5000))
    timer_ns = percentile(timer, 50)
    agt_timer = sorted(runner.ask({"cmd": "noop", "count": 5000})["ns"])
    agt_noop_ns = percentile(agt_timer, 50)
    import gc
    for rnd in range(ROUNDS):
        shift = rnd % len(sizes)
        for s in sizes[shift:] + sizes[:shift]:
            per = len(s.seq) // ROUNDS
            idx = s.seq[rnd * per:(rnd + 1) * per]
            ours_per = max(per, OURS_MIN // ROUNDS)
            ours_idx = [s.seq[(rnd * ours_per + k) % len(s.seq)] for k in range(ours_per)]
            gc.collect()
            gc.disable()
            try:
                s.ours += adjudication.time_calls(s.adj.decide,
                                                  [s.actions[i][1] for i in ours_idx])
            finally:
                gc.enable()
            r = runner.ask({"cmd": "time", "key": str(s.n), "idx": idx})
            s.agt += r["ns"]
            s.agt_allowed += r["allowed"]
        log(f"  agt: round {rnd + 1}/{ROUNDS} done")

    rows = []
    data: dict[int, float] = {}
    for s in sizes:
        ours = sorted(max(0, x - timer_ns) for x in s.ours)
        agt = sorted(max(0, x - agt_noop_ns) for x in s.agt)
        o50, o99 = percentile(ours, 50) / 1e3, percentile(ours, 99) / 1e3
        a50, a99 = percentile(agt, 50) / 1e3, percentile(agt, 99) / 1e3
        data[s.n] = a50
        same = diff = 0
        diffs: dict[str, int] = {}
        for i, allowed in zip(s.seq, s.agt_allowed, strict=False):
            cat, a = s.actions[i]
            if s.adj.decide(a).verdict.proceeds == allowed:
                same += 1
            else:
                diff += 1
                diffs[cat] = diffs.get(cat, 0) + 1
        if diff:
            section.missed.append(f"AGT translation disagrees on {diff} timed requests at "
                                  f"N={s.n:,}: {diffs}")
        rows.append([f"{s.n:,}", f"{len(s.tr.rules):,}", fmt(s.load_s, 2),
                     f"{len(ours):,} / {len(agt):,}",
                     fmt(o50, 2), fmt(o99, 2), fmt(a50, 1), fmt(a99, 1),
                     f"**{a50 / o50:,.0f}x**" if o50 else "-",
                     f"{same:,} / {diff:,}"])
    section.data["p50_us"] = {"agt": data}
    section.add(md_table(
        ["rules N (ours)", "AgentMesh rules", "load s", "decisions fiveplane / AGT",
         "fiveplane p50 µs",
         "fiveplane p99 µs", "AGT p50 µs", "AGT p99 µs", "ratio p50 AGT / fiveplane",
         "verdicts same / different"], rows, align=["l"] + ["r"] * 9))
    tr = sizes[-1].tr
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    section.add("\n".join([
        f"- AGT: {vers}; engine `agentmesh.governance.policy.PolicyEngine("
        "conflict_strategy=\"deny_overrides\")`, `evaluate(agent_did, context)`, in its own "
        f"venv ({peers.venv_dir('agt')}) in a subprocess; fiveplane: `Adjudicator.decide` "
        "with the full N-rule policy (it does more work: every rule, the network plane)",
        f"- workload: the pool's requests of the categories the expressed rules decide "
        f"({', '.join(CATEGORIES)}); {ROUNDS} interleaved rounds, warm-up {WARMUP} per "
        f"engine and size, GC off while timing; fiveplane runs at least {OURS_MIN:,} "
        "decisions per size (cycling the same requests) so its chunks are long enough to "
        "be warm; every AGT verdict is compared with fiveplane's; timer overhead "
        "subtracted (fiveplane "
        f"{timer_ns} ns; AGT runner: timer + a no-op call {agt_noop_ns} ns)",
        "- expressed rules per block: " + ", ".join(f"`{k}`" for k in tr.expressed),
        "- not expressible: " + "; ".join(f"`{k}`: {v}" for k, v in tr.not_expressed.items()),
    ]))

    # type confusion probes
    probe_doc = yaml.safe_load(cedar_bench.PROBE_POLICY)
    probe_tr = translate(probe_doc)
    probe_adj = Adjudicator(compile_text(cedar_bench.PROBE_POLICY, "<probe>"))
    probes = cedar_bench._probe_actions("bank", "bank.mcp.example.com")
    runner.ask({"cmd": "load", "key": "probe", "rules": probe_tr.rules, "default": "deny",
                "contexts": []})
    res = runner.ask({"cmd": "decide", "key": "probe",
                      "contexts": [context(a) for _, a in probes]})
    prow = []
    unsafe = 0
    for (label, a), allowed, rule in zip(probes, res["allowed"], res["rules"], strict=True):
        d = probe_adj.decide(a)
        same = d.verdict.proceeds == allowed
        unsafe += (not same) and allowed
        prow.append([label, f"{d.verdict.value} ({', '.join(d.rule_ids)})",
                     f"{'allow' if allowed else 'refuse'} ({rule or 'default'})",
                     "same" if same else "**differs**"])
    section.data["type_confusion"] = {"probes": len(prow), "agt_allows_ours_refuses": unsafe}
    rules_txt = "\n".join(f"- {{condition: \"{r['condition']}\", action: {r['action']}, "
                          f"priority: {r['priority']}}}" for r in probe_tr.rules)
    section.add("Type confusion (finding), the probe policy of the Cedar section as AgentMesh "
                f"rules:\n\n```yaml\n{rules_txt}\n```\n\n"
                + md_table(["request (transfer)", "fiveplane", "AGT", "allow/deny"], prow,
                           align=["l"] * 4)
                + f"\n\nIn {unsafe} probes AGT **allows** what fiveplane refuses: its numeric "
                "comparison turns a missing or `null` argument into 0 and `true` into 1, and "
                "returns false when `float()` fails (a list), so the cap does not match and "
                "the unconditional allow decides; a numeric string (`\"5000\"`) is coerced "
                "and compared as a number.")
    return section


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    print(run(args.quick, log=lambda m: print(m, file=sys.stderr)).markdown())
    print(f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
