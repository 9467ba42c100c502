"""The adjudicator: default deny, deny overrides, order-free, fail closed, no type confusion."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.decision import Verdict
from proxy.engine import Adjudicator
from proxy.testing import adjudicator, http_request, mcp_call, policy

SUPPORT = """
version: 1
name: support
network:
  allow:
    - {host: crm.example.com, ports: [443]}
    - {host: "*.tickets.example.com"}
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - id: crm-read
    match: {server: crm, tool: "get_*"}
    effect: allow
  - id: refund-small
    match: {server: crm, tool: refund, args: {amount: {le: 100}}}
    effect: allow
  - id: refund-big
    match: {server: crm, tool: refund, args: {amount: {gt: 500}}}
    effect: deny
    reason: refunds over 500 are never allowed
  - id: refund-mid
    match: {server: crm, tool: refund, args: {amount: {gt: 100, le: 500}}}
    effect: escalate
  - id: no-export
    match: {server: crm, tool: "get_export*"}
    effect: deny
  - id: tickets
    match: {host: "*.tickets.example.com", method: [GET, POST], path: "/api/**"}
    effect: allow
"""


@pytest.fixture(scope="module")
def adj() -> Adjudicator:
    return adjudicator(SUPPORT)


@pytest.mark.parametrize("action, verdict, rules", [
    (mcp_call("get_customer"), Verdict.ALLOW, ("crm-read",)),
    (mcp_call("get_export_all"), Verdict.DENY, ("no-export",)),       # deny overrides allow
    (mcp_call("refund", amount=50), Verdict.ALLOW, ("refund-small",)),
    (mcp_call("refund", amount=300), Verdict.ESCALATE, ("refund-mid",)),
    (mcp_call("refund", amount=900), Verdict.DENY, ("refund-big",)),
    (mcp_call("delete_all"), Verdict.DENY, ("defaults.effect",)),
    (mcp_call("get_customer", server="other"), Verdict.DENY, ("defaults.effect",)),
    (http_request("GET", "eu.tickets.example.com", "/api/v2/x"), Verdict.ALLOW, ("tickets",)),
    (http_request("DELETE", "eu.tickets.example.com", "/api/x"), Verdict.DENY,
     ("defaults.effect",)),
    (http_request("GET", "eu.tickets.example.com", "/admin"), Verdict.DENY, ("defaults.effect",)),
    (http_request("GET", "evil.example.net"), Verdict.DENY, ("network.default",)),
])
def test_decisions(adj: Adjudicator, action, verdict, rules) -> None:
    decision = adj.decide(action)
    assert decision.verdict is verdict
    assert decision.rule_ids == rules
    assert decision.policy_version == adj.version
    assert decision.reason


@pytest.mark.parametrize("amount", [
    "50", "500", "1e9", None, True, [], {}, math.nan, math.inf, -math.inf, "NaN",
])
def test_mistyped_amount_never_allows_and_never_disables_a_forbid(adj: Adjudicator, amount) -> None:
    decision = adj.decide(mcp_call("refund", amount=amount))
    assert decision.verdict is Verdict.DENY
    assert "refund-big" in decision.rule_ids
    assert decision.errors and "amount" in decision.errors[0]


def test_missing_amount_denies(adj: Adjudicator) -> None:
    decision = adj.decide(mcp_call("refund"))
    assert decision.verdict is Verdict.DENY
    assert any("missing" in e for e in decision.errors)


def test_internal_addresses_denied_even_when_resolved_from_a_name(adj: Adjudicator) -> None:
    for address, rule in [("10.1.2.3", "network.internal"), ("127.0.0.1", "network.internal"),
                          ("169.254.169.254", "network.metadata"),
                          ("::ffff:169.254.169.254", "network.metadata")]:
        d = adj.decide(http_request("GET", "crm.example.com", addresses=(address,)))
        assert (d.verdict, d.rule_ids) == (Verdict.DENY, (rule,)), address


def test_allow_internal_excepts_only_listed_ports() -> None:
    adj = adjudicator("""
        version: 1
        name: t
        network: {allow_internal: [{cidr: 127.0.0.1/32, ports: [8080]}]}
        rules: [{id: all, match: {host: "*"}, effect: allow}]
        """)
    assert adj.decide(http_request("GET", "127.0.0.1", port=8080, scheme="http")).allowed
    assert not adj.decide(http_request("GET", "127.0.0.1", port=8081, scheme="http")).allowed
    assert not adj.decide(http_request("GET", "10.0.0.1", port=8080, scheme="http")).allowed


def test_default_allow_still_honours_denies() -> None:
    adj = adjudicator("""
        version: 1
        name: t
        defaults: {effect: allow}
        rules: [{id: no-delete, match: {method: DELETE}, effect: deny}]
        """)
    assert adj.decide(http_request("GET", "a.example.com")).allowed
    d = adj.decide(http_request("DELETE", "a.example.com"))
    assert (d.verdict, d.rule_ids) == (Verdict.DENY, ("no-delete",))


def test_an_exception_inside_a_plane_denies(adj: Adjudicator) -> None:
    broken = Adjudicator(adj.policy)
    broken._planes = (*broken._planes[:-1], _Exploding())
    d = broken.decide(mcp_call("get_customer"))
    assert d.verdict is Verdict.DENY
    assert d.rule_ids == ("adjudicator.error",)
    assert "broken plane" in d.reason


class _Exploding:
    plane = None

    def hits(self, action, out, errors) -> None:
        raise RuntimeError("broken plane")


def test_index_only_touches_candidate_rules() -> None:
    rules = "\n".join(
        f"  - {{id: r{i}, match: {{server: crm, tool: tool_{i}}}, effect: allow}}"
        for i in range(2000)
    )
    adj = adjudicator(f"""
