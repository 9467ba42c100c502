"""The replay loop: each flow adjudicated as the addon does (request, then the governed
response), in time order, with rows made from the evidence records."""

from __future__ import annotations

import json
from typing import Any

from proxy.replay.capture import CapturedFlow, CaptureNote, Message
from proxy.replay.engine import Change, Row, events, replay, what_if
from proxy.testing import policy

POLICY = """\
version: 1
name: engine
defaults: {effect: deny, max_body_bytes: 1024}
network:
  allow: [{host: "*"}]
  deny: [{id: paste, host: pastebin.com}]
  allow_internal: [{cidr: 127.0.0.1/32}]
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - {id: read, match: {server: crm, tool: [get_customer, echo]}, effect: allow}
  - {id: no-logs, match: {server: crm, mcp_method: notifications/message}, effect: deny}
  - {id: no-sampling, match: {server: crm, mcp_method: sampling/createMessage}, effect: deny}
  - id: big-refund
    match: {server: crm, tool: refund, args: {amount: {gt: 100}}}
    effect: escalate
  - {id: api, match: {host: api.example.com, method: GET}, effect: allow}
"""
P = policy(POLICY)
JSON = (("content-type", "application/json"),)
SSE = (("content-type", "text/event-stream"),)


def mcp(index: int, method: str = "tools/call", name: str = "get_customer",
        t: float = 0.0, response: Message | None = None, **kw: Any) -> CapturedFlow:
    params: dict[str, Any] = {"name": name, "arguments": kw.pop("arguments", {})}
    body = json.dumps({"jsonrpc": "2.0", "id": index, "method": method, "params": params})
    kw.setdefault("headers", JSON)
    return CapturedFlow(index, "http", t or float(index), (t or float(index)) + 0.5,
                        method="POST", scheme="https", host="crm.example.com", port=443,
                        path="/mcp", body=body.encode(), response=response, **kw)


def http(index: int, url_host: str = "api.example.com", method: str = "GET",
         t: float = 0.0, **kw: Any) -> CapturedFlow:
    return CapturedFlow(index, "http", t or float(index), (t or float(index)) + 0.1,
                        method=method, scheme="https", host=url_host, port=443,
                        path="/v1/x?q=1", **kw)


def sse(*messages: dict[str, Any]) -> Message:
    body = b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n"
                    for m in messages)
    return Message(200, SSE, body)


def rows(*flows: CapturedFlow, p: Any = P, window: int = 1024) -> list[Row]:
    out = [r for r in replay(flows, p, window=window)]
    assert all(isinstance(r, Row) for r in out)
    return out  # type: ignore[return-value]


def brief(r: Row) -> tuple[int, int, str, str, tuple[str, ...]]:
    return r.flow, r.ordinal, r.kind, r.verdict, r.rule_ids


def test_requests_are_adjudicated_like_the_addon() -> None:
    got = rows(
        http(1),
        http(2, method="DELETE"),
        http(3, url_host="pastebin.com"),
        mcp(4, arguments={"customer_id": "c-1"}),
        mcp(5, name="refund", arguments={"amount": 500}),
        http(6, method="POST", headers=(("content-length", "5000"),)),
        CapturedFlow(7, "connect", 7.0, 7.0, method="CONNECT", host="crm.example.com",
                     port=443),
        CapturedFlow(8, "tcp", 8.0, 8.0, host="10.0.0.1", port=22),
        CapturedFlow(9, "http", 9.0, 9.0, method="POST", scheme="https",
                     host="crm.example.com", port=443, path="/mcp", headers=JSON,
                     body=b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]'),
    )
    assert [brief(r) for r in got] == [
        (1, 0, "http", "allow", ("api",)),
        (2, 0, "http", "deny", ("defaults.effect",)),
        (3, 0, "http", "deny", ("paste",)),
        (4, 0, "mcp", "allow", ("read",)),
        (5, 0, "mcp", "escalate", ("big-refund",)),
        (6, 0, "refused", "deny", ("mediation.body_too_large",)),
        (7, 0, "connect", "allow", ("network.connect",)),
        (8, 0, "refused", "deny", ("mediation.unsupported_protocol",)),
        (9, 0, "refused", "deny", ("mediation.jsonrpc_batch",)),
    ]
    assert got[4].enforced == "deny" and got[4].to_dict()["enforced"] == "deny"
    assert (got[0].target, got[0].what) == ("https://api.example.com", "GET /v1/x")
    assert (got[3].target, got[3].what, got[3].name) == ("crm", "tools/call get_customer",
                                                       "get_customer")
    assert (got[6].target, got[6].what) == ("crm.example.com:443", "CONNECT")
    assert (got[7].what, got[8].what) == ("TCP stream", "POST /mcp")
    assert got[0].principal == "anonymous"


