"""Governance end to end: the real ``fiveplane run`` process between real clients and real
upstreams (an MCP server in both protocol styles and both response styles, plain HTTP, HTTPS
with a private CA, a loopback canary), proving what a user of the proxy would notice:

allowed calls work, denied calls fail with the rule that denied them and never reach the
upstream, argument predicates and type confusion, ``tools/list`` filtering, resources and
prompts, hosts and internal/metadata addresses in every spelling, fail-closed addon errors,
malformed/ambiguous/compressed input, evidence, hot reload, and unbuffered SSE.

One proxy and one set of upstreams serve the whole module (one policy covers every case);
only the hot-reload test starts a proxy of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import brotli
import pytest
from clients import (
    assert_reconstructable,
    http_client,
    legacy_handshake,
    mcp_client,
    modern_request,
    parse_jsonrpc,
    post_jsonrpc,
    read_evidence,
)
from harness import (
    MCP_SERVER_READY,
    McpServerFactory,
    McpServerHandle,
    ProcessLauncher,
    ProxyFactory,
    ProxyHandle,
)
from mcp import MCPError
from servers.http_upstream import CannedResponse, Hit, TestCA, Upstream

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

pytestmark = pytest.mark.e2e

DENIED_CODE = -32003
LISTED_TOOLS = {"get_customer", "echo", "list_tickets", "refund"}  # delete_all is denied
STYLES = [("legacy", "sse"), ("auto", "sse"), ("legacy", "json"), ("auto", "json")]
STYLE_IDS = [f"{m}-{s}" for m, s in STYLES]

POLICY = """\
# Governance e2e policy: every case of the module in one document.
version: 1
name: governance-e2e
description: Support agent against loopback test upstreams.
defaults:
  effect: deny

network:
  allow:
    - {{id: anywhere, host: "*"}}
  deny:
    - {{id: no-direct-ip, host: "127.0.0.1", ports: [{api}]}}
  allow_internal:
    - {{id: test-upstreams-v4, cidr: 127.0.0.1/32, ports: [{internal}]}}
    - {{id: test-upstreams-v6, cidr: "::1/128", ports: [{internal}]}}

mcp_servers:
  crm: {{url: "http://127.0.0.1:{crm}/mcp"}}
  crm-json: {{url: "http://127.0.0.1:{crm_json}/mcp"}}
  rawrpc: {{url: "http://127.0.0.1:{rpc}/rpc"}}
  chatty: {{url: "http://127.0.0.1:{chatty}/mcp"}}

rules:
  - id: crm-read
    match: {{server: [crm, crm-json, rawrpc], tool: [get_customer, echo, list_tickets]}}
    effect: allow

  - id: chatty-tools
    match: {{server: chatty, tool: chatty}}
    effect: allow

  - id: no-server-logs
    match: {{server: chatty, mcp_method: notifications/message}}
    effect: deny

  - id: refund-small
    match: {{server: [crm, crm-json], tool: refund, args: {{amount: {{le: 100}}}}}}
    effect: allow

  - id: refund-large
    match: {{tool: refund, args: {{amount: {{gt: 500}}}}}}
    effect: deny
    reason: refunds over 500 are never issued by an agent

  - id: no-bulk-delete
    match: {{tool: "delete_*"}}
    effect: deny
    reason: bulk deletion is not a support task

  - id: customer-records
    match: {{server: [crm, crm-json], resource: "crm://customers/c-*"}}
    effect: allow

  - id: vip-records
    match: {{resource: "crm://customers/vip-*"}}
    effect: deny
    reason: VIP records are handled by account managers

  - id: summarize-customers
    match:
      server: [crm, crm-json]
      prompt: summarize
      args: {{customer_id: {{regex: "c-[0-9]+"}}}}
    effect: allow

  - id: api-read
    match: {{host: localhost, port: {api}, method: GET, path: ["/api/**", "/events"]}}
    effect: allow

  - id: api-write
    match: {{host: localhost, port: {api}, method: POST, path: "/api/**"}}
    effect: allow

  - id: api-admin
    match: {{host: localhost, path: "/admin/**"}}
    effect: deny
    reason: admin endpoints are off limits for agents

  - id: secure-read
    match: {{host: localhost, scheme: https, port: {secure}, method: GET, path: "/secure/**"}}
    effect: allow

  # The canary's port is open in the rules but not in allow_internal: only the internal
  # address check stands between a request and the canary.
  - id: canary-open
    match: {{port: [{canary}, {tls_canary}]}}
    effect: allow
