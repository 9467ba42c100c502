"""The identity plane inside the adjudicator (chain ∩ policy), and chain predicates for
policy rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.action import Action, Kind, StopPoint
from proxy.decision import Plane, Verdict
from proxy.engine import Adjudicator
from proxy.identity import (
    IdentityError,
    IdentityPlane,
    VerifiedChain,
    attenuate,
    compile_identity,
    compile_principal_match,
    mint,
    principal_for,
)
from proxy.identity.verify import rejected
from proxy.principal import ANONYMOUS, Link, Principal, PrincipalKind
from proxy.testing import http_request, mcp_call, policy

T0 = 1_800_000_000

POLICY = """
version: 1
name: refunds
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - id: refund
    match: {server: crm, tool: refund, args: {amount: {le: 500}}}
    effect: allow
  - id: read
    match: {server: crm, tool: "get_*"}
    effect: allow
  - id: docs
    match: {host: docs.example.com}
    effect: allow
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(root_pem: tuple[bytes, bytes], root_key: Any) -> dict[str, Any]:
    compiled = policy(POLICY)
    config, issues = compile_identity({"trusted_roots": [{"name": "corp",
                                                          "key": root_pem[1].decode()}]})
    assert config is not None, issues
    clock = Clock(T0 + 1)
    plane = IdentityPlane(config, compiled.version, clock=clock)
    planner = mint(root_key, ("alice", "human"),
                   [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 500}}},
                    {"server": "crm", "tool": "get_*"}, {"server": "crm", "tool": "delete_*"}],
                   3600, T0)
    planner = attenuate(planner, ("planner", "agent"), None, 1800, T0)
    sub = attenuate(planner, ("sub-1", "agent"),
                    [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}}],
                    600, T0)

    def who(token: Any) -> Principal:
        return principal_for(token.to_text(), config, clock())

    return {"adj": Adjudicator(compiled, extra_planes=(plane,)), "plane": plane,
            "clock": clock, "planner": who(planner), "sub": who(sub), "config": config,
            "plain": Adjudicator(compiled)}


def decide(setup: dict[str, Any], action: Action, principal: Principal) -> tuple[Verdict, tuple[
        str, ...], str]:
    d = setup["adj"].decide(replace(action, principal=principal))
    return d.verdict, d.rule_ids, d.reason


def test_refund_scenario_of_the_issue(setup: dict[str, Any]) -> None:
    """Planner token allows refunds up to 500; the sub-agent's attenuated token (≤ 100) is
    denied for 300 and allowed for 50; the parent's token still gets 300."""
    sub, planner = setup["sub"], setup["planner"]
    assert decide(setup, mcp_call("refund", amount=50), sub)[0] is Verdict.ALLOW
    verdict, rules, reason = decide(setup, mcp_call("refund", amount=300), sub)
    assert verdict is Verdict.DENY and rules == ("identity.attenuation",)
    assert "outside the capabilities of block 2 (agent `sub-1`)" in reason
    assert "alice → planner → sub-1" in reason
    assert decide(setup, mcp_call("refund", amount=300), planner)[0] is Verdict.ALLOW
    # Beyond the chain: denied by the identity plane whatever the policy says.
    verdict, rules, _ = decide(setup, mcp_call("refund", amount=600), planner)
    assert verdict is Verdict.DENY and rules == ("identity.attenuation",)
    # The policy still bounds the chain: the chain holds delete_*, the policy does not.
    verdict, rules, _ = decide(setup, mcp_call("delete_customer"), planner)
    assert verdict is Verdict.DENY and rules == ("defaults.effect",)
    # The chain bounds the policy: docs.example.com is allowed by policy, not by the chain.
    verdict, rules, reason = decide(setup, http_request("GET", "docs.example.com"), planner)
    assert verdict is Verdict.DENY and rules == ("identity.attenuation",)
    assert "block 0 (human `alice`)" in reason
    # A mistyped amount never passes the chain (nor the policy).
    verdict, rules, _ = decide(setup, mcp_call("refund", amount="50"), sub)
    assert verdict is Verdict.DENY and "identity.attenuation" in rules


