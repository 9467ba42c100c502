"""Record schema v1: lossless actions, keyed digests, sealed values never written raw."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import testing
from proxy.action import Action, Kind, StopPoint
from proxy.audit import AuditLog, Sealer, action_from_body, action_from_data, action_to_data
from proxy.audit.envelope import canonical, chain_middle, record_position, unhashed_record
from proxy.audit.schema import build_body, public_body
from proxy.decision import Decision, Directive, Plane, Verdict
from proxy.errors import AuditError
from proxy.principal import ANONYMOUS, Link, Principal, PrincipalKind

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
principals = st.lists(
    st.builds(Link, st.text(min_size=1, max_size=10), st.sampled_from(list(PrincipalKind))),
    min_size=1, max_size=4).map(lambda links: Principal(tuple(links)))
actions = st.builds(
    Action, st.sampled_from(list(Kind)), st.sampled_from(list(StopPoint)),
    st.sampled_from(["http", "https"]), st.text(min_size=1, max_size=20),
    st.integers(1, 65535), method=st.sampled_from(["", "GET", "POST"]),
    path=st.text(max_size=20), server=st.text(max_size=10), mcp_method=st.text(max_size=12),
    name=st.text(max_size=12),
    arguments=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    rpc_id=st.none() | st.integers() | st.text(max_size=5),
    addresses=st.lists(st.ip_addresses().map(str), max_size=3).map(tuple),
    principal=principals, session=st.text(max_size=10),
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to itself (the values must survive exactly)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(actions)
def test_action_round_trip(action: Action) -> None:
    data = action_to_data(action)
    back = action_from_data(json.loads(json.dumps(data)))
    assert same(action_to_data(back), data)
    if not any(isinstance(v, float) and math.isnan(v) for v in _leaves(data)):
        assert back == action


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


@settings(max_examples=200, deadline=None)
@given(actions)
def test_record_body_rebuilds_the_action(action: Action) -> None:
    sealer = Sealer(b"k" * 32, "chain-1")
    decision = Decision(Verdict.DENY, ("r",), "because", "sha256:" + "0" * 64)
    body = build_body(sealer, action, decision, decision_id="d1", outcome="denied")
    stored = json.loads(canonical(body))  # what a reader gets back from the log
    assert same(action_to_data(action_from_body(stored, sealer)), action_to_data(action))
    if action.arguments:
        assert stored["action"]["argument_names"] == sorted(action.arguments)


def test_values_are_never_written_raw(tmp_path: Path) -> None:
    secret_iban = "DE89370400440532013000"
    action = testing.mcp_call("refund", amount=123456789, to=secret_iban,
                              note={"card": "4111111111111111"})
    with AuditLog(tmp_path, "raw:1") as log:
        decision = Decision(Verdict.ALLOW, ("refund-ok",), "ok", "sha256:" + "1" * 64)
        log.record(action, decision, outcome="forwarded", decision_id="abc").wait_sync(5)
    blob = log.path.read_bytes()
    for raw in (secret_iban.encode(), b"123456789", b"4111111111111111"):
        assert raw not in blob
    doc = json.loads(blob.splitlines()[1])
    hmacs = doc["body"]["action"]["argument_hmacs"]
    assert sorted(hmacs) == ["amount", "note", "to"]
    # the same value has the same HMAC (correlation), under this instance's key only
    assert hmacs["to"] == log.sealer.digest(secret_iban)
    assert hmacs["to"] != Sealer(b"x" * 32, log.chain).digest(secret_iban)
    rebuilt = action_from_body(doc["body"], log.sealer)
    assert dict(rebuilt.arguments) == dict(action.arguments)
    assert "sealed" not in public_body(doc["body"])


def test_sealed_values_need_the_right_key_and_record() -> None:
    sealer = Sealer(b"k" * 32, "chain-1")
    action = testing.mcp_call("refund", amount=5)
    decision = Decision(Verdict.ALLOW, ("r",), "ok", "sha256:" + "0" * 64)
    body = json.loads(canonical(build_body(sealer, action, decision, decision_id="d1",
                                           outcome="forwarded")))
    with pytest.raises(AuditError, match="cannot be opened"):
        action_from_body(body, Sealer(b"j" * 32, "chain-1"))
    with pytest.raises(AuditError, match="cannot be opened"):  # bound to its chain ...
        action_from_body(body, Sealer(b"k" * 32, "chain-2"))
    moved = {**body, "id": "d2"}  # ... and to its record
    with pytest.raises(AuditError, match="cannot be opened"):
        action_from_body(moved, sealer)
    with pytest.raises(AuditError, match="audit key is needed"):
        action_from_body(body, None)
    swapped = json.loads(json.dumps(body))
    swapped["action"]["argument_hmacs"]["amount"] = "0" * 64
    with pytest.raises(AuditError, match="HMAC"):
        action_from_body(swapped, sealer)


def test_type_confusion_values_survive_exactly() -> None:
    sealer = Sealer(b"k" * 32, "c")
    decision = Decision(Verdict.DENY, ("r",), "x", "sha256:" + "0" * 64)
    for value in (float("nan"), float("inf"), "500", "1e9", 500, 500.0, True, None, 2**80):
        action = testing.mcp_call("refund", amount=value)
        body = json.loads(canonical(build_body(sealer, action, decision, decision_id="i",
                                               outcome="denied")))
        got = action_from_body(body, sealer).arguments["amount"]
        assert type(got) is type(value)
        assert same(got, value)
    assert sealer.digest(500) != sealer.digest(500.0) != sealer.digest("500")


def test_body_fields(tmp_path: Path) -> None:
    sealer = Sealer(b"k" * 32, "c")
    principal = Principal((Link("alice", PrincipalKind.HUMAN), Link("bot", PrincipalKind.AGENT)))
    action = Action(Kind.MCP, StopPoint.REQUEST_BODY, "https", "crm.example.com", 443,
                    method="POST", path="/mcp", server="crm", mcp_method="tools/call",
                    name="refund", arguments=MappingProxyType({"amount": 5}), rpc_id="7",
                    principal=principal, session="s-1")
    decision = Decision(Verdict.ESCALATE, ("needs-approval",), "approval", "sha256:" + "a" * 64,
                        Plane.ENDPOINT, (Directive(Plane.DATA, "redact", {"fields": ["x"]}),))
    enforced = Decision(Verdict.DENY, ("needs-approval",), "no store", decision.policy_version)
    body = build_body(sealer, action, decision, decision_id="d", outcome="denied",
                      enforced=enforced, approver={"id": "bob"}, adjudication_us=2.25,
                      total_us=10.0, capabilities=["sha256:cap"], state={"labels": ["pii"]},
                      time=1.5)
    assert body["principal"] == [{"id": "alice", "kind": "human"}, {"id": "bot", "kind": "agent"}]
    assert body["session"] == "s-1" and body["stop"] == "request_body"
    assert body["decision"]["verdict"] == "escalate"
    assert body["decision"]["directives"][0]["kind"] == "redact"
    assert body["enforced"]["verdict"] == "deny"
    assert body["policy"] == decision.policy_version and "policy_version" not in body["decision"]
    assert body["approver"] == {"id": "bob"} and body["capabilities"] == ["sha256:cap"]
    assert body["latency_us"] == {"adjudication": 2.2, "total": 10.0}
    assert body["action"]["target"] == "https://crm.example.com/mcp"
    assert body["basis"] == "adjudicated" and body["time"] == 1.5
    stored = json.loads(canonical(body))
    assert sealer.open("d", stored["sealed"])["state"] == {"labels": ["pii"]}
    refusal = build_body(sealer, None, enforced, decision_id="r", outcome="refused",
                         adjudicated=False, stop=StopPoint.CONNECT)
    assert refusal["action"] is None and refusal["basis"] == "refused"
    assert refusal["stop"] == "connect" and "sealed" not in refusal
    assert build_body(sealer, testing.http_request("GET", "a.example"), decision,
                      decision_id="h", outcome="denied")["principal"] == ANONYMOUS.to_dict()


def test_envelope_is_canonical_json() -> None:
    body = canonical({"b": 1, "a": [1.5, "é"], "time": 2.0})
    middle = chain_middle("chain-x", "inst\"ance")
    line = unhashed_record(body, middle, "ab" * 32, 12)
    doc = json.loads(line)
    assert canonical(doc) == line
    sealed = line[:-1] + b',"hash":"' + b"cd" * 32 + b'"}'
    assert record_position(sealed) == (12, b"ab" * 32, b"cd" * 32,
                                       sealed.index(b',"prev":"'))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_value_hmac_is_rfc2104_over_canonical_json(value: object) -> None:
    import hashlib
    import hmac

    from proxy.audit.keys import derive
    from proxy.audit.schema import value_bytes

    expected_bytes = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    assert value_bytes(value) == expected_bytes
    key = derive(b"s" * 32, "argument-hmac")
    expected = hmac.new(key, expected_bytes, hashlib.sha256).hexdigest()
    assert Sealer(b"s" * 32, "c").digest(value) == expected


@settings(max_examples=300, deadline=None)
@given(actions | st.none(), st.data())
def test_encoded_body_is_canonical(action: Action | None, data: st.DataObject) -> None:
    from proxy.audit import encode_body

    plain = st.dictionaries(st.text(max_size=6), json_values.filter(
        lambda v: "NaN" not in json.dumps(v) and "Infinity" not in json.dumps(v)), max_size=3)
    fields = {
        "decision_id": data.draw(st.text(max_size=12)),
        "outcome": data.draw(st.sampled_from(["forwarded", "denied", "ünknown"])),
        "adjudicated": data.draw(st.booleans()),
        "approver": data.draw(st.none() | st.text(max_size=5) | plain),
        "capabilities": data.draw(st.lists(st.text(max_size=5), max_size=2)),
        "extra": data.draw(st.none() | plain),
        "state": data.draw(st.none() | plain),
        "adjudication_us": data.draw(st.floats(0, 1e6) | st.integers(0, 10**6)),
        "total_us": data.draw(st.floats(0, 1e6)),
        "time": data.draw(st.none() | st.floats(0, 2e9)),
        "stop": data.draw(st.none() | st.sampled_from(list(StopPoint))),
        "narrowed": data.draw(st.none() | st.fixed_dictionaries({
            "rule_ids": st.lists(st.text(max_size=4), max_size=2),
            "changed": st.lists(st.text(max_size=4), max_size=2),
            "arguments": plain, "before": plain})),
        "shadow": data.draw(st.none() | st.fixed_dictionaries({
            "verdict": st.sampled_from(["deny", "allow"]),
            "rule_ids": st.lists(st.text(max_size=4), max_size=2),
            "reason": st.text(max_size=8), "matched": st.lists(st.text(max_size=4))})),
    }
    decision = Decision(Verdict.DENY, ("r", "s"), "why \u2603", "sha256:" + "0" * 64,
                        Plane.DATA, (Directive(Plane.DATA, "redact", {"b": 1, "a": [2]}),),
                        ("e",))
    enforced = data.draw(st.none() | st.just(Decision(Verdict.ALLOW, (), "", "sha256:x")))
    sealer = Sealer(b"k" * 32, "c")
    raw = encode_body(sealer, action, decision, enforced=enforced, **fields)
    assert canonical(json.loads(raw)) == raw
    body = json.loads(raw)
    if action is not None:
        assert same(action_to_data(action_from_body(body, sealer)), action_to_data(action))
        if fields["state"]:
            assert sealer.open(body["id"], body["sealed"])["state"] == fields["state"]
    narrowed = fields["narrowed"]
    if narrowed is not None:  # values sealed, only names and keyed digests in the clear
        opened = sealer.open(body["id"], body["sealed"])["narrowed"]
        assert opened == {"arguments": narrowed["arguments"], "before": narrowed["before"]}
        assert body["narrowed"]["argument_hmacs"] == {
            k: sealer.digest(v) for k, v in narrowed["arguments"].items()}
    assert body.get("shadow") == fields["shadow"]
