"""Request translation: MCP and HTTP actions, and refusals of anything ambiguous."""

from __future__ import annotations

import gzip
import json

import pytest

from proxy.action import Kind
from proxy.testing import policy
from proxy.translate import Refusal, RequestView, translate_request

POLICY = policy("""
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
""")


def view(body: bytes | dict | list, *, host: str = "crm.example.com", path: str = "/mcp",
         method: str = "POST", headers: tuple[tuple[str, str], ...] = ()) -> RequestView:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RequestView(method, "https", host, 443, path,
                       (("content-type", "application/json"), *headers), raw)


def rpc(method: str = "tools/call", **params) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_tools_call_becomes_an_mcp_action() -> None:
    action = translate_request(view(rpc(name="refund", arguments={"amount": 5})), POLICY)
    assert not isinstance(action, Refusal)
    assert (action.kind, action.server, action.mcp_method, action.name) == (
        Kind.MCP, "crm", "tools/call", "refund")
    assert action.arguments == {"amount": 5} and action.rpc_id == 1


def test_undeclared_server_is_known_by_origin_and_path() -> None:
    action = translate_request(view(rpc(name="x"), host="Other.Example.COM.", path="/a/../mcp"),
                               POLICY)
    assert not isinstance(action, Refusal)
    assert action.server == "https://other.example.com:443/mcp"


def test_jsonrpc_sniffed_whatever_the_content_type() -> None:
    v = RequestView("POST", "https", "api.example.com", 443, "/rpc",
                    (("content-type", "text/plain"),), json.dumps(rpc(name="x")).encode())
    action = translate_request(v, POLICY)
    assert not isinstance(action, Refusal) and action.kind is Kind.MCP


@pytest.mark.parametrize("body, code", [
    (b"{not json", "invalid_json"),
    ({"jsonrpc": "2.0", "id": 1}, "jsonrpc_invalid"),
    ([rpc(name="echo")], "jsonrpc_batch"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"delete_all"}}',
     "duplicate_key"),
    (rpc(name="d\u0435lete_all"), "mcp_bad_name"),
    (rpc(name="echo", arguments=[1]), "mcp_invalid"),
    (rpc(arguments={}), "mcp_invalid"),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, "jsonrpc_invalid"),
    ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}, "jsonrpc_invalid"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":NaN}}}',
     "json_nonfinite"),
    (b"[" * 10000 + b"]" * 10000, "json_too_deep"),
    (b'{"jsonrpc":"2.0","method":"\xff"}', "invalid_utf8"),
])
def test_ambiguous_or_broken_messages_are_refused(body, code) -> None:
    result = translate_request(view(body), POLICY)
    assert isinstance(result, Refusal), result
    assert result.code == code
    assert result.message


def test_header_body_mismatch_is_refused() -> None:
    body = rpc(name="delete_all")
    ok = translate_request(view(body, headers=(("mcp-method", "tools/call"),
                                               ("mcp-name", "delete_all"))), POLICY)
    assert not isinstance(ok, Refusal)
    for headers in [(("mcp-method", "tools/list"),), (("mcp-name", "echo"),)]:
        result = translate_request(view(body, headers=headers), POLICY)
        assert isinstance(result, Refusal) and result.code == "mcp_header_mismatch"


def test_repeated_mcp_header_is_refused() -> None:
    result = translate_request(view(rpc(name="x"), headers=(("mcp-name", "x"), ("mcp-name", "y"))),
                               POLICY)
    assert isinstance(result, Refusal) and result.code == "ambiguous_header"


def test_compressed_bodies_are_judged_decoded_and_bombs_refused() -> None:
    body = gzip.compress(json.dumps(rpc(name="refund", arguments={"amount": 1})).encode())
    action = translate_request(view(body, headers=(("content-encoding", "gzip"),)), POLICY)
    assert not isinstance(action, Refusal) and action.name == "refund"
    bomb = gzip.compress(b"{" + b" " * (POLICY.max_body_bytes + 10) + b"}")
    result = translate_request(view(bomb, headers=(("content-encoding", "gzip"),)), POLICY)
    assert isinstance(result, Refusal) and result.code == "decompression_bomb"
    result = translate_request(view(body, headers=(("content-encoding", "compress"),)), POLICY)
    assert isinstance(result, Refusal) and result.code == "unsupported_encoding"


def test_transport_requests_on_a_declared_server() -> None:
    get = translate_request(view(b"", method="GET"), POLICY)
    delete = translate_request(view(b"", method="DELETE"), POLICY)
    put = translate_request(view(rpc(name="x"), method="PUT"), POLICY)
    assert not isinstance(get, Refusal) and get.mcp_method == "transport/stream"
    assert not isinstance(delete, Refusal) and delete.mcp_method == "transport/terminate"
    assert isinstance(put, Refusal) and put.code == "mcp_bad_method"


def test_plain_http_and_websocket() -> None:
    get = translate_request(view(b"", host="api.example.com", path="/v1/%2e%2e/x?q=1",
                                 method="GET"), POLICY)
    assert not isinstance(get, Refusal)
    assert (get.kind, get.method, get.path) == (Kind.HTTP, "GET", "/x")
    ws = translate_request(view(b"", host="api.example.com", method="GET",
                                headers=(("upgrade", "websocket"),)), POLICY)
    assert isinstance(ws, Refusal) and ws.code == "unsupported_protocol"


@pytest.mark.parametrize("body", [
    b'{"\\u006asonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}',
    b'{"JSONRPC":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}',
])
def test_jsonrpc_spelled_differently_is_still_jsonrpc(body: bytes) -> None:
    v = RequestView("POST", "https", "api.example.com", 443, "/rpc",
                    (("content-type", "application/json"),), body)
    result = translate_request(v, POLICY)
    assert isinstance(result, Refusal) or result.kind is Kind.MCP


@pytest.mark.parametrize("body", [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
     "params": {"name": "echo", "Name": "delete_all"}},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
     "params": {"name": "refund", "arguments": {"amount": 1, "Amount": 900}}},
    {"jsonrpc": "2.0", "id": 1, "result": {}, "METHOD": "tools/call"},
])
def test_keys_differing_only_in_case_are_refused(body: dict) -> None:
    result = translate_request(view(body), POLICY)
    assert isinstance(result, Refusal) and result.code == "duplicate_key"