"""


# A server whose tool logs to the client while it works (notifications/message on the
# request's SSE stream, 2025 style) before returning its result.
CHATTY_SERVER = Path(__file__).parent / "servers" / "chatty_server.py"


# --------------------------------------------------------------------------------------------
# module environment: one proxy, three MCP servers, five HTTP(S) upstreams
# --------------------------------------------------------------------------------------------


@dataclass
class Env:
    proxy: ProxyHandle
    servers: dict[str, McpServerHandle]  # "sse" (crm), "json" (crm-json)
    chatty: McpServerHandle  # a server whose tool sends log notifications
    api: Upstream  # plain HTTP, reachable as localhost:PORT
    rpc: Upstream  # hand-written JSON-RPC endpoint, declared as MCP server `rawrpc`
    secure: Upstream  # HTTPS with a private CA
    canary: Upstream  # loopback, port NOT in allow_internal
    tls_canary: Upstream  # the same over HTTPS
    policy_path: Path
    policy_version: str
    evidence_path: Path

    @property
    def ca(self) -> str:
        assert self.proxy.ca_file is not None
        return str(self.proxy.ca_file)

    def client(self, **kw: Any):
        return http_client(self.proxy.url, self.ca, **kw)

    def evidence(self) -> list[dict[str, Any]]:
        return read_evidence(self.evidence_path)

    def record(self, decision_id: str) -> dict[str, Any]:
        found = [r for r in self.evidence() if r["decision_id"] == decision_id]
        assert len(found) == 1, f"decision {decision_id}: {len(found)} records"
        return found[0]


def _decode(body: bytes, coding: str | None) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if coding == "br":
        return brotli.decompress(body)
    if coding == "zstd":
        return zstd.decompress(body)
    return body


def _rpc_handler(hit: Hit) -> CannedResponse:
    """A minimal JSON-RPC tool server: answers any tools/call with the text it received."""
    msg = json.loads(_decode(hit.body, hit.headers.get("content-encoding")))
    text = f"rawrpc got {msg['params']['name']}({json.dumps(msg['params']['arguments'])})"
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
    return CannedResponse(200, {"Content-Type": "application/json"}, body)


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA, proxy_certs: Path
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("governance")
    launcher = ProcessLauncher(tmp / "logs", "gov")
    upstreams = [
        Upstream(),
        Upstream(),
        Upstream(tls=True, ca=test_ca),
        Upstream(),
        Upstream(tls=True, ca=test_ca),
    ]
    try:
        api, rpc, secure, canary, tls_canary = (u.start() for u in upstreams)
        rpc.set_handler("/rpc", _rpc_handler)
        api.set_handler("/api/rpc", _rpc_handler)  # an MCP-like endpoint nobody declared
        factory = McpServerFactory(launcher, tmp)
        sse = factory.start(name="crm")
        js = factory.start(json_response=True, name="crm-json")
        chatty_py = CHATTY_SERVER
        chatty_log = tmp / "chatty-calls.jsonl"
        chatty_log.touch()
        mp = launcher.launch([sys.executable, str(chatty_py), str(chatty_log)], MCP_SERVER_READY)
        chatty = McpServerHandle(f"http://127.0.0.1:{mp.port}/mcp", mp.port, chatty_log, mp)
        internal = ", ".join(
            str(p) for p in (sse.port, js.port, chatty.port, api.port, rpc.port, secure.port))
        text = POLICY.format(
            api=api.port, rpc=rpc.port, secure=secure.port, canary=canary.port,
            tls_canary=tls_canary.port,
            crm=sse.port, crm_json=js.port, chatty=chatty.port, internal=internal,
        )
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(text)
        state = tmp / "state"
        proxy = ProxyFactory(launcher, tmp, proxy_certs).start_fiveplane(
            policy_path, state_dir=state, upstream_ca=test_ca.ca_pem, extra=["--test-faults"]
        )
        yield Env(
            proxy=proxy,
            servers={"sse": sse, "json": js},
            chatty=chatty,
            api=api,
            rpc=rpc,
            secure=secure,
            canary=canary,
            tls_canary=tls_canary,
            policy_path=policy_path,
            policy_version="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
            evidence_path=state,
        )
    finally:
        launcher.stop_all()
        for u in upstreams:
            u.stop()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def denial(resp: Any) -> dict[str, Any]:
    """The decision in a fiveplane refusal: a JSON-RPC error (MCP) or a 403 JSON body."""
    if resp.status_code == 403:
        body = resp.json()
        assert body["verdict"] == "deny", body
        assert resp.headers["x-fiveplane-decision"] == body["decision_id"]
        return {**body, "message": body["error"]}
    assert resp.status_code == 200, (resp.status_code, resp.text)
    (msg,) = parse_jsonrpc(resp)
    assert msg["error"]["code"] == DENIED_CODE, msg
    data = msg["error"]["data"]
    assert data["verdict"] == "deny", data
    return {**data, "message": msg["error"]["message"], "id": msg["id"]}


def assert_denied_by(resp: Any, rule: str, *words: str) -> dict[str, Any]:
    d = denial(resp)
    assert d["rule_ids"] == [rule], d
    assert f"`{rule}`" in d["message"], d
    for w in words:
        assert w.lower() in d["reason"].lower(), (w, d["reason"])
    return d


def assert_mcp_denied(err: MCPError, rule: str) -> None:
    assert err.code == DENIED_CODE, err
    assert f"fiveplane deny (`{rule}`)" in err.message, err.message
    assert err.data["rule_ids"] == [rule], err.data
    assert err.data["verdict"] == "deny"


def modern_call(
    c: Any, url: str, method: str, params: dict[str, Any], *, rpc_id: int = 1,
    headers: dict[str, str] | None = None,
) -> Any:
    body, hdrs = modern_request(method, params, id=rpc_id)
    return post_jsonrpc(c, url, body, headers={**hdrs, **(headers or {})})


def assert_still_serving(env: Env) -> None:
    """An allowed call still works after whatever the test threw at the proxy."""
    token = uuid.uuid4().hex
    with env.client() as c:
        r = modern_call(
            c, env.servers["sse"].url, "tools/call",
            {"name": "echo", "arguments": {"text": token}}, rpc_id=77,
        )
    assert r.status_code == 200, r.text
    (msg,) = parse_jsonrpc(r)
    assert msg["result"]["content"][0]["text"] == token, msg
    assert env.proxy.proc.poll() is None


def tool_calls(srv: McpServerHandle, tool: str) -> list[dict[str, Any]]:
    return [c["arguments"] for c in srv.calls() if c["tool"] == tool]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _read_response(sock: socket.socket) -> RawResponse:
    """One HTTP/1.1 response (Content-Length or chunked), without waiting for EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    for line in lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed in the middle of a response body")
        return chunk

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += more()
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return RawResponse(status, headers, body)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += more()
    return RawResponse(status, headers, rest[:length])


