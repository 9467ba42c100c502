"""Narrow and shadow: specs checked at compile time, narrowings composed toward the stricter
form and never widening, realized on the forwarded body, re-decided, recorded with both
forms; shadow rules recorded and not enforced."""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.approvals import MemoryApprovalStore
from proxy.audit import AuditLog
from proxy.audit.explain import explain_all
from proxy.audit.keys import load_secret
from proxy.audit.policy_store import PolicyStore
from proxy.audit.schema import Sealer, unseal_body
from proxy.decision import Verdict
from proxy.engine import Adjudicator
from proxy.errors import PolicyError
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.narrow import NarrowError, apply, compose, narrow_rule_ids
from proxy.policy import compile_text
from proxy.policy.narrowing import NOT_SET, compile_narrowing
from proxy.testing import mcp_call
from proxy.translate import RequestView

HEAD = """\
version: 1
name: t
mcp_servers: {bank: {url: "https://bank.example.com/mcp"}}
rules:
  - {id: bank-ok, match: {server: bank, mcp_method: tools/call}, effect: allow}
"""

CAP = """\
      - id: cap
        match: {server: bank, tool: send_money}
        effect: narrow
        narrow: {args: {amount: {max: 500}}}
"""


def text(rules: str, tail: str = "") -> str:
    return HEAD + textwrap.indent(textwrap.dedent(rules), "  ") + textwrap.dedent(tail)


def issues(rules: str) -> list[tuple[int, str, str | None, str]]:
    with pytest.raises(PolicyError) as info:
        compile_text(text(rules), "p.yaml")
    return [(i.line, i.code, i.rule_id, i.message) for i in info.value.issues]


def gateway(rules: str = CAP, sink: Any = None, tail: str = "", **kw: Any) -> Gateway:
    return Gateway(compile_text(text(rules, tail), "p.yaml"),
                   sink if sink is not None else MemorySink(), **kw)


def call(name: str, **args: Any) -> RequestView:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}}
    return RequestView("POST", "https", "bank.example.com", 443, "/mcp",
                       (("content-type", "application/json"),
                        ("x-fiveplane-session", "s1")), json.dumps(body).encode())


def forwarded_args(result: Any) -> dict[str, Any]:
    assert result.forwarded, result.decision
    assert result.body is not None
    args: dict[str, Any] = json.loads(result.body)["params"]["arguments"]
    return args


# --- compile time ----------------------------------------------------------------------


def test_narrow_spec_mistakes_are_reported_at_once_with_lines_and_a_stable_code() -> None:
    found = issues("""\
      - id: no-spec
        match: {server: bank, tool: a}
        effect: narrow
      - id: wrong-effect
        match: {server: bank, tool: b}
        effect: allow
        narrow: {args: {amount: {max: 1}}}
      - id: empty-subset
        match: {server: bank, tool: c}
        effect: narrow
        narrow: {args: {to: {subset: []}}}
      - id: upside-down
        match: {server: bank, tool: d}
        effect: narrow
        narrow: {args: {amount: {min: 10, max: 5}}}
      - id: string-clamped
        match: {server: bank, tool: e, args: {amount: {regex: "^[0-9]+$"}}}
        effect: narrow
        narrow: {args: {amount: {max: 5}}}
      - id: string-listed
        match: {server: bank, tool: e2, args: {amount: {in: ["10", "20"]}}}
        effect: narrow
        narrow: {args: {amount: {min: 5}}}
      - id: mixed
        match: {server: bank, tool: f}
        effect: narrow
        narrow: {args: {to: {subset: [a], max: 3}, limit: {set: 10, max: 20}}}
      - id: tools-without-session
        match: {server: bank, tool: g}
        effect: narrow
        narrow: {read_tools: ["get_*"]}
    """)
    codes = {(rid, code) for _, code, rid, _ in found}
    assert codes == {(rid, "policy_narrow_error") for rid in (
        "no-spec", "wrong-effect", "empty-subset", "upside-down", "string-clamped",
        "string-listed", "mixed", "tools-without-session")}
    lines = {rid: line for line, _, rid, _ in found}
    assert lines["no-spec"] == 8 and lines["wrong-effect"] == 12
    assert lines["empty-subset"] == 16  # the `subset` key itself
    messages = " ".join(m for *_, m in found)
    for words in ("needs a `narrow` spec", "only applies to `effect: narrow`",
                  "at least one allowed value", "min 10 is above max 5",
                  "tests it as a string", "cannot be both clamped", "`set` fixes the value",
                  "`read_tools` only applies"):
        assert words in messages, words