def test_anonymous(setup: dict[str, Any], root_pem: tuple[bytes, bytes]) -> None:
    verdict, rules, reason = decide(setup, mcp_call("get_customer"), ANONYMOUS)
    assert verdict is Verdict.DENY and rules == ("identity.anonymous",)
    assert "no delegation token" in reason
    config, _ = compile_identity({"anonymous": "policy", "trusted_roots": [
        {"name": "corp", "key": root_pem[1].decode()}]})
    assert config is not None
    lenient = Adjudicator(policy(POLICY), extra_planes=(IdentityPlane(config, "v"),))
    assert lenient.decide(mcp_call("get_customer")).verdict is Verdict.ALLOW
    # An unverified Principal built by other code is not a proven chain either.
    forged = Principal((Link("alice", PrincipalKind.HUMAN),))
    assert decide(setup, mcp_call("get_customer"), forged)[1] == ("identity.anonymous",)


def test_expiry_is_checked_per_action(setup: dict[str, Any]) -> None:
    sub = setup["sub"]
    assert decide(setup, mcp_call("refund", amount=50), sub)[0] is Verdict.ALLOW
    setup["clock"].now = T0 + 600          # the principal was built before: still expires
    verdict, rules, reason = decide(setup, mcp_call("refund", amount=50), sub)
    assert verdict is Verdict.DENY and rules == ("identity.expired",)
    assert "block 2 (agent `sub-1`)" in reason and "[expired]" in reason
    setup["clock"].now = T0 - 10
    assert decide(setup, mcp_call("refund", amount=50), sub)[1] == ("identity.expired",)


def test_rejected_tokens_are_denied_not_downgraded(setup: dict[str, Any]) -> None:
    bad = rejected(IdentityError("bad_signature", "block 1: the signature does not verify", 1))
    verdict, rules, reason = decide(setup, mcp_call("get_customer"), bad)
    assert verdict is Verdict.DENY and rules == ("identity.invalid",)
    assert "bad_signature" in reason and "block 1" in reason
    old = rejected(IdentityError("expired", "token expired: block 0", 0))
    assert decide(setup, mcp_call("get_customer"), old)[1] == ("identity.expired",)


def test_connect_checks_only_validity(setup: dict[str, Any]) -> None:
    plane: IdentityPlane = setup["plane"]
    connect = Action(Kind.CONNECT, StopPoint.CONNECT, "https", "anywhere.example.com", 443,
                     principal=setup["sub"])
    hits: list[Any] = []
    plane.hits(connect, hits, [])
    assert hits == []
    plane.hits(replace(connect, principal=ANONYMOUS), hits, [])
    assert [h.id for h in hits] == ["identity.anonymous"]
    setup["clock"].now = T0 + 601
    hits = []
    plane.hits(connect, hits, [])
    assert [h.id for h in hits] == ["identity.expired"]
    assert hits[0].plane is Plane.IDENTITY


def test_mcp_plumbing_needs_some_grant_on_the_server(setup: dict[str, Any]) -> None:
    plane: IdentityPlane = setup["plane"]
    sub = setup["sub"]
    hits: list[Any] = []
    plane.hits(mcp_call("", method="initialize", principal=sub), hits, [])
    plane.hits(mcp_call("", method="tools/list", principal=sub), hits, [])
    assert hits == []
    plane.hits(mcp_call("", server="billing", method="initialize", principal=sub), hits, [])
    assert [h.id for h in hits] == ["identity.attenuation"]
    assert "grants nothing on MCP server `billing`" in hits[0].reason


def test_other_kinds_are_not_the_chains_to_authorize(setup: dict[str, Any]) -> None:
    plane: IdentityPlane = setup["plane"]
    hits: list[Any] = []
    for kind in (Kind.MCP_SERVER, Kind.RESPONSE, Kind.SESSION_END):
        plane.hits(replace(mcp_call("sampling/createMessage"), kind=kind), hits, [])
    assert hits == []


def test_may_call_filters_tool_lists(setup: dict[str, Any]) -> None:
    plane: IdentityPlane = setup["plane"]
    assert plane.may_call(mcp_call("refund", principal=setup["sub"]))
    assert not plane.may_call(mcp_call("get_customer", principal=setup["sub"]))
    assert plane.may_call(mcp_call("get_customer", principal=setup["planner"]))
    assert not plane.may_call(mcp_call("refund"))
    setup["clock"].now = T0 + 601
    assert not plane.may_call(mcp_call("refund", principal=setup["sub"]))