def raw_request(
    proxy: ProxyHandle, target: str, host: str, *, method: str = "GET",
    headers: dict[str, str] | None = None, body: bytes = b"",
    declared_length: int | None = None, timeout: float = 10.0,
) -> RawResponse:
    """Send exactly this request line / Host header to the proxy (no client-side URL
    normalization), e.g. ``GET http://0177.0.0.1:P/ HTTP/1.1``. With ``declared_length`` the
    Content-Length header announces more bytes than ``body`` holds (the rest is never sent)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    length = len(body) if declared_length is None else declared_length
    if length or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {length}")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return _read_response(s)


def _hosts_file_loopback_name() -> str | None:
    """A name other than localhost that /etc/hosts maps to 127.0.0.1, if any."""
    try:
        text = Path("/etc/hosts").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "127.0.0.1":
            for name in fields[1:]:
                if not name.lower().startswith("localhost") and "." not in name.strip("."):
                    return name
            for name in fields[1:]:
                if not name.lower().startswith("localhost"):
                    return name
    return None


# --------------------------------------------------------------------------------------------
# 1, 2, 4: tool calls and tools/list, both protocol styles, SSE and JSON responses
# --------------------------------------------------------------------------------------------


async def _tools_session(env: Env, mode: str, style: str, token: str) -> dict[str, Any]:
    srv = env.servers[style]
    async with mcp_client(srv.url, env.proxy.url, env.ca, mode=mode) as c:
        listed = await c.list_tools()
        echoed = await c.call_tool("echo", {"text": token})
        customer = await c.call_tool("get_customer", {"customer_id": "c-1"})
        with pytest.raises(MCPError) as denied:
            await c.call_tool("delete_all", {"confirm": True})
        # the session survives a denial
        again = await c.call_tool("echo", {"text": token + "-again"})
        return {
            "version": c.session.protocol_version,
            "tools": {t.name for t in listed.tools},
            "echo": echoed.content[0].text,
            "customer": customer.structured_content,
            "denied": denied.value,
            "again": again.content[0].text,
        }


@pytest.mark.parametrize(("mode", "style"), STYLES, ids=STYLE_IDS)
def test_tool_calls_allowed_denied_and_listed(env: Env, mode: str, style: str) -> None:
    token = f"hello-{mode}-{style}-{uuid.uuid4().hex[:8]}"
    r = anyio.run(_tools_session, env, mode, style, token)
    assert r["version"] == {"legacy": "2025-11-25", "auto": "2026-07-28"}[mode]
    # 4: the denied tool is not even offered
    assert r["tools"] == LISTED_TOOLS
    # 1: allowed calls return the tool's result, and the server really ran them
    assert r["echo"] == token
    assert r["again"] == token + "-again"
    assert r["customer"]["id"] == "c-1"
    srv = env.servers[style]
    texts = [a["text"] for a in tool_calls(srv, "echo")]
    assert token in texts and token + "-again" in texts
    # 2: the denied call raised with the rule, and never reached the server
    assert_mcp_denied(r["denied"], "no-bulk-delete")
    assert "bulk deletion is not a support task" in r["denied"].message
    assert tool_calls(srv, "delete_all") == []


@pytest.mark.parametrize("style", ["sse", "json"])
def test_tools_list_filtered_on_the_wire(env: Env, style: str) -> None:
    """Raw tools/list in both protocol styles: the JSON or SSE result lacks delete_all."""
    srv = env.servers[style]
    with env.client() as c:
        sid = legacy_handshake(c, srv.url)
        legacy = post_jsonrpc(
            c, srv.url, {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
            session_id=sid, protocol_version="2025-11-25",
        )
        modern = modern_call(c, srv.url, "tools/list", {}, rpc_id=6)
    expected_ctype = "application/json" if style == "json" else "text/event-stream"
    assert legacy.headers["content-type"].startswith(expected_ctype)
    for resp in (legacy, modern):
        assert resp.status_code == 200, resp.text
        (msg,) = parse_jsonrpc(resp)
        assert {t["name"] for t in msg["result"]["tools"]} == LISTED_TOOLS, msg
        assert "delete_all" not in resp.text


async def _chatty_call(env: Env, mode: str, token: str) -> dict[str, Any]:
    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async with mcp_client(env.chatty.url, env.proxy.url, env.ca, mode=mode,
                          logging_callback=on_log) as c:
        res = await c.call_tool("chatty", {"text": token})
    return {"text": res.content[0].text, "logs": logs}


def test_denied_server_notification_is_withheld_not_fatal(env: Env) -> None:
    """An allowed tool whose server logs to the client while it works: the policy denies
    that server's log messages, so the log is withheld (and recorded as denied), but the
    call's own result still reaches the agent: the tool ran, and the agent must know."""
    token = f"chat-{uuid.uuid4().hex[:8]}"
    before = len(env.evidence())
    r = anyio.run(_chatty_call, env, "legacy", token)
    assert r["text"] == f"done {token}"
    assert r["logs"] == []
    assert tool_calls(env.chatty, "chatty") == [{"text": token}]
    new = env.evidence()[before:]
    withheld = [x for x in new if x.get("action", {}).get("mcp_method") == "notifications/message"]
    assert len(withheld) == 1, new
    assert withheld[0]["action"]["kind"] == "mcp_server"
    assert withheld[0]["decision"]["verdict"] == "deny"
    assert withheld[0]["decision"]["rule_ids"] == ["no-server-logs"]
    call = [x for x in new if x.get("action", {}).get("name") == "chatty"]
    assert [x["decision"]["rule_ids"] for x in call] == [["chatty-tools"]]


# --------------------------------------------------------------------------------------------
# 3: argument predicates, type confusion
# --------------------------------------------------------------------------------------------