def test_narrow_spec_shape_errors_come_from_the_schema() -> None:
    found = issues("""\
      - id: bad
        match: {server: bank, tool: a}
        effect: narrow
        mode: sometimes
        narrow: {args: {amount: {max: "five", cap: 3}}, session: write_only}
    """)
    codes = [code for _, code, _, _ in found]
    assert "policy_unknown_key" in codes and "policy_schema_error" in codes
    assert len(found) >= 4


def test_read_only_guard_id_cannot_collide_with_a_rule() -> None:
    found = issues("""\
      - id: lock
        match: {server: bank, tool: a}
        effect: narrow
        narrow: {session: read_only}
      - {id: "lock:read_only", match: {server: bank, tool: b}, effect: allow}
    """)
    assert [(code, rid) for _, code, rid, _ in found] == [
        ("policy_duplicate_id", "lock:read_only")]


def test_shipped_example_narrows_and_shadows() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "policies" / "examples" / "support-agent.yaml").read_text()
    policy = compile_text(text, "support-agent.yaml")
    assert policy.narrowings and policy.shadow is not None


# --- composition: never widen ----------------------------------------------------------

NUMBER = st.one_of(st.integers(-2000, 2000), st.floats(-2000, 2000, allow_nan=False))
ITEM = st.sampled_from(["a@corp", "b@corp", "x@evil", "y@evil", "c@corp"])
PATTERNS = st.lists(st.sampled_from(["a@corp", "b@corp", "*@corp", "x@evil", "?@evil"]),
                    min_size=1, max_size=3, unique=True)


@st.composite
def arg_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    hi = draw(st.one_of(st.none(), st.integers(-1000, 1000)))
    lo = draw(st.one_of(st.none(), st.integers(-1000, 1000)))
    if hi is not None and lo is not None and lo > hi:
        hi, lo = lo, hi
    if hi is not None:
        spec["amount"] = {"max": hi}
    if lo is not None:
        spec.setdefault("amount", {})["min"] = lo
    if draw(st.booleans()):
        spec["to"] = {"subset": draw(PATTERNS)}
    if draw(st.booleans()):
        spec["limit"] = {"set": draw(st.sampled_from([10, 50]))}
    return spec


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(arg_specs(), min_size=1, max_size=4),
    amount=st.one_of(NUMBER, st.text(max_size=2), st.none(), st.booleans()),
    to=st.one_of(st.lists(ITEM, max_size=4), ITEM, st.integers()),
    present=st.sets(st.sampled_from(["amount", "to", "limit"])),
)
def test_narrowing_never_widens_and_is_idempotent(specs, amount, to, present) -> None:
    narrowings = []
    for i, args in enumerate(specs):
        n, found = compile_narrowing(f"r{i}", {"args": args} if args else {"session": "read_only"},
                                     None, ())
        assert not found and n is not None
        narrowings.append(n)
    given_args = {k: v for k, v in {"amount": amount, "to": to, "limit": 99,
                                    "other": "kept"}.items() if k in present or k == "other"}
    try:
        constraints = compose(narrowings)
        out = apply(constraints, given_args)
    except NarrowError:
        return  # refused: fail closed is never a widening
    assert out["other"] == "kept"
    by_name = {c.name: c for c in constraints}
    for n in narrowings:
        for arg in n.args:
            if arg.name not in out:  # absent stays absent unless a rule sets it
                assert arg.name not in given_args and arg.set is NOT_SET
                continue
            value = out[arg.name]
            if arg.set is not NOT_SET:
                assert value == arg.set
            elif by_name[arg.name].admits(given_args[arg.name]):
                assert value == given_args[arg.name]  # what already fits is left alone
            if arg.max is not None:
                assert value <= arg.max
            if arg.min is not None:
                assert value >= arg.min
            if arg.allowed is not None:
                items = value if isinstance(value, list) else [value]
                assert items and all(arg.allowed(i) for i in items)
                if isinstance(given_args.get(arg.name), list):  # a subset of what was sent
                    assert all(i in given_args[arg.name] for i in items)
            assert by_name[arg.name].admits(value)
    assert apply(constraints, out) == out  # idempotent
    # composition is order-free
    assert apply(compose(list(reversed(narrowings))), given_args) == out