def test_recorded_addresses_are_judged() -> None:
    named = http(1, addresses=("10.1.2.3",))
    literal = http(2, url_host="127.0.0.1", addresses=("10.1.2.3",))
    one, two = rows(named, literal)
    assert one.rule_ids == ("network.internal",) and "10.1.2.3" in one.reason
    assert two.rule_ids == ("defaults.effect",)  # IP literal: recorded addresses not used


def test_tokens_are_judged_at_the_time_of_the_capture() -> None:
    """A delegation token is verified, and its expiry checked, at the request's time in
    the capture (not now); requests in a tunnel act with the CONNECT's token."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from proxy.identity import mint

    root = Ed25519PrivateKey.generate()
    pem = root.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    indented = "\n".join("        " + line for line in pem.decode().splitlines())
    p = policy(POLICY.replace("mcp_servers:", "identity:\n  trusted_roots:\n"
                              "    - name: corp\n      key: |\n" + indented
                              + "\nmcp_servers:", 1))
    t0 = 1_700_000_000
    token = mint(root, ("alice", "human"), [{"server": "crm", "tool": "get_*"}], 600,
                 t0).to_text()
    header = (("x-fiveplane-token", token),)
    valid = mcp(1, t=t0 + 10, headers=(*JSON, *header))
    expired = mcp(2, t=t0 + 3600, headers=(*JSON, *header))
    attenuated = mcp(3, t=t0 + 20, name="echo", headers=(*JSON, *header))
    anonymous = mcp(4, t=t0 + 30)
    tunnel = CapturedFlow(5, "connect", t0 + 40, t0 + 40, method="CONNECT",
                          host="crm.example.com", port=443, conn="c1",
                          headers=(("proxy-authorization", "Bearer " + token),))
    inside = mcp(6, t=t0 + 41, conn="c1")
    redacted = mcp(7, t=t0 + 50, headers=(*JSON, ("x-fiveplane-token", "[REDACTED]")))
    got = sorted(rows(valid, expired, attenuated, anonymous, tunnel, inside, redacted, p=p),
                 key=lambda r: r.flow)
    assert [r.rule_ids for r in got] == [
        ("read",), ("identity.expired",), ("identity.attenuation",), ("identity.anonymous",),
        ("network.connect",), ("read",), ("identity.invalid",)]
    assert got[0].principal == "alice" and got[5].principal == "alice"
    assert "redacted in the recording" in got[6].notes[0]


def test_sse_response_server_messages_are_adjudicated() -> None:
    stream = sse({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": "x"}},
                 {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
                 {"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
    got = rows(mcp(1, response=stream))
    assert [brief(r) for r in got] == [(1, 0, "mcp", "allow", ("read",)),
                                       (1, 1, "mcp_server", "deny", ("no-logs",)),
                                       (1, 2, "mcp_server", "allow", ("mcp.lifecycle",))]
    assert got[1].what == "server → client notifications/message"
    assert got[1].key == (1, 1)


def test_json_response_cut_filter_and_refusals() -> None:
    sampling = {"jsonrpc": "2.0", "id": 1, "result": {
        "resultType": "input_required",
        "inputRequests": {"a": {"method": "sampling/createMessage", "params": {}}}}}
    schema = {"type": "object"}
    tools = {"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "echo", "inputSchema": schema}, {"name": "delete_all", "inputSchema": schema}]}}
    got = rows(
        mcp(1, response=Message(200, JSON, json.dumps(sampling).encode())),
        mcp(2, method="tools/list", name="", response=Message(200, JSON,
                                                              json.dumps(tools).encode())),
        mcp(3, response=Message(200, (("content-type", "text/html"),), b"<html>")),
        mcp(4, response=Message(200, (*SSE, ("content-encoding", "gzip")), b"\x1f\x8b")),
        mcp(5, response=Message(200, (*JSON, ("content-encoding", "snappy")), b"{}")),
        mcp(6, response=Message(500, JSON, b"oops")),
    )
    assert [brief(r) for r in got if r.ordinal] == [
        (1, 1, "mcp_server", "deny", ("no-sampling",)),
        (3, 1, "mcp", "deny", ("mediation.unparseable_response",)),
        (4, 1, "refused", "deny", ("mediation.encoded_stream",)),
        (5, 1, "refused", "deny", ("addon.error",)),
    ]  # tools/list filtering decides nothing new; a 500 is not governed
    assert [r.what for r in got if r.flow == 3][1] == "response to tools/call get_customer"


def test_responses_the_proxy_made_are_not_upstream_responses() -> None:
    reply = Message(200, (*JSON, ("x-fiveplane-decision", "d1")),
                    json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32003}}).encode())
    raw = sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
    got = rows(
        mcp(1, response=reply),                                   # guessed from the header
        mcp(2, response=Message(200, JSON, b"{}"), answered_by_proxy=True),    # recorded
        mcp(3, response=Message(200, SSE, b""), upstream=raw),   # the recorder's upstream copy
    )
    assert [brief(r) for r in got] == [(1, 0, "mcp", "allow", ("read",)),
                                       (2, 0, "mcp", "allow", ("read",)),
                                       (3, 0, "mcp", "allow", ("read",)),
                                       (3, 1, "mcp_server", "deny", ("no-logs",))]
    assert "no upstream response" in got[0].notes[0] and "no upstream" in got[1].notes[0]


def test_events_restore_request_order_within_the_window() -> None:
    a = http(1, t=10.0)
    c = http(3, t=12.0)
    long_stream = http(2, t=1.0)   # written last: it ended last
    long_stream.end = 20.0
    order = [(phase, f.index, late) for phase, f, late in events([a, c, long_stream])]
    assert order == [("request", 2, False), ("request", 1, False), ("response", 1, False),
                     ("request", 3, False), ("response", 3, False), ("response", 2, False)]
    tight = [(phase, f.index, late) for phase, f, late in events([a, c, long_stream], 1)]
    assert tight[:3] == [("request", 1, False), ("response", 1, False), ("request", 2, True)]
    (late_row,) = [r for r in rows(a, c, long_stream, window=1) if r.flow == 2]
    assert "replayed late" in late_row.notes[0]
    note = CaptureNote(4, "entry 4", "broken")
    assert list(events([note])) == [note]


def test_what_if_lists_only_changed_decisions() -> None:
    tighter = policy(POLICY.replace("tool: [get_customer, echo]", "tool: [get_customer]"))
    stream = sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
    flows = [mcp(1), mcp(2, name="echo", response=stream), http(3),
             CaptureNote(4, "entry 4", "broken")]
    changes = list(what_if(flows, tighter, P))
    assert isinstance(changes[0], CaptureNote)  # notes come as soon as they are read
    request, gone = changes[1:]
    assert isinstance(request, Change) and isinstance(gone, Change)
    assert request.old is not None and request.new is not None
    assert (request.old.rule_ids, request.new.rule_ids) == (("read",), ("defaults.effect",))
    assert request.group == "read → defaults.effect"
    assert gone.new is None and gone.old is not None and gone.old.rule_ids == ("no-logs",)
    assert gone.group == "no-logs → (not reached)" and gone.row is gone.old
    assert len(changes) == 3
    assert list(what_if(flows[:3], P, P)) == []


def test_session_state_carries_across_the_capture() -> None:
    """One gateway for the whole capture: a budget spent by earlier flows refuses a later
    one, and the row shows what was enforced (the budget), not the allowing rule."""
    small = ("  - {id: small-refund, match: {server: crm, tool: refund, "
             "args: {amount: {le: 100}}}, effect: allow}\n  - id: big-refund")
    p = policy(POLICY.replace("  - id: big-refund", small) + """\
