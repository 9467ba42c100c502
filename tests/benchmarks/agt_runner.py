"""Subprocess runner for the Agent Governance Toolkit benchmark (``agt_bench.py``).

Runs under the *peer's* interpreter (a separate venv with ``agent-governance-toolkit[core]``
installed, never the project's), imports nothing from fiveplane, and speaks JSON lines on
stdin/stdout:

    {"cmd": "load", "key": K, "rules": [{name, condition, action, priority}...],
     "default": "deny", "contexts": [{...}, ...]}   -> {"ok": true, "load_s": ...}
    {"cmd": "time", "key": K, "idx": [i, ...]}      -> {"ns": [...], "allowed": [...]}
    {"cmd": "decide", "key": K, "contexts": [...]}  -> {"allowed": [...], "rules": [...]}
    {"cmd": "noop", "count": N}                     -> {"ns": [...]}  (timer + call baseline)
    {"cmd": "versions"}                             -> {...}

The engine is ``agentmesh.governance.policy.PolicyEngine`` (AgentMesh, shipped in
``agent-governance-toolkit-core``) with ``conflict_strategy="deny_overrides"``; each
decision is ``engine.evaluate(agent_did, context)``, timed alone with
``time.perf_counter_ns``, GC off while timing.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import warnings
from typing import Any

AGENT = "did:agent:bench"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("agent-governance-toolkit", "agent-governance-toolkit-core", "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> int:
    warnings.simplefilter("ignore")
    from agentmesh.governance.policy import Policy, PolicyEngine, PolicyRule

    engines: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "versions":
                reply: dict[str, Any] = _versions()
            elif cmd == "load":
                t0 = time.perf_counter()
                engine = PolicyEngine(conflict_strategy="deny_overrides")
                rules = [PolicyRule(name=r["name"], condition=r["condition"],
                                    action=r["action"], priority=r.get("priority", 0))
                         for r in msg["rules"]]
                engine.load_policy(Policy(name=f"bench-{msg['key']}", agents=["*"],
                                          rules=rules, default_action=msg["default"]))
                engines[msg["key"]] = (engine, msg["contexts"])
                reply = {"ok": True, "load_s": time.perf_counter() - t0}
            elif cmd == "decide":
                engine, _ = engines[msg["key"]]
                ds = [engine.evaluate(AGENT, dict(c)) for c in msg["contexts"]]
                reply = {"allowed": [d.allowed for d in ds],
                         "rules": [d.matched_rule for d in ds]}
            elif cmd == "time":
                engine, contexts = engines[msg["key"]]
                evaluate = engine.evaluate
                pc = time.perf_counter_ns
                ns, allowed = [], []
                gc.collect()
                gc.disable()
                try:
                    for i in msg["idx"]:
                        c = contexts[i]
                        t0 = pc()
                        d = evaluate(AGENT, c)
                        t1 = pc()
                        ns.append(t1 - t0)
                        allowed.append(d.allowed)
                finally:
                    gc.enable()
                reply = {"ns": ns, "allowed": allowed}
            elif cmd == "noop":
                pc = time.perf_counter_ns

                def noop(_a: str, _c: Any) -> None:
                    return None
                ns = []
                for _ in range(msg["count"]):
                    t0 = pc()
                    noop(AGENT, None)
                    t1 = pc()
                    ns.append(t1 - t0)
                reply = {"ns": ns}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as e:  # report, keep serving
            reply = {"error": repr(e)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