def test_composition_takes_the_stricter_form_and_refuses_what_cannot_hold() -> None:
    def n(rid: str, args: dict[str, Any]) -> Any:
        return compile_narrowing(rid, {"args": args}, None, ())[0]

    caps = compose([n("a", {"amount": {"max": 500}}), n("b", {"amount": {"max": 300}})])
    assert apply(caps, {"amount": 900.0}) == {"amount": 300.0}
    assert apply(caps, {"amount": 100}) == {"amount": 100}
    subsets = compose([n("a", {"to": {"subset": ["*@corp"]}}),
                       n("b", {"to": {"subset": ["a@corp", "x@evil"]}})])
    assert apply(subsets, {"to": ["a@corp", "b@corp", "x@evil"]}) == {"to": ["a@corp"]}
    with pytest.raises(NarrowError, match="no value of `to`"):
        apply(subsets, {"to": ["x@evil"]})
    with pytest.raises(NarrowError, match="different values"):
        compose([n("a", {"limit": {"set": 10}}), n("b", {"limit": {"set": 20}})])
    with pytest.raises(NarrowError, match="at least 10 and at most 5"):
        compose([n("a", {"amount": {"min": 10}}), n("b", {"amount": {"max": 5}})])
    with pytest.raises(NarrowError, match="not a finite number"):
        apply(caps, {"amount": "900"})
    with pytest.raises(NarrowError, match="not a finite number"):
        apply(caps, {"amount": math.nan})
    assert apply(compose([n("a", {"limit": {"set": 10}})]), {}) == {"limit": 10}


# --- the gateway -----------------------------------------------------------------------


def test_a_narrowed_call_is_forwarded_in_its_narrowed_form_and_recorded_with_both() -> None:
    sink = MemorySink()
    gw = gateway(sink=sink)
    result = gw.request(call("send_money", recipient="DE89", amount=900))
    assert result.decision.verdict is Verdict.NARROW and result.decision.rule_ids == ("cap",)
    assert forwarded_args(result) == {"recipient": "DE89", "amount": 500}
    assert result.action is not None and result.action.arguments["amount"] == 500
    record = sink.records[-1]
    assert record["outcome"] == "forwarded" and "enforced" not in record
    assert record["narrowed"]["changed"] == ["amount"]
    assert record["narrowed"]["arguments_digest"] != record["action"]["arguments_digest"]
    assert record["decision"]["directives"][0]["params"] == {
        "rule": "cap", "args": {"amount": {"max": 500}}}
    # within the cap: forwarded as sent, still recorded as narrowed (nothing changed)
    small = gw.request(call("send_money", recipient="DE89", amount=20))
    assert small.forwarded and small.body is None
    assert sink.records[-1]["narrowed"]["changed"] == []


def test_the_narrowed_form_is_decided_again_deny_denies() -> None:
    sink = MemorySink()
    gw = gateway(CAP + """\
      - id: no-500
        match: {server: bank, tool: send_money, args: {amount: {eq: 500}}}
        effect: deny
        reason: exactly 500 is suspicious
    """, sink)
    result = gw.request(call("send_money", recipient="DE89", amount=900))
    assert not result.forwarded
    assert result.decision.verdict is Verdict.DENY and result.decision.rule_ids == ("no-500",)
    assert "after narrowing by `cap`" in result.decision.reason
    record = sink.records[-1]
    assert record["decision"]["verdict"] == "narrow" and record["enforced"]["verdict"] == "deny"
    assert record["outcome"] == "denied"


