"""Grants are policy ``match`` mappings: same shape as the policy schema, same matchers,
same normalization, same answers as a compiled policy rule; fail closed on arguments."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import jsonschema
import pytest

from proxy.action import Action
from proxy.identity.capabilities import (
    compile_capabilities,
    describe,
    grant_within,
    widened,
)
from proxy.planes.endpoint import ANY as ENDPOINT_ANY
from proxy.policy.compiler import schema as policy_schema
from proxy.policy.match import ANY, check_shape, compile_match, unknown_servers
from proxy.testing import adjudicator, http_request, mcp_call

GRANTS: list[dict[str, Any]] = [
    {"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}},
    {"server": ["crm", "billing"], "tool": "get_*"},
    {"server": "*", "mcp_method": "resources/read"},
    {"tool": "refund", "args": {"amount": {"gt": 0, "lt": 1000},
                                "currency": {"in": ["EUR", "USD"]}}},
    {"server": "crm", "args": {"note": {"regex": "[a-z]+"}}},
    {"server": "crm", "resource": "file:///docs/*"},
    {"server": "crm", "prompt": "summary"},
    {"server": "crm", "tool": "refund", "args": {"amount": {"present": False}}},
    {"server": "crm", "tool": "send", "args": {"to": {"ne": "x"}, "cc": {"not_in": ["y"]}}},
    {"server": "crm", "tool": "send", "args": {"flag": {"eq": True}}},
    {"server": "https://files.example.com:8443/mcp", "tool": "*"},
    {"host": "api.example.com", "method": ["GET", "post"], "path": "/v1/**"},
    {"host": "*.example.org", "scheme": "HTTPS", "port": 443},
    {"host": "api-*.example.com"},
    {"method": "DELETE"},
    {"path": "/admin/*", "method": "GET"},
    {"host": "API.Example.COM."},
    {"path": "/v1/./items/../items"},
    {"scheme": "http"},
    {"port": [80, 8080]},
    {"host": "*"},
]

ACTIONS: list[Action] = [
    mcp_call("refund", amount=50),
    mcp_call("refund", amount=100),
    mcp_call("refund", amount=100.5),
    mcp_call("refund", amount="50"),
    mcp_call("refund", amount=True),
    mcp_call("refund", amount=float("nan")),
    mcp_call("refund"),
    mcp_call("refund", amount=5, currency="EUR"),
    mcp_call("refund", amount=5, currency="GBP"),
    mcp_call("refund", server="billing", amount=5, currency="USD"),
    mcp_call("get_customer"),
    mcp_call("get_invoice", server="billing"),
    mcp_call("get_customer", server="other"),
    mcp_call("file:///docs/a.md", method="resources/read"),
    mcp_call("file:///etc/passwd", method="resources/read"),
    mcp_call("summary", method="prompts/get"),
    mcp_call("anything", note="hello"),
    mcp_call("anything", note="Hello!"),
    mcp_call("anything", note=5),
    mcp_call("send", to="z"),
    mcp_call("send", to="z", cc="y"),
    mcp_call("send", to="x"),
    mcp_call("send", flag=True),
    mcp_call("send", flag=1),
    mcp_call("tool_a", server="https://files.example.com:8443/mcp", host="files.example.com",
             port=8443),
    http_request("GET", "api.example.com", "/v1/items"),
    http_request("POST", "api.example.com", "/v1/items/3"),
    http_request("PUT", "api.example.com", "/v1/items/3"),
    http_request("GET", "api.example.com", "/v2/items"),
    http_request("GET", "www.example.org"),
    http_request("GET", "a.b.example.org"),
    http_request("GET", "example.org"),
    http_request("GET", "www.example.org", scheme="http", port=443),
    http_request("GET", "api-eu.example.com"),
    http_request("GET", "api.example.com.evil.com"),
    http_request("DELETE", "x.example.net", "/thing"),
    http_request("GET", "x.example.net", "/admin/users"),
    http_request("GET", "x.example.net", "/admin/users/7"),
    http_request("GET", "x.example.net", "/v1/items"),
    http_request("GET", "x.example.net", scheme="http"),
    http_request("GET", "x.example.net", port=8080),
]

POLICY = """
version: 1
name: equivalence
mcp_servers:
  crm: {{url: "https://crm.example.com/mcp"}}
  billing: {{url: "https://billing.example.com/mcp"}}
rules:
  - id: grant
    match: {match}
    effect: allow