async def _refunds(env: Env, mode: str, customer: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with mcp_client(env.servers["sse"].url, env.proxy.url, env.ca, mode=mode) as c:
        res = await c.call_tool("refund", {"customer_id": customer, "amount": 50})
        out["50"] = res.content[0].text
        for label, args in {
            "900": {"customer_id": customer, "amount": 900},
            "300": {"customer_id": customer, "amount": 300},
            "string": {"customer_id": customer, "amount": "50"},
            "missing": {"customer_id": customer},
            "bool": {"customer_id": customer, "amount": True},
        }.items():
            try:
                await c.call_tool("refund", args)
            except MCPError as e:
                out[label] = e
            else:
                out[label] = "NOT DENIED"
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_argument_predicates(env: Env, mode: str) -> None:
    customer = f"c-{mode}-{uuid.uuid4().hex[:6]}"
    r = anyio.run(_refunds, env, mode, customer)
    assert r["50"] == f"refunded 50.00 to {customer}"
    assert_mcp_denied(r["900"], "refund-large")
    assert "refunds over 500" in r["900"].message
    assert_mcp_denied(r["300"], "defaults.effect")
    # type confusion never allows: a string, a missing and a boolean amount are all denied
    # (the deny rule cannot rule them out, so it matches: fail closed)
    for label in ("string", "missing", "bool"):
        err = r[label]
        assert isinstance(err, MCPError), (label, err)
        assert err.code == DENIED_CODE, (label, err)
        assert err.data["verdict"] == "deny"
        assert "amount" in err.data["reason"], (label, err.data)
    # the server saw exactly the one allowed refund
    refunds = tool_calls(env.servers["sse"], "refund")
    assert [a for a in refunds if a["customer_id"] == customer] == [
        {"customer_id": customer, "amount": 50.0}
    ]


# --------------------------------------------------------------------------------------------
# 5: resources/read and prompts/get
# --------------------------------------------------------------------------------------------


async def _resources_prompts(env: Env, mode: str, style: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with mcp_client(env.servers[style].url, env.proxy.url, env.ca, mode=mode) as c:
        res = await c.read_resource("crm://customers/c-42")
        out["resource"] = json.loads(res.contents[0].text)
        prompt = await c.get_prompt("summarize", {"customer_id": "c-42"})
        out["prompt"] = prompt.messages[0].content.text
        with pytest.raises(MCPError) as e1:
            await c.read_resource("crm://customers/vip-1")
        out["vip_resource"] = e1.value
        with pytest.raises(MCPError) as e2:
            await c.get_prompt("summarize", {"customer_id": "vip-9"})
        out["vip_prompt"] = e2.value
    return out


@pytest.mark.parametrize(("mode", "style"), STYLES, ids=STYLE_IDS)
def test_resources_and_prompts(env: Env, mode: str, style: str) -> None:
    r = anyio.run(_resources_prompts, env, mode, style)
    assert r["resource"]["id"] == "c-42"
    assert "c-42" in r["prompt"]
    assert_mcp_denied(r["vip_resource"], "vip-records")
    assert "account managers" in r["vip_resource"].message
    assert_mcp_denied(r["vip_prompt"], "defaults.effect")


# --------------------------------------------------------------------------------------------
# 6: hosts over HTTP and HTTPS
# --------------------------------------------------------------------------------------------


def test_http_allowed_and_denied(env: Env) -> None:
    tag = uuid.uuid4().hex[:8]
    with env.client() as c:
        ok = c.get(f"http://localhost:{env.api.port}/api/items-{tag}?q=1")
        denied_host = c.get(f"http://127.0.0.1:{env.api.port}/api/items-{tag}-ip")
        denied_path = c.get(f"http://localhost:{env.api.port}/admin/users-{tag}")
        unlisted = c.put(f"http://localhost:{env.api.port}/api/items-{tag}-put", json={})
    assert ok.status_code == 200
    assert ok.json() == {"ok": True, "path": f"/api/items-{tag}?q=1", "method": "GET"}
    d = assert_denied_by(denied_host, "no-direct-ip", "127.0.0.1")
    assert d["policy_version"] == env.policy_version
    assert_denied_by(denied_path, "api-admin", "admin endpoints")
    assert_denied_by(unlisted, "defaults.effect", "no rule matched")
    seen = [h.path for h in env.api.hits if tag in h.path]
    assert seen == [f"/api/items-{tag}?q=1"]


def test_https_through_the_proxy_ca(env: Env) -> None:
    tag = uuid.uuid4().hex[:8]
    port = env.secure.port
    with env.client() as c:
        ok = c.get(f"https://localhost:{port}/secure/doc-{tag}")
        denied_path = c.get(f"https://localhost:{port}/private/doc-{tag}")
        denied_host = c.get(f"https://127.0.0.1:{port}/secure/doc-{tag}-ip")
    assert ok.status_code == 200
    assert ok.json()["path"] == f"/secure/doc-{tag}"
    assert_denied_by(denied_path, "defaults.effect")
    assert_denied_by(denied_host, "defaults.effect")
    assert [h.path for h in env.secure.hits if tag in h.path] == [f"/secure/doc-{tag}"]


# --------------------------------------------------------------------------------------------
# 7: internal and metadata addresses in every spelling
# --------------------------------------------------------------------------------------------

_LOOPBACK_NAME = _hosts_file_loopback_name()
NAME_SPELLINGS = ["localhost", "LOCALHOST.", *([_LOOPBACK_NAME] if _LOOPBACK_NAME else [])]
INTERNAL_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "[::ffff:127.0.0.1]",
    *NAME_SPELLINGS,
]


def test_canaries_are_reachable_directly(env: Env) -> None:
    """Control: the canaries answer when asked directly, so an empty hit list through the
    proxy means the proxy stopped the request."""
    assert env.tls_canary.ca is not None
    with http_client(None, env.tls_canary.ca.ca_pem) as c:
        assert c.get(env.canary.url_for("/direct")).status_code == 200
        assert c.get(env.tls_canary.url_for("/direct")).status_code == 200
    env.canary.clear_hits()
    env.tls_canary.clear_hits()


@pytest.mark.parametrize("host", INTERNAL_SPELLINGS)
def test_internal_address_spellings_blocked(env: Env, host: str) -> None:
    env.canary.clear_hits()
    authority = f"{host}:{env.canary.port}"
    r = raw_request(env.proxy, f"http://{authority}/canary", authority)
    assert r.status == 403, (r.status, r.text)
    d = assert_denied_by(r, "network.internal", "internal", "allow_internal")
    assert "loopback" in d["reason"], d
    time.sleep(0.05)
    assert env.canary.hits == []


@pytest.mark.parametrize("host", INTERNAL_SPELLINGS)
def test_internal_address_spellings_blocked_over_https(env: Env, host: str) -> None:
    """The same spellings in a CONNECT tunnel: refused at CONNECT (literal addresses) or at
    the first request inside the tunnel (names, resolved by the proxy)."""
    env.tls_canary.clear_hits()
    authority = f"{host}:{env.tls_canary.port}"
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        r = _read_response(s)
        if r.status == 200:
            # only names get a tunnel: an internal address literal is refused at CONNECT
            assert host in NAME_SPELLINGS, host
            ctx = ssl.create_default_context(cafile=env.ca)
            ctx.check_hostname = False  # the proxy mints a cert for whatever name was asked
            with ctx.wrap_socket(s, server_hostname=host.rstrip(".")) as tls:
                tls.sendall(f"GET /canary HTTP/1.1\r\nHost: {authority}\r\n"
                            "Connection: close\r\n\r\n".encode())
                r = _read_response(tls)
    assert r.status == 403, (r.status, r.text)
    d = assert_denied_by(r, "network.internal", "internal")
    assert "loopback" in d["reason"], d
    time.sleep(0.05)
    assert env.tls_canary.hits == []


@pytest.mark.parametrize("host", ["169.254.169.254", "2852039166"])
def test_metadata_addresses_blocked(env: Env, host: str) -> None:
    # Decided from the literal before any connection: nothing is ever dialled.
    r = raw_request(env.proxy, f"http://{host}/latest/meta-data/", host)
    assert r.status == 403, (r.status, r.text)
    d = assert_denied_by(r, "network.metadata", "metadata")
    assert "169.254.169.254" in d["reason"]


# --------------------------------------------------------------------------------------------
# 8: an exception inside the addon denies
# --------------------------------------------------------------------------------------------


def test_addon_exception_denies_and_proxy_keeps_serving(env: Env) -> None:
    tag = uuid.uuid4().hex[:8]
    url = f"http://localhost:{env.api.port}/api/fault-{tag}"
    with env.client() as c:
        faulted = c.get(url, headers={"x-fiveplane-test-fault": "1"})
        d = assert_denied_by(faulted, "addon.error", "fail closed")
        assert "injected test fault" in d["reason"]
        assert [h for h in env.api.hits if tag in h.path] == []
        ok = c.get(url)
    assert ok.status_code == 200
    assert [h.path for h in env.api.hits if tag in h.path] == [f"/api/fault-{tag}"]
    assert "injected test fault" in env.proxy.output()
    assert_still_serving(env)


# --------------------------------------------------------------------------------------------
# 9: bad input
# --------------------------------------------------------------------------------------------

BAD_BODIES = {
    "invalid-json": (b'{"jsonrpc": "2.0", "id": 5, "method": ', "mediation.invalid_json",
                     "invalid json"),
    "no-method": ({"jsonrpc": "2.0", "id": 6, "params": {"name": "echo"}},
                  "mediation.jsonrpc_invalid", "without method"),
    "batch": ([{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "in a batch"}}}],
              "mediation.jsonrpc_batch", "batch"),
    "duplicate-key": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
        b'{"name":"echo","name":"delete_all","arguments":{}}}',
        "mediation.duplicate_key", "duplicate key"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