version: 1
name: big
mcp_servers: {{crm: {{url: "https://crm.example.com/mcp"}}}}
rules:
{rules}
""")
    assert adj._endpoint.mcp_candidates("crm", "tools/call", "tool_1234")[0].id == "r1234"
    assert len(adj._endpoint.mcp_candidates("crm", "tools/call", "tool_1234")) == 1
    assert adj.decide(mcp_call("tool_1999")).rule_ids == ("r1999",)


def test_tools_list_visibility(adj: Adjudicator) -> None:
    assert adj.may_call_tool(mcp_call("get_customer"))
    assert adj.may_call_tool(mcp_call("refund"))          # some amounts are allowed
    assert not adj.may_call_tool(mcp_call("get_export_all"))  # denied whatever the arguments
    assert not adj.may_call_tool(mcp_call("delete_all"))   # default deny


RULE_POOL = [
    "{id: a, match: {server: crm, tool: refund}, effect: allow}",
    "{id: b, match: {server: crm, tool: refund, args: {amount: {gt: 100}}}, effect: escalate}",
    "{id: c, match: {server: crm, tool: 'ref*', args: {amount: {gt: 500}}}, effect: deny}",
    "{id: d, match: {tool: refund, args: {currency: {in: [EUR, USD]}}}, effect: allow}",
    "{id: e, match: {server: crm, tool: refund, args: {note: {regex: '.*ignore.*'}}}, "
    "effect: deny}",
    "{id: f, match: {server: crm, mcp_method: tools/call}, effect: narrow, "
    "narrow: {args: {amount: {max: 50}}}}",
    "{id: g, match: {server: crm, tool: refund, args: {amount: {present: false}}}, "
    "effect: deny}",
]


@settings(max_examples=200, deadline=None)
@given(
    subset=st.lists(st.sampled_from(range(len(RULE_POOL))), min_size=1, unique=True),
    seed=st.integers(0, 2**32),
    amount=st.one_of(st.integers(-10, 1000), st.floats(allow_nan=True), st.text(max_size=3),
                     st.none()),
    note=st.one_of(st.just("please ignore limits"), st.just("ok"), st.integers()),
)
def test_decision_does_not_depend_on_rule_order(subset, seed, amount, note) -> None:
    header = ("version: 1\nname: t\nmcp_servers: {crm: {url: 'https://crm.example.com/mcp'}}\n"
              "rules:\n")
    rules = [RULE_POOL[i] for i in subset]
    shuffled = rules[:]
    random.Random(seed).shuffle(shuffled)
    first = policy(header + "".join(f"  - {r}\n" for r in rules))
    second = policy(header + "".join(f"  - {r}\n" for r in shuffled))
    action = mcp_call("refund", amount=amount, note=note, currency="EUR")
    d1, d2 = Adjudicator(first).decide(action), Adjudicator(second).decide(action)
    assert (d1.verdict, d1.rule_ids, d1.errors, d1.reason) == (
        d2.verdict, d2.rule_ids, d2.errors, d2.reason)
