"""Responses from MCP servers: tools/list filtered, server → client requests adjudicated,
anything unparseable cuts the response with a JSON-RPC error for the request id."""

from __future__ import annotations

import json

import pytest

from proxy.codec import SseParser, sse_encode
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.testing import mcp_call, policy

POLICY = policy("""
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
rules:
  - {id: read, match: {server: crm, tool: "get_*"}, effect: allow}
  - {id: refund, match: {server: crm, tool: refund, args: {amount: {le: 10}}}, effect: allow}
  - {id: no-get-secrets, match: {server: crm, tool: get_secrets}, effect: deny}
  - {id: roots-ok, match: {server: crm, mcp_method: roots/list}, effect: allow}
""")

SCHEMA = {"type": "object"}
TOOLS = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
    {"name": n, "inputSchema": SCHEMA}
    for n in ("get_customer", "get_secrets", "refund", "delete_all", "bad name\u202e")]}}


@pytest.fixture
def gateway() -> Gateway:
    return Gateway(POLICY, MemorySink())


def governor(gateway: Gateway, method: str = "tools/list"):
    return gateway.governor(mcp_call("", method=method))


def names(msg: dict) -> list[str]:
    return [t["name"] for t in msg["result"]["tools"]]


def test_tools_list_json_is_filtered(gateway: Gateway) -> None:
    g = governor(gateway)
    out = json.loads(g.json_body(json.dumps(TOOLS).encode()))
    assert names(out) == ["get_customer", "refund"]
    assert sorted(g.removed_tools) == ["bad name\u202e", "delete_all", "get_secrets"]


def stream(g, events: list[bytes], step: int = 7) -> list[dict]:
    raw = b"".join(events)
    out: list[bytes] = []
    for i in range(0, len(raw), step):
        chunk = g.sse(raw[i:i + step])
        assert chunk != b""
        out += chunk
    out += g.sse(b"")
    parser = SseParser()
    return [json.loads(e.data) for e in parser.feed(b"".join(out)) if e.data]


def test_tools_list_sse_is_filtered_across_chunk_boundaries(gateway: Gateway) -> None:
    g = governor(gateway)
    msgs = stream(g, [sse_encode(json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                             "params": {}})),
                      sse_encode(json.dumps(TOOLS), id="e1")])
    assert msgs[0]["method"] == "notifications/progress"
    assert names(msgs[1]) == ["get_customer", "refund"]


def test_denied_server_request_is_withheld_and_queued_for_an_answer(gateway) -> None:
    g = governor(gateway, method="tools/call")
    sampling = {"jsonrpc": "2.0", "id": 99, "method": "sampling/createMessage",
                "params": {"messages": []}}
    after = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    msgs = stream(g, [sse_encode(json.dumps(sampling)), sse_encode(json.dumps(after))])
    assert msgs == [after]              # the client never sees the request, still its result
    assert g.cut is None
    [(rpc_id, decision_id, decision)] = g.answers
    assert rpc_id == 99 and decision.rule_ids == ("defaults.effect",) and decision_id


def test_denied_server_request_without_a_valid_id_cuts_the_stream(gateway) -> None:
    g = governor(gateway, method="tools/call")
    sampling = {"jsonrpc": "2.0", "id": True, "method": "sampling/createMessage"}
    after = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    msgs = stream(g, [sse_encode(json.dumps(sampling)), sse_encode(json.dumps(after))])
    assert len(msgs) == 1
    assert msgs[0]["id"] == 1 and msgs[0]["error"]["code"] == -32003
    assert "defaults.effect" in msgs[0]["error"]["message"]
    assert g.cut is not None and g.answers == []


def test_allowed_server_request_passes(gateway) -> None:
    g = governor(gateway, method="tools/call")
    roots = {"jsonrpc": "2.0", "id": 5, "method": "roots/list"}
    assert stream(g, [sse_encode(json.dumps(roots))]) == [roots]
    assert g.cut is None


def test_input_required_requests_are_adjudicated(gateway) -> None:
    g = governor(gateway, method="tools/call")
    body = {"jsonrpc": "2.0", "id": 1, "result": {
        "resultType": "input_required",
        "inputRequests": {"a": {"method": "elicitation/create", "params": {}}},
        "requestState": "x"}}
    out = json.loads(g.json_body(json.dumps(body).encode()))
    assert out["error"]["code"] == -32003 and out["id"] == 1


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"a": 1, "a": 2}'])
def test_unparseable_responses_fail_closed(gateway, payload) -> None:
    g = governor(gateway, method="tools/call")
    out = json.loads(g.json_body(payload))
    assert out["error"]["code"] == -32003
    g2 = governor(gateway, method="tools/call")
    msgs = stream(g2, [b"data: " + payload + b"\n\n"])
    assert msgs[0]["error"]["code"] == -32003


def test_keepalive_comments_pass_through(gateway) -> None:
    g = governor(gateway, method="tools/call")
    assert g.sse(b": ping\n\n") == [b": ping\n\n"]


def test_denied_notification_is_withheld_and_the_result_still_arrives() -> None:
    strict = Gateway(policy("""
        version: 1
        name: t
        mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
        rules:
          - {id: no-logs, match: {server: crm, mcp_method: notifications/message}, effect: deny}
        """), MemorySink())
    g = strict.governor(mcp_call("echo", method="tools/call"))
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}}
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    assert stream(g, [sse_encode(json.dumps(note)), sse_encode(json.dumps(result))]) == [result]
    assert g.cut is None


def test_server_notifications_of_declared_servers_pass(gateway) -> None:
    g = governor(gateway, method="tools/call")
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}}
    assert stream(g, [sse_encode(json.dumps(note))]) == [note]