@pytest.mark.parametrize("style", ["legacy", "modern"])
def test_malformed_jsonrpc_refused(env: Env, case: str, style: str) -> None:
    body, rule, words = BAD_BODIES[case]
    srv = env.servers["sse"]
    before = len(srv.calls())
    with env.client() as c:
        if style == "legacy":
            sid = legacy_handshake(c, srv.url)
            r = post_jsonrpc(c, srv.url, body, session_id=sid, protocol_version="2025-11-25")
        else:
            r = post_jsonrpc(c, srv.url, body, headers={"MCP-Protocol-Version": "2026-07-28"})
    assert_denied_by(r, rule, words)
    assert len(srv.calls()) == before
    assert_still_serving(env)


BIG = 50 * 1024 * 1024
BIG_HEAD = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
BIG_TAIL = b'"arguments":{"text":"big"}}}'
MODERN_HEADERS = {"Content-Type": "application/json",
                  "Accept": "application/json, text/event-stream",
                  "MCP-Protocol-Version": "2026-07-28"}


def test_body_too_large_chunked(env: Env) -> None:
    """A 50 MB MCP message without a declared size is refused with a reason once read
    (a declared one is refused before reading: see the next test)."""
    srv = env.servers["sse"]
    filler = b" " * (1024 * 1024)

    def gen() -> Iterator[bytes]:
        yield BIG_HEAD
        for _ in range(BIG // len(filler)):
            yield filler
        yield BIG_TAIL

    content: Any = gen()
    before = len(srv.calls())
    start = time.monotonic()
    with env.client(timeout=30) as c:
        r = c.post(srv.url, content=content, headers=MODERN_HEADERS)
    assert time.monotonic() - start < 20
    assert_denied_by(r, "mediation.body_too_large", "exceeds", "limit")
    assert len(srv.calls()) == before
    assert_still_serving(env)


def _compress(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if coding == "br":
        return brotli.compress(data)
    return zstd.compress(data)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_compressed_bodies_judged_after_decoding(env: Env, coding: str) -> None:
    url = f"http://127.0.0.1:{env.rpc.port}/rpc"
    tag = f"{coding}-{uuid.uuid4().hex[:8]}"
    allowed = json.dumps({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"text": tag}}}).encode()
    denied = json.dumps({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
                         "params": {"name": "delete_all", "arguments": {"tag": tag}}}).encode()
    env.rpc.clear_hits()
    before = len(env.evidence())
    with env.client() as c:
        ok = post_jsonrpc(c, url, _compress(allowed, coding),
                          headers={"Content-Encoding": coding})
        no = post_jsonrpc(c, url, _compress(denied, coding), headers={"Content-Encoding": coding})
    assert ok.status_code == 200, ok.text
    (msg,) = parse_jsonrpc(ok)
    assert msg["id"] == 11
    assert tag in msg["result"]["content"][0]["text"]
    d = assert_denied_by(no, "no-bulk-delete", "bulk deletion")
    assert d["id"] == 12
    # the upstream got the allowed call exactly as sent (still compressed), and nothing else
    (hit,) = env.rpc.hits
    assert hit.headers["content-encoding"] == coding
    assert _decode(hit.body, coding) == allowed
    # judged on the decoded message: tool name and argument names are in the evidence
    decided = [(r["action"]["name"], r["action"]["argument_names"], r["decision"]["rule_ids"])
               for r in env.evidence()[before:]]
    assert decided == [("echo", ["text"], ["crm-read"]), ("delete_all", ["tag"],
                                                          ["no-bulk-delete"])]


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(4 * 1024 * 1024)
    out = [c.compress(b'{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"echo",'
                      b'"arguments":{"text":"')]
    out += [c.compress(zeros) for _ in range(50)]  # 200 MiB of zeros
    out.append(c.compress(b'"}}}'))
    out.append(c.flush())
    return b"".join(out)


