"""Composed Authority, property-based: for random delegation chains (depth 1-6) with
random capability sets, validity windows, clocks and actions, ``Verifier.verify`` →
``admits`` equals a brute-force oracle that evaluates every grant with plain Python
comparisons (not the policy matchers), ANDs over blocks, and admits nothing when any
block is outside its window.

Two drivers share the generator and the oracle:

* a seeded loop over ``CHAINS`` = 10,002 chains (1,667 random depth-6 delegation paths
  and all their prefixes), each checked at ``CLOCKS`` clocks against ``ACTIONS``
  actions: 200,040 trials (the first check of a chain is a cold verification, the rest
  go through the cache, so both paths are compared with the oracle);
* hypothesis over the same space (``HYPOTHESIS_EXAMPLES`` chains) for shrinking.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.action import Action, Kind, StopPoint
from proxy.identity import IdentityError, Verifier, attenuate, mint
from proxy.principal import PrincipalKind

CHAINS = 10_000
CLOCKS = 4
ACTIONS = 5
HYPOTHESIS_EXAMPLES = 500
SEED = 20260301
T0 = 1_800_000_000

SERVERS = ["crm", "billing"]
TOOLS = ["refund", "get_customer", "get_invoice", "delete_customer"]
TOOL_PATTERNS = [*TOOLS, "get_*"]
HOSTS = ["api.example.com", "files.example.com", "x.cdn.example.org"]
HOST_PATTERNS = [*HOSTS, "*.example.org"]
METHODS = ["GET", "POST", "DELETE"]
PATH_PATTERNS = ["/v1/**", "/v1/items", "/admin/*"]
PATHS = ["/v1/items", "/v1/items/7", "/v1", "/admin/users", "/admin/users/1", "/"]
BOUNDS = [0, 50, 100, 300, 500]
OPS = ["le", "lt", "ge", "gt"]
MISSING = object()
AMOUNTS: list[Any] = [MISSING, 0, 50, 99.5, 100, 300, 500, 501, 1000, -1, "50", True, None,
                      float("nan"), float("inf")]


# --- the oracle: plain Python, no matchers ------------------------------------------------


def oracle_grant(grant: dict[str, Any], action: Action) -> bool:
    mcp = any(k in grant for k in ("server", "tool", "args"))
    if mcp != (action.kind is Kind.MCP):
        return False
    if mcp:
        if "server" in grant and action.server not in grant["server"]:
            return False
        if "tool" in grant:
            if action.mcp_method != "tools/call":
                return False
            ok = False
            for t in grant["tool"]:
                if t == action.name or (t.endswith("*") and action.name.startswith(t[:-1])):
                    ok = True
            if not ok:
                return False
        if "args" in grant:
            v = action.arguments.get("amount", MISSING)
            if v is MISSING or isinstance(v, bool) or not isinstance(v, int | float):
                return False
            if not math.isfinite(v):
                return False
            for op, bound in grant["args"]["amount"].items():
                if op == "le" and not v <= bound:
                    return False
                if op == "lt" and not v < bound:
                    return False
                if op == "ge" and not v >= bound:
                    return False
                if op == "gt" and not v > bound:
                    return False
        return True
    if "host" in grant:
        ok = False
        for h in grant["host"]:
            if h == action.host or (h.startswith("*.") and action.host.endswith(h[1:])):
                ok = True
        if not ok:
            return False
    if "method" in grant and action.method not in grant["method"]:
        return False
    if "path" in grant:
        ok = False
        for p in grant["path"]:
            if p == "/v1/**":
                ok = ok or action.path.startswith("/v1/")
            elif p == "/admin/*":
                rest = action.path[len("/admin/"):]
                ok = ok or (action.path.startswith("/admin/") and "/" not in rest)
            else:
                ok = ok or p == action.path
        if not ok:
            return False
    return True


def oracle(blocks: list[dict[str, Any]], action: Action, t: float) -> bool | str:
    """True / False, or the error code when a block is outside its window."""
    if any(t >= b["not_after"] for b in blocks):
        return "expired"
    if any(t < b["not_before"] for b in blocks):
        return "not_yet_valid"
    return all(any(oracle_grant(g, action) for g in block["caps"]) for block in blocks)


# --- the generator ---------------------------------------------------------------------------


def _subset(rng: random.Random, items: list[str]) -> list[str]:
    k = rng.randint(1, min(3, len(items)))
    return rng.sample(items, k)


def _amount_predicate(rng: random.Random) -> dict[str, Any]:
    ops = rng.sample(OPS, rng.randint(1, 2))
    return {op: rng.choice(BOUNDS) for op in ops}


def random_grant(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.65:
        g: dict[str, Any] = {}
        if rng.random() < 0.8:
            g["server"] = _subset(rng, SERVERS)
        if rng.random() < 0.8:
            g["tool"] = _subset(rng, TOOL_PATTERNS)
        if rng.random() < 0.5:
            g["args"] = {"amount": _amount_predicate(rng)}
        if not g:
            g["server"] = _subset(rng, SERVERS)
        return g
    g = {}
    if rng.random() < 0.7:
        g["host"] = _subset(rng, HOST_PATTERNS)
    if rng.random() < 0.5:
        g["method"] = _subset(rng, METHODS)
    if rng.random() < 0.4:
        g["path"] = _subset(rng, PATH_PATTERNS)
    if not g:
        g["host"] = _subset(rng, HOST_PATTERNS)
    return g


def narrowed(rng: random.Random, grant: dict[str, Any]) -> dict[str, Any]:
    """A grant derived from ``grant`` (usually narrower, sometimes wider: a widened block
    must still only yield the intersection)."""
    g = {k: (list(v) if isinstance(v, list) else v) for k, v in grant.items()}
    if "args" in g:
        g["args"] = {"amount": dict(g["args"]["amount"])}
    choice = rng.random()
    if choice < 0.3 and any(k in g for k in ("server", "tool", "args")):
        g["args"] = {"amount": _amount_predicate(rng)}
    elif choice < 0.5:
        key = rng.choice(list(g))
        if key != "args" and len(g[key]) > 1:
            g[key] = g[key][:-1]
    elif choice < 0.6:
        key = rng.choice(list(g))
        if key != "args":
            del g[key]                      # widened on purpose
            if not g:
                return random_grant(rng)
    return g


def random_chain(rng: random.Random, depth: int | None = None) -> list[dict[str, Any]]:
    depth = rng.randint(1, 6) if depth is None else depth
    blocks = []
    caps = [random_grant(rng) for _ in range(rng.randint(1, 3))]
    for i in range(depth):
        if i:
            if caps and rng.random() < 0.75:
                caps = [narrowed(rng, rng.choice(caps)) for _ in range(rng.randint(1, 3))]
            else:
                caps = [random_grant(rng) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.95:       # overlapping windows: the chain is valid at some t
            nbf = T0 + rng.randint(-60, 20)
            naf = T0 + rng.randint(60, 400)
        else:                         # a window that may not overlap the others
            nbf = T0 + rng.randint(-200, 200)
            naf = nbf + rng.randint(1, 60)
        blocks.append({"id": f"p{i}", "kind": rng.choice(["human", "agent", "tool"]),
                       "caps": caps, "not_before": nbf, "not_after": naf})
    return blocks


def random_action(rng: random.Random, blocks: list[dict[str, Any]]) -> Action:
    """Half of the actions are aimed at a grant of some block, the rest are anything."""
    hint: dict[str, Any] = {}
    if rng.random() < 0.6:
        caps = rng.choice(blocks)["caps"]
        if caps:
            hint = rng.choice(caps)
    mcp = any(k in hint for k in ("server", "tool", "args")) if hint else rng.random() < 0.6
    if mcp:
        server = rng.choice(hint.get("server", [*SERVERS, "other"]))
        tools = [t.replace("*", "x") for t in hint.get("tool", [])] or [*TOOLS, "send_email"]
        tool = rng.choice(tools)
        amount = rng.choice(AMOUNTS)
        args = {} if amount is MISSING else {"amount": amount}
        method = "tools/call" if rng.random() < 0.9 else "resources/read"
        return Action(Kind.MCP, StopPoint.REQUEST_BODY, "https", "crm.example.com", 443,
                      method="POST", path="/mcp", server=server, mcp_method=method,
                      name=tool if method == "tools/call" else "file:///x", arguments=args)
    hosts = [h.replace("*", "y") for h in hint.get("host", [])] or [*HOSTS, "evil.com"]
    host = rng.choice([*hosts, "example.org"])
    return Action(Kind.HTTP, StopPoint.REQUEST_BODY, "https", host, 443,
                  method=rng.choice(hint.get("method", METHODS)), path=rng.choice(PATHS))


def random_clock(rng: random.Random, blocks: list[dict[str, Any]]) -> float:
    """Boundaries of a random block (a quarter of the clocks), inside the effective
    window (half), anywhere (the rest)."""
    r = rng.random()
    b = rng.choice(blocks)
    if r < 0.25:
        return rng.choice([b["not_after"], b["not_after"] - 1, b["not_before"],
                           b["not_before"] - 0.5])
    nbf = max(x["not_before"] for x in blocks)
    naf = min(x["not_after"] for x in blocks)
    if r < 0.75 and naf > nbf:
        return rng.uniform(nbf, naf - 0.001)
    return T0 + rng.uniform(-120, 420)


def build(blocks: list[dict[str, Any]], root_key: Any) -> list[str]:
    """The tokens of every prefix of ``blocks`` (what each holder along the chain has)."""
    first = blocks[0]
    token = mint(root_key, (first["id"], first["kind"]), first["caps"],
                 first["not_after"] - first["not_before"], first["not_before"])
    texts = [token.to_text()]
    for b in blocks[1:]:
        token = attenuate(token, (b["id"], b["kind"]), b["caps"],
                          b["not_after"] - b["not_before"], b["not_before"])
        texts.append(token.to_text())
    return texts


def check(verifier: Verifier, text: str, blocks: list[dict[str, Any]], action: Action,
          t: float) -> tuple[bool | str, bool | str]:
    """(oracle, verifier) outcomes: True/False, or the error code."""
    expected = oracle(blocks, action, t)
    result = verifier.verify(text, t)
    if isinstance(result, IdentityError):
        return expected, result.code
    admitted = result.admits(action)
    assert admitted is True or isinstance(admitted, str)
    return expected, admitted is True


def check_principal(verifier: Verifier, text: str, blocks: list[dict[str, Any]]) -> None:
    t = max(b["not_before"] for b in blocks)
    result = verifier.verify(text, t)
    if isinstance(result, IdentityError):
        assert result.code in ("expired", "not_yet_valid")
        return
    assert [link.id for link in result.principal.chain] == [b["id"] for b in blocks]
    assert [link.kind for link in result.principal.chain] == [
        PrincipalKind(b["kind"]) for b in blocks]


def test_verifier_equals_oracle_on_10000_random_chains(root_key: Any, root_pub: Any) -> None:
    """Chains come in families: a random depth-6 delegation path and its 6 prefixes (the
    tokens its holders have), so every depth 1-6 is equally represented and each block
    is signed once. Every prefix is a distinct token, verified cold, then from cache."""
    rng = random.Random(SEED)
    verifier = Verifier({"corp": root_pub}, cache_size=64)
    chains = trials = admitted = outside = 0
    depths = [0] * 7
    while chains < CHAINS:
        family = random_chain(rng, depth=6)
        for depth, text in enumerate(build(family, root_key), start=1):
            blocks = family[:depth]
            chains += 1
            depths[depth] += 1
            check_principal(verifier, text, blocks)
            for _ in range(CLOCKS):
                t = random_clock(rng, blocks)
                for _ in range(ACTIONS):
                    action = random_action(rng, blocks)
                    expected, got = check(verifier, text, blocks, action, t)
                    assert got == expected, (
                        f"mismatch on chain {blocks} at t={t} for {action}: "
                        f"expected {expected!r}, got {got!r}")
                    trials += 1
                    admitted += expected is True
                    outside += isinstance(expected, str)
    print(f"\ncomposed authority: {chains} chains (by depth 1-6: {depths[1:]}), {trials} "
          f"(chain, clock, action) trials: {admitted} admitted, {trials - admitted - outside} "
          f"refused, {outside} outside the validity window; 0 mismatches")
    assert chains >= CHAINS
    assert trials == chains * CLOCKS * ACTIONS
    # The generator must exercise every outcome substantially.
    assert admitted > trials * 0.05
    assert outside > trials * 0.05
    assert trials - admitted - outside > trials * 0.05


@st.composite
def scenario(draw: Any) -> tuple[list[dict[str, Any]], list[Action], list[float]]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    blocks = random_chain(rng)
    return (blocks, [random_action(rng, blocks) for _ in range(ACTIONS)],
            [random_clock(rng, blocks) for _ in range(CLOCKS)])


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_verifier_equals_oracle_hypothesis(root_key: Any, root_pub: Any,
                                           case: tuple[list[dict[str, Any]], list[Action],
                                                       list[float]]) -> None:
    blocks, actions, clocks = case
    verifier = Verifier({"corp": root_pub})
    text = build(blocks, root_key)[-1]
    check_principal(verifier, text, blocks)
    for t in clocks:
        for action in actions:
            expected, got = check(verifier, text, blocks, action, t)
            assert got == expected