budgets:
  - {id: refunds, match: {server: crm, tool: refund}, sum: amount, limit: 100}
""")
    flows = [mcp(i, name="refund", arguments={"amount": 40}) for i in range(1, 4)]
    got = rows(*flows, p=p)
    assert [(r.verdict, r.rule_ids) for r in got] == [
        ("allow", ("small-refund",)), ("allow", ("small-refund",)), ("deny", ("refunds",))]
    assert "budget `refunds`" in got[2].reason


def test_narrowed_and_shadow_outcomes_show_in_rows() -> None:
    p = policy(POLICY + """\
  - id: transfer-cap
    match: {server: crm, tool: transfer}
    effect: narrow
    narrow: {args: {amount: {max: 50}}}
  - {id: transfer-trial, mode: shadow, match: {server: crm, tool: transfer}, effect: deny}
""")
    got = rows(mcp(1, name="transfer", arguments={"amount": 500}),
               mcp(2, name="transfer", arguments={"amount": 20}), p=p)
    assert [(r.verdict, r.enforced, r.rule_ids) for r in got] == [
        ("narrow", "narrow", ("transfer-cap",)), ("narrow", "narrow", ("transfer-cap",))]
    assert got[0].notes == ("narrowed amount by transfer-cap",
                            "shadow: would deny by transfer-trial (matched transfer-trial)")
    assert got[1].notes == ("shadow: would deny by transfer-trial (matched transfer-trial)",)
    assert got[0].to_dict()["notes"][0] == "narrowed amount by transfer-cap"