def test_an_escalate_on_the_narrowed_form_holds_the_narrowed_call() -> None:
    approvals = MemoryApprovalStore()
    sink = MemorySink()
    gw = gateway(CAP + """\
      - id: big
        match: {server: bank, tool: send_money, args: {amount: {ge: 400}}}
        effect: escalate
    """.replace("ge: 400", "ge: 400, le: 500"), sink, approvals=approvals)
    result = gw.request(call("send_money", recipient="DE89", amount=900))
    assert result.hold is not None and result.reply is None
    assert result.decision.verdict is Verdict.ESCALATE
    assert json.loads(result.body or b"{}")["params"]["arguments"]["amount"] == 500
    held = json.dumps(result.hold.action, default=dict)
    assert '"amount": 500' in held and "900" not in held
    assert sink.records[-1]["outcome"] == "held"


def test_budgets_charge_the_narrowed_amount() -> None:
    gw = gateway(CAP, tail="""\
    budgets:
      - {id: spend, match: {server: bank, tool: send_money}, sum: amount, limit: 1200}
    """)
    assert gw.request(call("send_money", recipient="a", amount=900)).forwarded   # 500
    assert gw.request(call("send_money", recipient="a", amount=900)).forwarded   # 1000
    third = gw.request(call("send_money", recipient="a", amount=900))            # 1500 > 1200
    assert not third.forwarded and third.decision.rule_ids == ("spend",)
    assert gw.request(call("send_money", recipient="a", amount=200)).forwarded   # 1200


def test_lists_are_filtered_and_limits_set() -> None:
    gw = gateway("""\
      - id: corp-only
        match: {server: bank, tool: transfer}
        effect: narrow
        narrow: {args: {to: {subset: ["*@corp.example"]}, limit: {set: 10}}}
    """)
    result = gw.request(call("transfer", to=["a@corp.example", "eve@evil.example"], amount=1))
    assert forwarded_args(result) == {"to": ["a@corp.example"], "amount": 1, "limit": 10}
    nobody = gw.request(call("transfer", to=["eve@evil.example"], amount=1))
    assert not nobody.forwarded and nobody.decision.verdict is Verdict.DENY
    assert "no value of `to`" in nobody.decision.reason


def test_a_value_that_cannot_be_narrowed_denies() -> None:
    sink = MemorySink()
    result = gateway(sink=sink).request(call("send_money", recipient="a", amount="900"))
    assert not result.forwarded and result.decision.rule_ids == ("cap",)
    assert "not a finite number" in result.decision.reason
    record = sink.records[-1]
    assert record["enforced"]["verdict"] == "deny" and "narrowed" not in record


def test_read_only_attenuates_the_rest_of_the_session() -> None:
    gw = gateway("""\
      - id: after-export
        match: {server: bank, tool: export_statements}
        effect: narrow
        narrow: {session: read_only, read_tools: ["get_*"]}
    """)
    assert gw.request(call("send_money", recipient="a", amount=1)).forwarded
    assert gw.request(call("export_statements")).forwarded
    assert gw.request(call("get_balance")).forwarded
    later = gw.request(call("send_money", recipient="a", amount=1))
    assert not later.forwarded and later.decision.rule_ids == ("after-export:read_only",)
    assert "read-only" in later.decision.reason
    http = RequestView("POST", "https", "bank.example.com", 443, "/api/pay",
                       (("x-fiveplane-session", "s1"),), b"")
    get = RequestView("GET", "https", "bank.example.com", 443, "/api/balance",
                      (("x-fiveplane-session", "s1"),), b"")
    assert gw.request(http).decision.rule_ids == ("after-export:read_only",)
    assert gw.request(get).decision.rule_ids != ("after-export:read_only",)


def test_http_json_fields_are_narrowed() -> None:
    gw = Gateway(compile_text("""\
version: 1
name: t
rules:
  - id: pay-cap
    match: {host: pay.example.com, method: POST, path: /transfer}
    effect: narrow
    narrow: {args: {amount: {max: 100}}}
""", "p.yaml"), sink := MemorySink())
    view = RequestView("POST", "https", "pay.example.com", 443, "/transfer",
                       (("content-type", "application/json"),),
                       b'{"amount": 250, "to": "bob"}')
    result = gw.request(view)
    assert result.forwarded and json.loads(result.body or b"") == {"amount": 100, "to": "bob"}
    assert sink.records[-1]["narrowed"]["changed"] == ["amount"]
    text = RequestView("POST", "https", "pay.example.com", 443, "/transfer",
                       (("content-type", "text/plain"),), b"amount=250")
    refused = gw.request(text)
    assert not refused.forwarded and "not a JSON object" in refused.decision.reason
    # no body: nothing to clamp, so it goes through as sent
    empty = gw.request(RequestView("POST", "https", "pay.example.com", 443, "/transfer",
                                   (), b""))
    assert empty.forwarded and empty.body is None