def test_deny_rules_are_reused(setup: dict[str, Any]) -> None:
    plane: IdentityPlane = setup["plane"]
    a: list[Any] = []
    b: list[Any] = []
    plane.hits(mcp_call("refund", amount=300, principal=setup["sub"]), a, [])
    plane.hits(mcp_call("refund", amount=300, principal=setup["sub"]), b, [])
    assert len(a) == 1 and a[0] is b[0]   # one rule (and decision) per distinct reason
    assert a[0].decision.rule_ids == ("identity.attenuation",)


def test_the_plane_only_refuses(setup: dict[str, Any]) -> None:
    """Without a policy rule, a chain that admits the action does not allow it."""
    config = setup["config"]
    empty = Adjudicator(policy("version: 1\nname: empty\n"),
                        extra_planes=(IdentityPlane(config, "v", clock=setup["clock"]),))
    d = empty.decide(mcp_call("refund", amount=50, principal=setup["sub"]))
    assert d.verdict is Verdict.DENY and d.rule_ids == ("defaults.effect",)


# --- chain predicates ------------------------------------------------------------------------


def _principal(*links: tuple[str, str]) -> Principal:
    return Principal(tuple(Link(i, PrincipalKind(k)) for i, k in links))


CHAIN = _principal(("alice", "human"), ("planner-1", "agent"), ("search", "tool"))


@pytest.mark.parametrize("spec, principal, expected", [
    ({"root": "alice"}, CHAIN, True),
    ({"root": "bob"}, CHAIN, False),
    ({"root": ["bob", "al*"]}, CHAIN, True),
    ({"id": "planner-*"}, CHAIN, True),
    ({"id": "planner-2"}, CHAIN, False),
    ({"acting": "search"}, CHAIN, True),
    ({"acting": "planner-1"}, CHAIN, False),
    ({"kind": "tool"}, CHAIN, True),
    ({"kind": ["tool", "agent"]}, _principal(("alice", "human")), False),
    ({"depth": {"le": 3}}, CHAIN, True),
    ({"depth": {"lt": 3}}, CHAIN, False),
    ({"depth": {"in": [1, 2]}}, _principal(("alice", "human")), True),
    ({"depth": {"eq": 0}}, ANONYMOUS, True),
    ({"anonymous": True}, ANONYMOUS, True),
    ({"anonymous": False}, ANONYMOUS, False),
    ({"anonymous": False}, CHAIN, True),
    ({"root": "anonymous"}, ANONYMOUS, False),
    ({"kind": "human"}, ANONYMOUS, False),
    ({"root": "alice", "depth": {"le": 3}, "kind": "agent", "id": "planner-1"}, CHAIN, True),
    ({"root": "alice", "depth": {"le": 2}, "kind": "agent"}, CHAIN, False),
    ({"anonymous": True}, rejected(IdentityError("malformed", "x")), True),
])
def test_principal_predicates(spec: dict[str, Any], principal: Principal,
                              expected: bool) -> None:
    test, issues = compile_principal_match(spec)
    assert issues == [] and test is not None
    assert test(mcp_call("x", principal=principal)) is expected


def test_principal_predicates_on_a_verified_chain(setup: dict[str, Any]) -> None:
    test, _ = compile_principal_match({"root": "alice", "acting": "sub-1", "depth": {"eq": 3}})
    assert test is not None
    assert test(mcp_call("x", principal=setup["sub"]))
    assert not test(mcp_call("x", principal=setup["planner"]))
    assert isinstance(setup["sub"].verified, VerifiedChain)


@pytest.mark.parametrize("spec, code, path", [
    ({}, "policy_schema_error", ("match", "principal")),
    ({"rot": "alice"}, "policy_unknown_key", ("match", "principal", "rot")),
    ({"root": ""}, "policy_schema_error", ("match", "principal", "root")),
    ({"kind": "robot"}, "policy_schema_error", ("match", "principal", "kind")),
    ({"depth": 3}, "policy_schema_error", ("match", "principal", "depth")),
    ({"depth": {"regex": "3"}}, "policy_schema_error", ("match", "principal", "depth")),
    ({"anonymous": "yes"}, "policy_schema_error", ("match", "principal", "anonymous")),
])
def test_bad_principal_predicates(spec: Any, code: str, path: tuple[str, ...]) -> None:
    test, issues = compile_principal_match(spec, ("match", "principal"))
    assert test is None and issues[0][0] == code and issues[0][2] == path