"""


@pytest.mark.parametrize("grant", GRANTS, ids=lambda g: describe(g)[:60])
def test_grant_answers_like_the_same_policy_rule(grant: dict[str, Any]) -> None:
    compiled, issues = compile_match(grant)
    assert issues == [] and compiled is not None
    adj = adjudicator(POLICY.format(match=json.dumps(grant)))
    for action in ACTIONS:
        allowed = adj.decide(action).allowed
        assert compiled.admits(action) is allowed, (grant, action.summary(), action.arguments)


def test_some_grant_admits_and_some_refuses_each_action() -> None:
    """The equivalence table is not trivial: every action meets both answers."""
    compiled = [compile_match(g)[0] for g in GRANTS]
    for action in ACTIONS[:-1]:
        answers = {c.admits(action) for c in compiled if c is not None}
        assert False in answers
    assert sum(c.admits(a) for c, a in itertools.product(compiled, ACTIONS) if c) > 40


def test_exact_host_is_tested_on_mcp_grants_too() -> None:
    """A grant's exact ``host`` restricts MCP calls as well (the endpoint index files MCP
    rules by server/method/name only, so the compiler must keep this test)."""
    compiled, _ = compile_match({"server": "crm", "host": "other.example.com"})
    assert compiled is not None
    assert not compiled.admits(mcp_call("refund"))
    assert compiled.admits(mcp_call("refund", host="other.example.com"))


def test_index_metadata() -> None:
    assert ANY == ENDPOINT_ANY
    c, _ = compile_match({"server": "crm", "tool": ["refund", "get_*"]})
    assert c is not None
    assert (c.servers, c.mcp_methods, c.names) == (("crm",), ("tools/call",), (ANY,))
    c, _ = compile_match({"host": ["API.example.com", "*.example.org"], "method": "get"})
    assert c is not None
    assert c.host_keys == ("api.example.com", "*.example.org") and c.http_methods == ("GET",)


@pytest.mark.parametrize("grant, code, fragment", [
    ({"server": "crm", "method": "GET"}, "policy_conflict_error", "mcp_method"),
    ({"tool": "a", "prompt": "b"}, "policy_conflict_error", "only one of"),
    ({"tool": "a", "mcp_method": "prompts/get"}, "policy_conflict_error", "implies"),
    ({"mcp_method": "tools/list", "args": {"a": {"eq": 1}}}, "policy_conflict_error", "args"),
    ({"server": "crm", "args": {"a": {"regex": "("}}}, "policy_predicate_error", "argument"),
    ({"host": "*.exa mple.com"}, "policy_pattern_error", "bad host"),
    ({"host": "*.a*.com"}, "policy_pattern_error", "bad host pattern"),
    ({"hots": "x"}, "policy_unknown_key", "unknown key"),
    ({"port": 0}, "policy_schema_error", "port"),
    ({"port": True}, "policy_schema_error", "port"),
    ({"tool": ""}, "policy_schema_error", "non-empty"),
    ({"tool": []}, "policy_schema_error", "non-empty"),
    ({"server": "crm", "args": {"a": {}}}, "policy_schema_error", "predicate"),
    ({"server": "crm", "args": {"a": {"between": [1, 2]}}}, "policy_schema_error", "unknown"),
    ({"server": "crm", "args": {"a": {"le": True}}}, "policy_schema_error", "finite"),
    ({"server": "crm", "args": {"a": {"in": "abc"}}}, "policy_schema_error", "list"),
    ({"server": "crm", "args": {"a": {"present": 1}}}, "policy_schema_error", "true or false"),
    ({}, "policy_schema_error", "non-empty"),
])
def test_bad_grants_are_reported(grant: dict[str, Any], code: str, fragment: str) -> None:
    compiled, issues = compile_match(grant, ("capabilities", 0))
    assert compiled is None
    assert issues and issues[0][0] == code, issues
    assert fragment in issues[0][1]
    assert issues[0][2][:2] == ("capabilities", 0)


def _match_validator() -> jsonschema.Draft202012Validator:
    full = copy.deepcopy(policy_schema())
    return jsonschema.Draft202012Validator({"$defs": full["$defs"], "$ref": "#/$defs/match"})


SHAPES: list[Any] = [
    *GRANTS,
    {}, {"hots": "x"}, {"port": 0}, {"port": 70000}, {"port": []}, {"port": [443, "80"]},
    {"port": True}, {"tool": ""}, {"tool": []}, {"tool": [1]}, {"tool": ["a", ""]},
    {"args": []}, {"args": {"a": {}}}, {"args": {"a": {"le": "1"}}}, {"args": {"a": {"le": 1}}},
    {"args": {"a": {"in": [1]}}}, {"args": {"a": {"in": 1}}}, {"args": {"a": {"regex": 1}}},
    {"args": {"a": {"present": "yes"}}}, {"args": {"a": {"eq": None}}},
    {"args": {"a": {"nope": 1}}}, {"args": {"a": 5}}, {"server": 5}, "crm", ["crm"],
]


@pytest.mark.parametrize("grant", SHAPES, ids=lambda g: json.dumps(g)[:50])
def test_shape_check_agrees_with_the_policy_schema(grant: Any) -> None:
    schema_ok = _match_validator().is_valid(grant)
    assert (check_shape(grant) == []) is schema_ok


def test_capability_sets_are_memoized_and_any_of() -> None:
    caps = [{"server": "crm", "tool": "refund"}, {"host": "api.example.com"}]
    a, _ = compile_capabilities(caps)
    b, _ = compile_capabilities(json.loads(json.dumps(caps)))
    assert a is b and a is not None
    assert a.admits(mcp_call("refund")) and a.admits(http_request("GET", "api.example.com"))
    assert not a.admits(mcp_call("get_customer"))
    empty, _ = compile_capabilities([])
    assert empty is not None and not empty.admits(mcp_call("refund"))
    assert compile_capabilities({"server": "crm"})[0] is None


def test_may_call_and_reaches() -> None:
    c, _ = compile_match({"server": "crm", "tool": "refund", "args": {"amount": {"le": 5}}})
    assert c is not None
    assert c.may_call(mcp_call("refund")) and not c.admits(mcp_call("refund"))
    assert not c.may_call(mcp_call("get_customer"))
    assert c.reaches(mcp_call("", method="initialize"))
    assert not c.reaches(mcp_call("", server="billing", method="initialize"))
    assert not c.reaches(http_request("GET", "crm.example.com"))


def test_unknown_servers() -> None:
    assert unknown_servers({"server": ["crm", "crn", "c*", "https://x/mcp"]}, {"crm"}) == ["crn"]


@pytest.mark.parametrize("child, parent, within", [
    ({"server": "crm", "tool": "refund"}, {"server": "crm", "tool": "refund"}, True),
    ({"server": "crm", "tool": "refund"}, {"server": "crm"}, True),
    ({"server": "crm", "tool": "refund"}, {"server": "*", "tool": "*"}, True),
    ({"server": "crm", "tool": "get_a"}, {"server": "crm", "tool": "get_*"}, True),
    ({"server": "crm", "tool": "get_*"}, {"server": "crm", "tool": "get_a"}, False),
    ({"server": "crm"}, {"server": "crm", "tool": "refund"}, False),
    ({"server": "crm", "tool": "r", "args": {"a": {"le": 100}}},
     {"server": "crm", "tool": "r", "args": {"a": {"le": 500}}}, True),
    ({"server": "crm", "tool": "r", "args": {"a": {"lt": 500}}},
     {"server": "crm", "tool": "r", "args": {"a": {"le": 500}}}, True),
    ({"server": "crm", "tool": "r", "args": {"a": {"le": 500}}},
     {"server": "crm", "tool": "r", "args": {"a": {"lt": 500}}}, False),
    ({"server": "crm", "tool": "r", "args": {"a": {"in": [1, 2]}}},
     {"server": "crm", "tool": "r", "args": {"a": {"le": 5}}}, True),
    ({"server": "crm", "tool": "r"},
     {"server": "crm", "tool": "r", "args": {"a": {"le": 5}}}, False),
    ({"tool": "r"}, {"mcp_method": "tools/call"}, True),
    ({"host": "a.example.com", "method": "GET"}, {"host": "*.example.com"}, True),
    ({"host": "*.a.example.com"}, {"host": "*.example.com"}, True),
    ({"host": "*.example.com"}, {"host": "a.example.com"}, False),
    ({"host": "A.example.com."}, {"host": "a.example.com"}, True),
    ({"path": "/v1/x"}, {"path": "/v1/**"}, True),
    ({"path": "/v1/x/y"}, {"path": "/v1/*"}, False),
    ({"host": "a.example.com"}, {"server": "crm"}, False),
])
def test_grant_within(child: dict[str, Any], parent: dict[str, Any], within: bool) -> None:
    assert grant_within(child, parent) is within


def test_widened_lists_unprovable_grants() -> None:
    parent = [{"server": "crm", "tool": "get_*"}]
    assert widened([{"server": "crm", "tool": "get_a"}, {"server": "*"}], parent) == [1]


def test_describe() -> None:
    assert describe({"server": "crm", "tool": ["a", "b"], "args": {
        "amount": {"le": 5, "gt": 0}, "to": {"in": ["x"]}, "f": {"present": False}}}) == (
        "server=crm tool=a,b amount<=5 amount>0 to in ['x'] f absent")