def test_what_was_not_sent_cannot_be_set() -> None:
    gw = gateway("""\
      - id: page
        match: {server: bank, mcp_method: [tools/call, tools/list]}
        effect: narrow
        narrow: {args: {page_size: {set: 20}, amount: {max: 10}}}
    """)
    listed = gw.request(RequestView(
        "POST", "https", "bank.example.com", 443, "/mcp",
        (("content-type", "application/json"),),
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'))
    assert not listed.forwarded
    assert "MCP tools/list carries no arguments, so `page_size` cannot be set" in (
        listed.decision.reason)
    # a tools/call gets the argument even when it did not send it
    assert forwarded_args(gw.request(call("search"))) == {"page_size": 20}


def test_shadow_rules_are_recorded_and_not_enforced() -> None:
    sink = MemorySink()
    gw = gateway(CAP + """\
      - id: would-deny
        mode: shadow
        match: {server: bank, tool: send_money, args: {amount: {gt: 100}}}
        effect: deny
    """, sink)
    result = gw.request(call("send_money", recipient="a", amount=900))
    assert result.forwarded and forwarded_args(result)["amount"] == 500
    assert sink.records[-1]["shadow"] == {
        "verdict": "deny", "rule_ids": ["would-deny"], "reason": "denied by rule `would-deny`",
        "matched": ["would-deny"]}
    assert gw.request(call("send_money", recipient="a", amount=50)).forwarded
    assert "shadow" not in sink.records[-1]  # the shadow rule did not match


def test_a_policy_without_shadow_rules_pays_nothing_for_them() -> None:
    policy = compile_text(text(CAP), "p.yaml")
    assert policy.shadow is None and not Adjudicator(policy).shadowing


def test_audit_log_keeps_both_forms_sealed_and_explain_re_decides(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policies")
    log = AuditLog(tmp_path, "narrow:1")
    gw = gateway(CAP + """\
      - {id: watch, mode: shadow, match: {server: bank, tool: send_money}, effect: escalate}
    """, log, policies=store)
    result = asyncio.run(gw.settle(gw.request(call("send_money", recipient="DE89",
                                                   amount=900))))
    assert result.forwarded
    gw.close()
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    (body,) = [x["body"] for x in lines if x.get("type") == "record"]
    narrowed = body["narrowed"]
    assert narrowed["v"] == 1 and narrowed["changed"] == ["amount"]
    assert narrowed["rule_ids"] == ["cap"]
    assert narrowed["argument_names"] == ["amount", "recipient"]
    assert narrowed["before_hmacs"]["amount"] == body["action"]["argument_hmacs"]["amount"]
    assert narrowed["argument_hmacs"]["amount"] != body["action"]["argument_hmacs"]["amount"]
    assert narrowed["argument_hmacs"]["recipient"] == body["action"]["argument_hmacs"][
        "recipient"]
    assert body["shadow"]["verdict"] == "escalate" and body["shadow"]["matched"] == ["watch"]
    sealer = Sealer(load_secret(next((tmp_path / "keys").glob("*.secret"))), lines[0]["chain"])
    sealed = unseal_body(body, sealer)
    assert sealed["arguments"]["amount"] == 900
    assert sealed["narrowed"] == {"arguments": {"recipient": "DE89", "amount": 500},
                                  "before": {"amount": 900}}
    (explained,) = explain_all(log.path, store)
    assert explained.status == "match", explained
    assert explained.recomputed == {"verdict": "narrow", "rule_ids": ["cap"],
                                    "reason": "narrowed by rule `cap`"}


def test_explain_narrows_again_and_flags_a_narrowed_form_the_policy_would_not_give(
        tmp_path: Path) -> None:
    policy = compile_text(text(CAP), "p.yaml")
    store = PolicyStore(tmp_path / "policies")
    store.put(policy.source)
    log = AuditLog(tmp_path, "explain:1")
    action = mcp_call("send_money", server="bank", host="bank.example.com", recipient="a",
                      amount=900)
    decision = Adjudicator(policy).decide(action)
    honest = {"rule_ids": ["cap"], "changed": ["amount"],
              "arguments": {"recipient": "a", "amount": 500}, "before": {"amount": 900}}
    forged = {**honest, "arguments": {"recipient": "a", "amount": 900.5}}
    log.record(action, decision, outcome="forwarded", decision_id="ok", narrowed=honest)
    log.record(action, decision, outcome="forwarded", decision_id="bad", narrowed=forged)
    log.record(action, decision, outcome="forwarded", decision_id="shadow", narrowed=honest,
               shadow={"verdict": "deny", "rule_ids": ["x"], "reason": "", "matched": ["x"]})
    log.close()
    first, second, third = explain_all(log.path, store)
    assert first.status == "match", first
    assert second.status == "mismatch"
    assert second.diff == ["narrowed form: recomputed values differ for amount"]
    assert third.diff == ["shadow: recorded, but no shadow rule matches now"]


def test_http_narrowing_re_decides_from_the_log(tmp_path: Path) -> None:
    policy = compile_text("""\
version: 1
name: t
rules:
  - id: pay-cap
    match: {host: pay.example.com, method: POST}
    effect: narrow
    narrow: {args: {amount: {max: 100}, page_size: {set: 10}}}
""", "p.yaml")
    store = PolicyStore(tmp_path / "policies")
    log = AuditLog(tmp_path, "http:1")
    gw = Gateway(policy, log, policies=store)
    view = RequestView("POST", "https", "pay.example.com", 443, "/transfer",
                       (("content-type", "application/json"),),
                       b'{"amount": 250, "to": "bob"}')
    result = asyncio.run(gw.settle(gw.request(view)))
    assert json.loads(result.body or b"") == {"amount": 100, "to": "bob", "page_size": 10}
    gw.close()
    (explained,) = explain_all(log.path, store)
    assert explained.status == "match", explained
    body = explained.record
    assert body["narrowed"]["changed"] == ["amount", "page_size"]
    assert sorted(body["narrowed"]["before_hmacs"]) == ["amount"]  # page_size was not sent


@settings(max_examples=150, deadline=None)
@given(
    rules=st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 1000))),
                   min_size=1, max_size=3),
    amount=st.one_of(st.integers(-100, 2000), st.floats(-100, 2000, allow_nan=False)),
    deny_at=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_what_the_gateway_forwards_is_admitted_by_the_policy_on_its_own(
        rules, amount, deny_at) -> None:
    """Whatever narrowing rules match (caps, conditions on the amount), a forwarded call
    is within every cap that applied, and the policy decides its narrowed form as allow,
    or narrow without a further change."""
    text_rules = "".join(
        f"- id: cap{i}\n  match: {{server: bank, tool: send_money"
        + (f", args: {{amount: {{gt: {when}}}}}" if when is not None else "")
        + f"}}\n  effect: narrow\n  narrow: {{args: {{amount: {{max: {cap}}}}}}}\n"
        for i, (cap, when) in enumerate(rules))
    if deny_at is not None:
        text_rules += ("- {id: no-round, match: {server: bank, tool: send_money, "
                       f"args: {{amount: {{eq: {deny_at}}}}}}}, effect: deny}}\n")
    gw = gateway(text_rules)
    result = gw.request(call("send_money", recipient="a", amount=amount))
    if not result.forwarded:
        assert result.decision.verdict is Verdict.DENY
        return
    sent = (json.loads(result.body)["params"]["arguments"]["amount"] if result.body
            else amount)
    for cap, when in rules:
        if when is None or amount > when:
            assert sent <= cap
    again = Adjudicator(gw.policy).decide(mcp_call(
        "send_money", server="bank", host="bank.example.com", recipient="a", amount=sent))
    assert again.verdict in (Verdict.ALLOW, Verdict.NARROW)
    if again.verdict is Verdict.NARROW:
        constraints = compose(gw.policy.narrowings[r] for r in narrow_rule_ids(again))
        assert apply(constraints, {"amount": sent}) == {"amount": sent}