def test_gzip_bomb_refused(env: Env, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 1024 * 1024
    env.rpc.clear_hits()
    start = time.monotonic()
    with env.client() as c:
        r = post_jsonrpc(c, f"http://127.0.0.1:{env.rpc.port}/rpc", gzip_bomb,
                         headers={"Content-Encoding": "gzip"})
    assert time.monotonic() - start < 5
    d = denial(r)
    assert d["rule_ids"][0] in ("mediation.decompression_bomb", "mediation.body_too_large"), d
    assert "exceeds" in d["reason"] and "limit" in d["reason"], d
    assert env.rpc.hits == []
    assert_still_serving(env)


def test_unicode_lookalike_tool_name(env: Env) -> None:
    srv = env.servers["sse"]
    name = "d\u0435lete_all"  # CYRILLIC SMALL LETTER IE as the "e"
    encoded = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    with env.client() as c:
        r = modern_call(c, srv.url, "tools/call", {"name": "echo", "arguments": {}},
                        rpc_id=21, headers={"Mcp-Name": encoded})
        # same request, but with the look-alike in the body (and the header agreeing)
        body, hdrs = modern_request("tools/call", {"name": name, "arguments": {}}, id=22)
        hdrs["Mcp-Name"] = encoded
        lookalike = post_jsonrpc(c, srv.url, body, headers=hdrs)
    assert_denied_by(r, "mediation.mcp_header_mismatch", "Mcp-Name")
    d = assert_denied_by(lookalike, "mediation.mcp_bad_name", "look-alike")
    assert d["id"] == 22
    assert tool_calls(srv, "delete_all") == []
    assert_still_serving(env)


def test_host_case_and_trailing_dot_normalized(env: Env) -> None:
    tag = uuid.uuid4().hex[:8]
    port = env.api.port
    ok = raw_request(env.proxy, f"http://LOCALHOST.:{port}/api/norm-{tag}", f"LOCALHOST.:{port}")
    mixed = raw_request(env.proxy, f"http://LocalHost:{port}/api/norm-{tag}-2",
                        f"LocalHost:{port}")
    admin = raw_request(env.proxy, f"http://LOCALHOST.:{port}/admin/norm-{tag}",
                        f"LOCALHOST.:{port}")
    assert ok.status == 200, ok.text
    assert ok.json()["path"] == f"/api/norm-{tag}"
    assert mixed.status == 200, mixed.text
    d = assert_denied_by(admin, "api-admin")
    assert env.record(d["decision_id"])["action"]["host"] == "localhost"
    assert sorted(h.route for h in env.api.hits if tag in h.path) == [
        f"/api/norm-{tag}", f"/api/norm-{tag}-2"]
    allowed = [r for r in env.evidence()
               if r.get("action", {}).get("path") in (f"/api/norm-{tag}", f"/api/norm-{tag}-2")]
    assert [r["action"]["host"] for r in allowed] == ["localhost", "localhost"]
    assert {tuple(r["decision"]["rule_ids"]) for r in allowed} == {("api-read",)}


UNDECLARED_RPC = {
    # case: (body, rule). A JSON-RPC message is recognized whatever the Content-Type, and
    # however its keys are spelled: every JSON parser reads "\u006asonrpc" as "jsonrpc",
    # and parsers that match keys case-insensitively (Go's encoding/json) read "JSONRPC".
    "plain": (b'{"jsonrpc":"2.0","id":51,"method":"tools/call",'
              b'"params":{"name":"delete_all","arguments":{}}}', "no-bulk-delete"),
    "escaped-key": (b'{"\\u006asonrpc":"2.0","id":52,"method":"tools/call",'
                    b'"params":{"name":"delete_all","arguments":{}}}', "no-bulk-delete"),
    "escaped-everything": (b'{"\\u006a\\u0073onrpc":"2.0","id":53,"\\u006dethod":"tools/call",'
                           b'"params":{"n\\u0061me":"delete_\\u0061ll","arguments":{}}}',
                           "no-bulk-delete"),
    "upper-case-key": (b'{"JSONRPC":"2.0","id":54,"method":"tools/call",'
                       b'"params":{"name":"delete_all","arguments":{}}}',
                       "mediation.jsonrpc_invalid"),
    "escaped-key-bad-utf8": (b'{"\\u006asonrpc":"2.0","id":55,"method":"tools/call",'
                             b'"params":{"name":"delete_all","arguments":{"x":"\xff"}}}',
                             "mediation.invalid_utf8"),
}


@pytest.mark.parametrize("case", list(UNDECLARED_RPC))
@pytest.mark.parametrize("ctype", ["application/json", "text/plain"])
def test_jsonrpc_to_undeclared_endpoint_is_governed(env: Env, case: str, ctype: str) -> None:
    """An MCP-style endpoint the policy does not declare, on a host where HTTP POSTs are
    allowed: a JSON-RPC tool call to it is still judged as an MCP call (and denied by the
    server-agnostic deny rule, or refused as malformed), however the message is spelled."""
    body, rule = UNDECLARED_RPC[case]
    url = f"http://localhost:{env.api.port}/api/rpc"
    before = len(env.api.hits_for("/api/rpc"))
    with env.client() as c:
        control = c.post(f"http://localhost:{env.api.port}/api/items", json={"a": 1})
        r = c.post(url, content=body, headers={"Content-Type": ctype})
    assert control.status_code == 200  # plain JSON POSTs pass: only the tool call is stopped
    assert env.api.hits_for("/api/rpc")[before:] == [], r.text
    d = denial(r)
    assert d["rule_ids"] == [rule], d


CASE_VARIANTS = {
    # parsers that match keys case-insensitively keep one of the two values
    "params-name": b'{"jsonrpc":"2.0","id":61,"method":"tools/call",'
                   b'"params":{"name":"echo","Name":"delete_all","arguments":{"text":"x"}}}',
    "argument": b'{"jsonrpc":"2.0","id":62,"method":"tools/call","params":{"name":"refund",'
                b'"arguments":{"customer_id":"c-1","amount":50,"Amount":900}}}',
    # a response to the proxy, a tools/call to a case-insensitive server
    "method-variant": b'{"jsonrpc":"2.0","id":63,"result":{},"METHOD":"tools/call",'
                      b'"params":{"name":"delete_all","arguments":{}}}',
    # KELVIN SIGN folds to "k", LONG S to "s"
    "unicode-fold": '{"jsonrpc":"2.0","id":64,"method":"tools/call","params":{"name":"echo",'
                    '"arguments":{"text":"a"},"argument\u017f":{"text":"b"}}}'.encode(),
}


@pytest.mark.parametrize("case", list(CASE_VARIANTS))
def test_case_variant_keys_refused(env: Env, case: str) -> None:
    srv = env.servers["sse"]
    before = len(srv.calls())
    with env.client() as c:
        r = post_jsonrpc(c, srv.url, CASE_VARIANTS[case],
                         headers={"MCP-Protocol-Version": "2026-07-28"})
    d = assert_denied_by(r, "mediation.duplicate_key", "case")
    assert d["id"] == json.loads(CASE_VARIANTS[case])["id"]
    assert len(srv.calls()) == before
    assert_still_serving(env)


@pytest.mark.parametrize("which", ["method", "name"])
def test_mcp_header_body_mismatch(env: Env, which: str) -> None:
    srv = env.servers["sse"]
    wrong = {"method": {"Mcp-Method": "tools/list"}, "name": {"Mcp-Name": "echo"}}[which]
    params = {"name": "delete_all" if which == "name" else "echo",
              "arguments": {"text": "mismatch"}}
    before = len(srv.calls())
    with env.client() as c:
        r = modern_call(c, srv.url, "tools/call", params, rpc_id=31, headers=wrong)
    d = assert_denied_by(r, "mediation.mcp_header_mismatch", f"Mcp-{which.title()}")
    assert d["id"] == 31
    assert len(srv.calls()) == before
    assert_still_serving(env)


# --------------------------------------------------------------------------------------------
# 10: evidence
# --------------------------------------------------------------------------------------------


def test_evidence_one_line_per_decision(env: Env) -> None:
    tag = uuid.uuid4().hex[:8]
    port = env.api.port
    before = len(env.evidence())
    with env.client() as c:
        ok = c.get(f"http://localhost:{port}/api/ev-{tag}")
        admin = c.get(f"http://localhost:{port}/admin/ev-{tag}")
        ip = c.get(f"http://127.0.0.1:{port}/api/ev-{tag}")
    assert ok.status_code == 200
    new = env.evidence()[before:]
    assert len(new) == 3, new
    assert len({r["decision_id"] for r in new}) == 3
    for r in new:
        assert r["decision"]["policy_version"] == env.policy_version
        assert r["decision"]["rule_ids"]
        assert r["action"]["path"] in (f"/api/ev-{tag}", f"/admin/ev-{tag}")
    by_rule = {r["decision"]["rule_ids"][0]: r for r in new}
    assert set(by_rule) == {"api-read", "api-admin", "no-direct-ip"}
    assert by_rule["api-read"]["outcome"] == "forwarded"
    assert by_rule["api-read"]["decision"]["verdict"] == "allow"
    for rule, resp in (("api-admin", admin), ("no-direct-ip", ip)):
        rec = by_rule[rule]
        assert rec["decision_id"] == resp.headers["x-fiveplane-decision"]
        assert rec["outcome"] == "denied"
        assert rec["decision"]["verdict"] == "deny"
        assert rec["decision"]["reason"] == resp.json()["reason"]


def test_evidence_for_denied_mcp_call(env: Env) -> None:
    srv = env.servers["json"]
    with env.client() as c:
        r = modern_call(c, srv.url, "tools/call",
                        {"name": "delete_all", "arguments": {"confirm": True}}, rpc_id=41)
    d = assert_denied_by(r, "no-bulk-delete")
    rec = env.record(d["decision_id"])
    assert rec["decision"]["rule_ids"] == ["no-bulk-delete"]
    assert rec["decision"]["policy_version"] == env.policy_version
    assert rec["outcome"] == "denied"
    assert rec["action"]["server"] == "crm-json"
    assert rec["action"]["name"] == "delete_all"
    assert rec["action"]["argument_names"] == ["confirm"]
    assert "arguments" not in rec["action"]  # values are digested, never logged raw


# --------------------------------------------------------------------------------------------
# 12: SSE is streamed, not buffered
# --------------------------------------------------------------------------------------------


def test_sse_not_buffered(env: Env) -> None:
    env.api.set_sse("/events", n=5, delay=0.3)
    stamps: list[tuple[float, dict[str, Any]]] = []
    with env.client(timeout=10) as c:
        start = time.monotonic()
        with c.stream("GET", f"http://localhost:{env.api.port}/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data:"):
                    stamps.append((time.monotonic() - start, json.loads(line[5:])))
        total = time.monotonic() - start
    assert [e["seq"] for _, e in stamps] == [0, 1, 2, 3, 4]
    assert total >= 1.1  # the upstream takes 4 x 0.3 s
    first = stamps[0][0]
    assert first < 0.6, f"first event after {first:.2f}s of {total:.2f}s: buffered"
    assert stamps[-1][0] - first >= 1.0


# --------------------------------------------------------------------------------------------
# 11: hot reload (its own proxy and policy file)
# --------------------------------------------------------------------------------------------

RELOAD_POLICY = """\
version: 1
name: reload-e2e
network:
  allow_internal:
    - {{cidr: 127.0.0.1/32, ports: [{port}]}}
mcp_servers:
  crm: {{url: "http://127.0.0.1:{port}/mcp"}}
rules:
{rules}"""
ECHO_RULE = """\
  - id: echo-ok
    match: {server: crm, tool: echo}
    effect: allow
"""
BROKEN_RULE = """\
  - id: echo-ok
    match: {server: crm, tool: echo}
    effect: perhaps
"""


def _write_atomic(path: Path, text: str) -> str:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_hot_reload(env: Env, tmp_path: Path, proxy_certs: Path) -> None:
    srv = env.servers["sse"]
    policy = tmp_path / "reload.yaml"
    v1 = _write_atomic(policy, RELOAD_POLICY.format(port=srv.port, rules=ECHO_RULE))
    launcher = ProcessLauncher(tmp_path / "logs", "reload")
    try:
        proxy = ProxyFactory(launcher, tmp_path, proxy_certs).start_fiveplane(
            policy, state_dir=tmp_path / "state")
        state = tmp_path / "state"

        def call(n: int) -> tuple[Any, dict[str, Any]]:
            with http_client(proxy.url) as c:
                r = modern_call(c, srv.url, "tools/call",
                                {"name": "echo", "arguments": {"text": f"reload-{n}"}},
                                rpc_id=n)
            last = read_evidence(state)[-1]
            return r, last

        r, rec = call(1)
        assert parse_jsonrpc(r)[0]["result"]["content"][0]["text"] == "reload-1"
        assert rec["decision"]["policy_version"] == v1
        assert rec["decision"]["rule_ids"] == ["echo-ok"]

        # a broken policy: logged, and the last good one stays in force
        _write_atomic(policy, RELOAD_POLICY.format(port=srv.port, rules=BROKEN_RULE))
        deadline = time.monotonic() + 5
        while "reload failed" not in proxy.output():
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.1)
        assert "perhaps" in proxy.output()
        r, rec = call(2)
        assert parse_jsonrpc(r)[0]["result"]["content"][0]["text"] == "reload-2"
        assert rec["decision"]["policy_version"] == v1
        assert proxy.proc.poll() is None

        # a good policy without the allow rule: the same call is denied within ~3 s
        v2 = _write_atomic(policy, RELOAD_POLICY.format(port=srv.port, rules="  []\n"))
        changed_at = time.monotonic()
        n = 3
        while True:
            r, rec = call(n)
            if rec["decision"]["policy_version"] == v2:
                break
            assert time.monotonic() - changed_at < 3.5, "policy not reloaded within ~3 s"
            n += 1
            time.sleep(0.1)
        assert_denied_by(r, "defaults.effect", "no rule matched")
        assert rec["outcome"] == "denied"
        assert f"reload-{n}" not in [a["text"] for a in tool_calls(srv, "echo")]
    finally:
        launcher.stop_all()


