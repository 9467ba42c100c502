"""The e2e infrastructure works on its own: real MCP server (both protocol styles), HTTP(S)
upstreams, and bare ``mitmdump`` as the proxy (no fiveplane code involved)."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from clients import (
    http_client,
    legacy_handshake,
    mcp_client,
    modern_request,
    parse_jsonrpc,
    post_jsonrpc,
)

pytestmark = pytest.mark.e2e

TOOLS = {"get_customer", "refund", "delete_all", "echo", "list_tickets", "read_transactions",
         "get_payees", "send_money", "create_ticket", "delete_ticket", "list_created_tickets"}
TOOLS |= {"transfer"}  # list arguments (narrowing to an allowed subset)
EXPECTED_VERSION = {"legacy": "2025-11-25", "auto": "2026-07-28"}


async def _exercise(url: str, proxy: str | None, ca: str | None, mode: str, text: str) -> dict:
    async with mcp_client(url, proxy, ca, mode=mode) as c:
        tools = await c.list_tools()
        echoed = await c.call_tool("echo", {"text": text})
        customer = await c.call_tool("get_customer", {"customer_id": "c-7"})
        return {
            "version": c.session.protocol_version,
            "tools": {t.name: t for t in tools.tools},
            "echo": echoed.content[0].text,
            "customer": customer.structured_content,
        }


def _run_both_modes(url: str, proxy: str | None = None, ca: str | None = None) -> dict:
    return {
        mode: anyio.run(_exercise, url, proxy, ca, mode, f"hello-{mode}")
        for mode in ("legacy", "auto")
    }


def _check_results(results: dict, calls: list[dict]) -> None:
    for mode, r in results.items():
        assert r["version"] == EXPECTED_VERSION[mode]
        assert set(r["tools"]) == TOOLS
        assert r["tools"]["delete_all"].annotations.destructive_hint is True
        assert r["echo"] == f"hello-{mode}"
        assert r["customer"]["iban"] == "DE89370400440532013000"
        assert r["customer"]["email"] == "jane.doe@example.com"
        assert r["customer"]["card"] == "4111 1111 1111 1111"

    echo_calls = [c for c in calls if c["tool"] == "echo"]
    assert [c["arguments"] for c in echo_calls] == [
        {"text": "hello-legacy"},
        {"text": "hello-auto"},
    ]
    legacy, auto = echo_calls
    assert legacy["protocol_version"] == "2025-11-25"
    assert legacy["headers"]["mcp-session-id"]
    assert legacy["headers"]["mcp-protocol-version"] == "2025-11-25"
    assert auto["protocol_version"] == "2026-07-28"
    assert "mcp-session-id" not in auto["headers"]
    assert auto["headers"]["mcp-method"] == "tools/call"
    assert auto["headers"]["mcp-name"] == "echo"
    assert [c["arguments"] for c in calls if c["tool"] == "get_customer"] == [
        {"customer_id": "c-7"}
    ] * 2


# --------------------------------------------------------------------------------------------
# (a) MCP server reached directly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
def test_mcp_server_direct_both_modes(mcp_server, json_response):
    srv = mcp_server.start(json_response=json_response)
    results = _run_both_modes(srv.url)
    _check_results(results, srv.calls())


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
def test_mcp_server_raw_wire_both_styles(mcp_server, json_response):
    """The same server process answers the 2025 handshake (session + SSE/JSON) and the
    2026-07-28 stateless style (server/discover, no session) on the wire."""
    srv = mcp_server.start(json_response=json_response)
    expected_ctype = "application/json" if json_response else "text/event-stream"
    with http_client(None) as c:
        # 2025 era: initialize -> Mcp-Session-Id, then a call on the session
        sid = legacy_handshake(c, srv.url)
        r = post_jsonrpc(
            c,
            srv.url,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "raw-legacy"}},
            },
            session_id=sid,
            protocol_version="2025-11-25",
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(expected_ctype)
        (msg,) = parse_jsonrpc(r)
        assert msg["id"] == 1
        assert msg["result"]["content"][0]["text"] == "raw-legacy"
        # a request without a session on the legacy path is rejected
        r = post_jsonrpc(c, srv.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert r.status_code == 400

        # 2026-07-28: stateless discover + call, no session anywhere
        body, headers = modern_request("server/discover", id=3)
        r = post_jsonrpc(c, srv.url, body, headers=headers)
        assert r.status_code == 200, r.text
        assert "mcp-session-id" not in r.headers
        (msg,) = parse_jsonrpc(r)
        assert "2026-07-28" in json.dumps(msg["result"])
        body, headers = modern_request(
            "tools/call", {"name": "echo", "arguments": {"text": "raw-modern"}}, id=4
        )
        r = post_jsonrpc(c, srv.url, body, headers=headers)
        assert r.status_code == 200, r.text
        (msg,) = parse_jsonrpc(r)
        assert msg["result"]["content"][0]["text"] == "raw-modern"
        assert msg["result"]["resultType"] == "complete"
        # malformed JSON is answered with a JSON-RPC parse error, not a crash
        r = post_jsonrpc(c, srv.url, b'{"jsonrpc": "2.0", "id": 5, "method": ', headers=headers)
        assert r.status_code == 400
        assert parse_jsonrpc(r)[0]["error"]["code"] == -32700

    echo = [x for x in srv.calls() if x["tool"] == "echo"]
    assert [x["arguments"]["text"] for x in echo] == ["raw-legacy", "raw-modern"]
    assert echo[0]["headers"]["mcp-session-id"] == sid


# --------------------------------------------------------------------------------------------
# (b) through bare mitmdump
# --------------------------------------------------------------------------------------------


def test_mitmdump_reports_port_and_uses_session_ca(mitmdump, proxy_certs):
    assert mitmdump.port > 0
    assert mitmdump.url == f"http://127.0.0.1:{mitmdump.port}"
    assert mitmdump.ca_file == proxy_certs / "mitmproxy-ca-cert.pem"
    assert "HTTP(S) proxy listening at 127.0.0.1:" in mitmdump.output()
    assert mitmdump.proc.poll() is None


def test_mcp_through_mitmdump(mcp_server, mitmdump):
    srv = mcp_server.start()
    results = _run_both_modes(srv.url, mitmdump.url, str(mitmdump.ca_file))
    _check_results(results, srv.calls())
    # the proxy really carried the traffic: mitmdump logs every flow
    deadline = time.monotonic() + 5
    while f"POST http://127.0.0.1:{srv.port}/mcp" not in mitmdump.output():
        assert time.monotonic() < deadline, mitmdump.output()
        time.sleep(0.05)


def test_http_and_https_through_mitmdump(mitmdump, http_upstream, https_upstream, test_ca):
    http_upstream.set_sse("/events", n=3, delay=0.02)
    https_upstream.set_chunked("/chunked", [b"alpha-", b"beta-", b"gamma"], delay=0.01)
    https_upstream.set_response("/teapot", status=418, headers={"X-Test": "yes"}, body="short")

    with http_client(mitmdump.url, mitmdump.ca_file) as c:
        r = c.get(http_upstream.url_for("/plain?x=1"), headers={"X-Agent": "e2e"})
        assert r.status_code == 200
        assert r.json() == {"ok": True, "path": "/plain?x=1", "method": "GET"}

        r = c.post(https_upstream.url_for("/api/items"), json={"name": "widget"})
        assert r.status_code == 200
        assert r.json()["path"] == "/api/items"

        r = c.get(http_upstream.url_for("/events"))
        assert r.headers["content-type"].startswith("text/event-stream")
        assert [m["seq"] for m in _sse_data(r.text)] == [0, 1, 2]

        r = c.get(https_upstream.url_for("/chunked"))
        assert r.content == b"alpha-beta-gamma"

        r = c.get(https_upstream.url_for("/teapot"))
        assert (r.status_code, r.headers["x-test"], r.text) == (418, "yes", "short")

    (plain, events) = http_upstream.hits
    assert (plain.method, plain.path, plain.headers["x-agent"]) == ("GET", "/plain?x=1", "e2e")
    assert events.route == "/events"
    api, chunked, teapot = https_upstream.hits
    assert (api.method, api.route, api.json()) == ("POST", "/api/items", {"name": "widget"})
    assert api.headers["content-type"] == "application/json"
    assert [h.route for h in (chunked, teapot)] == ["/chunked", "/teapot"]

    # a client that does not trust the interception CA fails the TLS handshake with the proxy
    with (
        http_client(mitmdump.url, test_ca.ca_pem) as bad,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        bad.get(https_upstream.url_for("/never"))
    assert https_upstream.hits_for("/never") == []


def test_upstream_direct_tls_trust(https_upstream, test_ca):
    """The upstream cert chains to test_ca and has SANs for 127.0.0.1 and localhost."""
    with http_client(None, test_ca.ca_pem) as c:
        assert c.get(https_upstream.url_for("/a")).json()["path"] == "/a"
        assert c.get(f"https://localhost:{https_upstream.port}/b").status_code == 200
    with (
        http_client(None, None) as c,  # system trust store only
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        c.get(https_upstream.url_for("/c"))


def _sse_data(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


# --------------------------------------------------------------------------------------------
# (c) resources/read and prompts/get (direct and through mitmdump, both modes)
# --------------------------------------------------------------------------------------------


async def _resources_and_prompts(url: str, proxy: str | None, ca: str | None, mode: str) -> dict:
    async with mcp_client(url, proxy, ca, mode=mode) as c:
        templates = await c.list_resource_templates()
        res = await c.read_resource("crm://customers/c-42")
        prompts = await c.list_prompts()
        prompt = await c.get_prompt("summarize", {"customer_id": "c-42"})
        return {
            "templates": [t.uri_template for t in templates.resource_templates],
            "resource": json.loads(res.contents[0].text),
            "prompts": [p.name for p in prompts.prompts],
            "prompt_text": prompt.messages[0].content.text,
        }


@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "mitmdump"])
def test_resources_and_prompts(mcp_server, proxy_process, test_ca, via_proxy):
    srv = mcp_server.start(json_response=via_proxy)  # cover both response styles
    proxy, ca = None, None
    if via_proxy:
        p = proxy_process.start_mitmdump(upstream_ca=test_ca.ca_pem)
        proxy, ca = p.url, str(p.ca_file)
    for mode in ("legacy", "auto"):
        r = anyio.run(_resources_and_prompts, srv.url, proxy, ca, mode)
        assert r["templates"] == ["crm://customers/{id}"]
        assert r["resource"]["id"] == "c-42"
        assert r["resource"]["iban"] == "DE89370400440532013000"
        assert r["prompts"] == ["summarize"]
        assert "c-42" in r["prompt_text"]
    assert srv.calls() == []  # resources/prompts are not tool calls


def test_process_cleanup(mcp_server):
    srv = mcp_server.start(name="short-lived")
    srv.stop()
    assert srv.proc.poll() is not None
    srv.stop()  # idempotent