# --------------------------------------------------------------------------------------------
# 9 (continued): an oversized body is refused before it is uploaded
# --------------------------------------------------------------------------------------------


def test_declared_oversized_body_refused_before_upload(env: Env) -> None:
    """A body whose Content-Length is over the limit is refused without reading it: the
    connection closes after 1 MB of a declared 50 MB (mitmproxy cannot answer before the
    body has arrived, so the reason goes to the evidence log), and nothing reaches the
    server."""
    srv = env.servers["sse"]
    before = len(srv.calls())
    started = time.monotonic()
    lines = [f"POST {srv.url} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}",
             f"Content-Length: {BIG}"] + [f"{k}: {v}" for k, v in MODERN_HEADERS.items()]
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + BIG_HEAD)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except OSError:
            pass  # a reset counts as closed too
    assert received == b"", received[:200]
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + 5  # the refusal is recorded without waiting for fsync
    while True:
        records = [r for r in env.evidence() if r["decision"]["rule_ids"] == [
            "mediation.body_too_large"]]
        if any(f"{BIG} bytes" in r["decision"]["reason"] for r in records):
            break
        assert time.monotonic() < deadline, records[-3:]
        time.sleep(0.1)
    assert len(srv.calls()) == before
    assert_still_serving(env)


# --------------------------------------------------------------------------------------------
# evidence sufficiency: after everything above, every record verifies and re-decides
# --------------------------------------------------------------------------------------------


def test_zz_every_recorded_decision_re_adjudicates(env: Env) -> None:
    records = env.evidence()
    assert len(records) >= 3
    out = assert_reconstructable(env.evidence_path)
    assert "0 mismatch" in out, out[-2000:]
