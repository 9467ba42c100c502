"""Record real traffic through the real proxy, replay it offline, and get the same decisions.

One module-scoped recording: ``mitmdump -s addons/fiveplane_gate.py -s
addons/fiveplane_recorder.py`` between real clients and real upstreams — MCP in both
protocol styles (the SDK client in ``legacy`` and ``auto`` modes, SSE and JSON response
styles), a server that logs to the client on the call's SSE stream (a denied server
notification), plain HTTP, HTTPS through a CONNECT tunnel, a plain SSE stream, and
allowed, denied and refused actions (a JSON-RPC batch, a look-alike tool name, an
oversized body, a CONNECT to an internal port). Then:

* the capture replayed offline with the same policy yields, action by action and in
  order, the decisions of the live evidence log (the audit chain under
  ``<state>/audit``: kind, verdict and rule ids);
* a HAR file written from httpx traffic (by this test, to the HAR 1.2 spec) replays to
  the live decisions of that traffic;
* a what-if with a policy that tightens one rule lists exactly the affected actions;
* the capture holds no secret the clients sent; a truncated copy still replays.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from clients import http_client, legacy_handshake, mcp_client, parse_jsonrpc, post_jsonrpc
from harness import (
    MCP_SERVER_READY,
    REPO_ROOT,
    McpServerFactory,
    McpServerHandle,
    ProcessLauncher,
    ProxyFactory,
    ProxyHandle,
    child_env,
    free_port,
)
from mcp import MCPError
from servers.http_upstream import TestCA, Upstream

from proxy.policy import compile_file
from proxy.replay import CapturedFlow, CaptureNote, Row, read_capture, replay, what_if
from proxy.replay.engine import effective

pytestmark = pytest.mark.e2e

GATE = REPO_ROOT / "addons" / "fiveplane_gate.py"
RECORDER = REPO_ROOT / "addons" / "fiveplane_recorder.py"
SECRET_TOKEN = "ghp_" + "R3c0rd3dS3cr3t" * 3  # a GitHub-token shape (42 characters)
BEARER = "Bearer sk-live-" + "x7" * 12

POLICY = """\
version: 1
name: replay-e2e
defaults:
  effect: deny
  max_body_bytes: 65536
network:
  allow:
    - {{id: anywhere, host: "*"}}
  allow_internal:
    - {{id: upstreams-v4, cidr: 127.0.0.1/32, ports: [{internal}]}}
    - {{id: upstreams-v6, cidr: "::1/128", ports: [{internal}]}}
mcp_servers:
  crm: {{url: "http://127.0.0.1:{crm}/mcp"}}
  crm-json: {{url: "http://127.0.0.1:{crm_json}/mcp"}}
  chatty: {{url: "http://127.0.0.1:{chatty}/mcp"}}
rules:
  - id: crm-read
    match: {{server: [crm, crm-json], tool: [get_customer, echo, list_tickets]}}
    effect: allow
  - id: refund-small
    match: {{server: [crm, crm-json], tool: refund, args: {{amount: {{le: 100}}}}}}
    effect: allow
  - id: refund-large
    match: {{tool: refund, args: {{amount: {{gt: 500}}}}}}
    effect: deny
  - id: no-bulk-delete
    match: {{tool: "delete_*"}}
    effect: deny
  - id: chatty-tools
    match: {{server: chatty, tool: chatty}}
    effect: allow
  - id: no-server-logs
    match: {{server: chatty, mcp_method: notifications/message}}
    effect: deny
  - id: api-read
    match: {{host: localhost, port: {api}, method: GET, path: ["/api/**", "/events"]}}
    effect: allow
  - id: api-write
    match: {{host: localhost, port: {api}, method: POST, path: "/api/**"}}
    effect: allow
  - id: api-admin
    match: {{host: localhost, path: "/admin/**"}}
    effect: deny
  - id: secure-read
    match: {{host: localhost, scheme: https, port: {secure}, method: GET, path: "/secure/**"}}
    effect: allow
"""

# A tool that logs to the client (notifications/message on the call's SSE stream).
CHATTY_SERVER = Path(__file__).parent / "servers" / "chatty_server.py"


@dataclass
class Recording:
    tmp: Path
    policy_path: Path
    policy_text: str
    capture: Path
    har: Path
    live: list[dict[str, Any]]          # the whole evidence log
    har_live: list[dict[str, Any]]      # evidence of the HAR traffic only
    api: Upstream
    crm_json: McpServerHandle
    echo_calls: int


# --------------------------------------------------------------------------------------------
# traffic
# --------------------------------------------------------------------------------------------


async def _mcp_session(url: str, proxy: ProxyHandle, mode: str, refunds: bool) -> None:
    async with mcp_client(url, proxy.url, proxy.ca_file, mode=mode) as c:
        await c.list_tools()
        await c.call_tool("echo", {"text": f"hello {mode}"})
        await c.call_tool("get_customer", {"customer_id": "c-1"})
        with pytest.raises(MCPError):
            await c.call_tool("delete_all", {"confirm": True})
        if refunds:
            await c.call_tool("refund", {"customer_id": "c-1", "amount": 50})
            with pytest.raises(MCPError):
                await c.call_tool("refund", {"customer_id": "c-1", "amount": 900})
        await c.call_tool("echo", {"text": f"again {mode}"})


async def _chatty(url: str, proxy: ProxyHandle) -> list[Any]:
    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async with mcp_client(url, proxy.url, proxy.ca_file, mode="legacy",
                          logging_callback=on_log) as c:
        res = await c.call_tool("chatty", {"text": "replay"})
        assert res.content[0].text == "done replay"
    return logs


def _http_traffic(proxy: ProxyHandle, api: Upstream, secure: Upstream, canary: int) -> None:
    base = f"http://localhost:{api.port}"
    with http_client(proxy.url, proxy.ca_file) as c:
        assert c.get(f"{base}/api/items", headers={"Authorization": BEARER}).status_code == 200
        r = c.post(f"{base}/api/items", json={"name": "widget", "token": SECRET_TOKEN},
                   headers={"Cookie": "session=s3cr3t-cookie"})
        assert r.status_code == 200
        assert c.get(f"{base}/admin/users").status_code == 403
        assert c.get(f"{base}/other").status_code == 403
        with c.stream("GET", f"{base}/events") as r:  # a plain SSE stream (not MCP)
            assert r.status_code == 200
            assert b"event 2" in r.read()
        sbase = f"https://localhost:{secure.port}"
        assert c.get(f"{sbase}/secure/data").status_code == 200
        assert c.get(f"{sbase}/nope").status_code == 403
    with http_client(proxy.url, proxy.ca_file) as c, pytest.raises(httpx.ProxyError):
        c.get(f"https://127.0.0.1:{canary}/")  # CONNECT to an internal port: refused
    with http_client(proxy.url, proxy.ca_file) as c, pytest.raises(httpx.HTTPError):
        c.post(f"{base}/api/upload", content=b"x" * 100_000)  # over max_body_bytes: killed


def _refusals(proxy: ProxyHandle, crm_json: McpServerHandle) -> None:
    with http_client(proxy.url, proxy.ca_file) as c:
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]
        r = post_jsonrpc(c, crm_json.url, batch)
        assert r.status_code in (200, 403), r.text
        bad = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "get cust\u043emer", "arguments": {}}}
        (msg,) = parse_jsonrpc(post_jsonrpc(c, crm_json.url, bad))
        assert msg["error"]["data"]["rule_ids"] == ["mediation.mcp_bad_name"]


# --------------------------------------------------------------------------------------------
# a HAR 1.2 writer for httpx traffic (what a tool other than mitmproxy would write)
# --------------------------------------------------------------------------------------------


class HarRecorder:
    """httpx event hooks that keep each exchange, and a HAR 1.2 document at the end."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def hooks(self) -> dict[str, list[Any]]:
        return {"request": [self._request], "response": [self._response]}

    def _request(self, request: httpx.Request) -> None:
        request.extensions["har_started"] = time.time()

    def _response(self, response: httpx.Response) -> None:
        response.read()
        req = response.request
        started = req.extensions["har_started"]
        body = req.content
        entry: dict[str, Any] = {
            "startedDateTime": datetime.fromtimestamp(started, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "time": round((time.time() - started) * 1000, 3),
            "request": {
                "method": req.method, "url": str(req.url), "httpVersion": "HTTP/1.1",
                "cookies": [], "headersSize": -1, "bodySize": len(body),
                "headers": [{"name": k, "value": v} for k, v in req.headers.multi_items()],
                "queryString": [{"name": k, "value": v}
                                for k, v in req.url.params.multi_items()],
            },
            "response": {
                "status": response.status_code, "statusText": response.reason_phrase,
                "httpVersion": response.http_version, "cookies": [], "redirectURL": "",
                "headersSize": -1, "bodySize": len(response.content),
                "headers": [{"name": k, "value": v}
                            for k, v in response.headers.multi_items()],
                "content": {"size": len(response.content),
                            "mimeType": response.headers.get("content-type", ""),
                            "text": response.text},
            },
            "cache": {},
            "timings": {"send": 0, "wait": 0, "receive": 0},
        }
        if body:
            entry["request"]["postData"] = {
                "mimeType": req.headers.get("content-type", ""), "text": body.decode()}
        self.entries.append(entry)

    def write(self, path: Path) -> None:
        doc = {"log": {"version": "1.2", "creator": {"name": "replay-e2e-httpx",
                                                     "version": "1"},
                       "entries": self.entries}}
        path.write_text(json.dumps(doc, indent=1))


def _har_traffic(proxy: ProxyHandle, api: Upstream, secure: Upstream,
                 crm_json: McpServerHandle, har: HarRecorder) -> None:
    base = f"http://localhost:{api.port}"
    with http_client(proxy.url, proxy.ca_file, event_hooks=har.hooks()) as c:
        c.get(f"{base}/api/items?page=2")
        c.get(f"{base}/admin/settings")
        c.post(f"{base}/api/tickets", json={"subject": "from a HAR"})
        c.delete(f"{base}/api/tickets/1")
        c.get(f"https://localhost:{secure.port}/secure/report")
        sid = legacy_handshake(c, crm_json.url)
        for rpc_id, name, args in ((10, "echo", {"text": "har"}),
                                   (11, "delete_all", {"confirm": True}),
                                   (12, "refund", {"customer_id": "c-9", "amount": 700})):
            post_jsonrpc(c, crm_json.url, {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                                           "params": {"name": name, "arguments": args}},
                         session_id=sid, protocol_version="2025-11-25")
        post_jsonrpc(c, crm_json.url, {"jsonrpc": "2.0", "id": 13, "method": "tools/list"},
                     session_id=sid, protocol_version="2025-11-25")


# --------------------------------------------------------------------------------------------
# the recording
# --------------------------------------------------------------------------------------------


def _evidence(state: Path) -> list[dict[str, Any]]:
    """The decisions in the live evidence log (``<state>/audit/audit-*.jsonl``, one hash
    chain per proxy process), in order, as ``{decision_id, decision, action}``."""
    out = []
    for path in sorted((state / "audit").glob("audit-*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("type") == "record":
                body = entry["body"]
                if "mcp" in (body.get("extra") or {}):
                    continue  # an MCP guard note (first pins, screening), not a flow's decision
                out.append({"decision_id": body["id"], "decision": effective(body),
                            "action": body.get("action") or {}})
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA,
              proxy_certs: Path) -> Iterator[Recording]:
    tmp = tmp_path_factory.mktemp("replay")
    launcher = ProcessLauncher(tmp / "logs", "replay")
    api, secure = Upstream(), Upstream(tls=True, ca=test_ca)
    try:
        api.start()
        secure.start()
        api.set_sse("/events", n=3, delay=0.05)
        factory = McpServerFactory(launcher, tmp)
        crm = factory.start(name="crm")
        crm_json = factory.start(json_response=True, name="crm-json")
        chatty_py = CHATTY_SERVER
        mp = launcher.launch([sys.executable, str(chatty_py)], MCP_SERVER_READY)
        chatty_url = f"http://127.0.0.1:{mp.port}/mcp"
        internal = ", ".join(str(p) for p in (crm.port, crm_json.port, mp.port, api.port,
                                              secure.port))
        text = POLICY.format(internal=internal, crm=crm.port, crm_json=crm_json.port,
                             chatty=mp.port, api=api.port, secure=secure.port)
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(text)
        state, capture = tmp / "state", tmp / "capture.flows"
        proxy = ProxyFactory(launcher, tmp, proxy_certs).start_mitmdump(
            upstream_ca=test_ca.ca_pem, scripts=[GATE, RECORDER],
            extra=["--set", f"fiveplane_policy={policy_path}",
                   "--set", f"fiveplane_state_dir={state}",
                   "--set", f"fiveplane_record={capture}",
                   "--set", "connection_strategy=lazy"])

        anyio.run(_mcp_session, crm.url, proxy, "legacy", True)
        anyio.run(_mcp_session, crm_json.url, proxy, "auto", False)
        anyio.run(_mcp_session, crm.url, proxy, "auto", True)
        assert anyio.run(_chatty, chatty_url, proxy) == []  # the log was withheld
        _http_traffic(proxy, api, secure, free_port())
        _refusals(proxy, crm_json)
        before_har = len(_evidence(state))
        har = HarRecorder()
        _har_traffic(proxy, api, secure, crm_json, har)
        har.write(tmp / "traffic.har")
        time.sleep(0.3)  # let the last flows end
        proxy.stop()
        live = _evidence(state)
        echo_calls = sum(1 for r in live if r.get("action", {}).get("name") == "echo")
        yield Recording(tmp, policy_path, text, capture, tmp / "traffic.har", live,
                        live[before_har:], api, crm_json, echo_calls)
    finally:
        launcher.stop_all()
        api.stop()
        secure.stop()


def _decisions(records: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r.get("action", {}).get("kind", "refused"), r["decision"]["verdict"],
             tuple(r["decision"]["rule_ids"])) for r in records]


def _row_decisions(rows: list[Row]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r.kind, r.verdict, r.rule_ids) for r in rows]


def _replayed(path: Path, policy: Path) -> tuple[list[Row], list[CaptureNote]]:
    rows: list[Row] = []
    notes: list[CaptureNote] = []
    for item in replay(read_capture(path), compile_file(policy)):
        (notes if isinstance(item, CaptureNote) else rows).append(item)
    return rows, notes


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def test_capture_covers_the_traffic(recording: Recording) -> None:
    flows = [f for f in read_capture(recording.capture) if isinstance(f, CapturedFlow)]
    kinds = {f.kind for f in flows}
    assert kinds == {"http", "connect"}
    methods = {json.loads(f.body).get("method") for f in flows
               if f.body.startswith(b"{") and b"jsonrpc" in f.body}
    assert {"initialize", "server/discover", "tools/list", "tools/call"} <= methods
    versions = {f.header("mcp-protocol-version") for f in flows}
    assert {"2025-11-25", "2026-07-28"} <= versions  # both protocol styles
    assert any(f.method == "GET" and f.path == "/events" for f in flows)  # plain SSE
    assert any(f.scheme == "https" for f in flows)
    # every live decision belongs to a recorded flow
    ids = set()
    for f in flows:
        meta = f.recorded or {}
        ids.update(v for k, v in meta.items() if k in ("decision_id", "connect", "cut"))
    live_ids = {r["decision_id"] for r in recording.live}
    request_ids = {r["decision_id"] for r in recording.live
                   if r.get("action", {}).get("kind") not in ("mcp_server", "response")}
    assert request_ids <= ids <= live_ids
    # the withheld log message is in the capture as the upstream sent it
    chatty = [f for f in flows if f.upstream and b"notifications/message" in f.upstream.body]
    assert len(chatty) == 1
    assert b"notifications/message" not in chatty[0].response.body


def test_replay_equals_live_for_every_action(recording: Recording) -> None:
    rows, notes = _replayed(recording.capture, recording.policy_path)
    assert [n for n in notes if n.error] == []
    # in order, action by action: kind, verdict and rule ids
    assert _row_decisions(rows) == _decisions(recording.live)
    # and each flow's request decision is the one the live proxy recorded for that flow
    live = {r["decision_id"]: r for r in recording.live}
    checked = 0
    for f in read_capture(recording.capture):
        assert isinstance(f, CapturedFlow)
        meta = f.recorded or {}
        decision_id = meta.get("decision_id") or meta.get("connect")
        row = next(r for r in rows if r.key == (f.index, 0))
        want = live[decision_id]["decision"]
        assert (row.verdict, list(row.rule_ids)) == (want["verdict"], want["rule_ids"]), f.url
        checked += 1
    assert checked >= 40
    by_rule = {rule for r in rows for rule in r.rule_ids}
    assert {"crm-read", "refund-small", "refund-large", "no-bulk-delete", "mcp.lifecycle",
            "no-server-logs", "api-read", "api-write", "api-admin", "secure-read",
            "network.connect", "network.internal", "defaults.effect",
            "mediation.jsonrpc_batch", "mediation.mcp_bad_name",
            "mediation.body_too_large"} <= by_rule


def test_capture_is_redacted_and_the_cli_agrees(recording: Recording) -> None:
    data = recording.capture.read_bytes()
    assert SECRET_TOKEN.encode() not in data
    assert b"sk-live-" not in data
    assert b"s3cr3t-cookie" not in data
    assert b"[REDACTED:github_token]" in data
    hits = {h.path: h for h in recording.api.hits}  # the upstream got the real values
    assert SECRET_TOKEN.encode() in hits["/api/items"].body
    # the command line, as a user runs it: JSON rows equal the live decisions
    out = subprocess.run(
        [sys.executable, "-m", "proxy.replay", "replay", str(recording.capture),
         "--policy", str(recording.policy_path), "--format", "json"],
        capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    got = [(r["kind"], r["verdict"], tuple(r["rule_ids"])) for r in doc["rows"]]
    assert got == _decisions(recording.live)
    assert doc["summary"]["by_rule"]["no-bulk-delete"] >= 3


def test_what_if_tightening_one_rule_lists_exactly_the_affected_actions(
        recording: Recording) -> None:
    old = recording.policy_path
    new = recording.tmp / "tightened.yaml"
    tightened = recording.policy_text.replace(
        "tool: [get_customer, echo, list_tickets]", "tool: [get_customer, list_tickets]")
    assert tightened != recording.policy_text
    new.write_text(tightened)
    changes = [c for c in what_if(read_capture(recording.capture), compile_file(new),
                                  compile_file(old)) if not isinstance(c, CaptureNote)]
    assert recording.echo_calls >= 6
    assert len(changes) == recording.echo_calls
    for c in changes:
        assert c.old is not None and c.new is not None
        assert (c.old.verdict, c.old.rule_ids) == ("allow", ("crm-read",))
        assert (c.new.verdict, c.new.rule_ids) == ("deny", ("defaults.effect",))
        assert (c.new.mcp_method, c.new.name) == ("tools/call", "echo")
    out = subprocess.run(
        [sys.executable, "-m", "proxy.replay", "replay", str(recording.capture),
         "--policy", str(new), "--against", str(old)],
        capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{recording.echo_calls} actions change" in out.stdout
    assert f"crm-read → defaults.effect  ({recording.echo_calls})" in out.stdout
    assert "tools/call echo" in out.stdout
    assert "get_customer" not in out.stdout


def test_har_from_httpx_replays_to_the_live_decisions(recording: Recording) -> None:
    doc = json.loads(recording.har.read_text())
    assert doc["log"]["version"] == "1.2" and len(doc["log"]["entries"]) == 11
    rows, notes = _replayed(recording.har, recording.policy_path)
    assert notes == []
    # a HAR has no CONNECT entries: the tunnel's own decision is not in it
    live = [r for r in recording.har_live if r.get("action", {}).get("kind") != "connect"]
    assert _row_decisions(rows) == _decisions(live)
    assert {"api-read", "api-admin", "api-write", "secure-read", "crm-read", "no-bulk-delete",
            "refund-large", "mcp.lifecycle", "defaults.effect"} <= {
        rule for r in rows for rule in r.rule_ids}


def test_truncated_capture_replays_the_complete_flows(recording: Recording) -> None:
    data = recording.capture.read_bytes()
    cut = recording.tmp / "truncated.flows"
    cut.write_bytes(data[: len(data) - 200])
    full, _ = _replayed(recording.capture, recording.policy_path)
    rows, notes = _replayed(cut, recording.policy_path)
    assert len(notes) == 1 and notes[0].error
    assert "truncated" in notes[0].message
    last = max(r.flow for r in full)
    assert f"flow {last} at byte" in notes[0].where
    assert _row_decisions(rows) == _row_decisions([r for r in full if r.flow != last])
    copy = recording.tmp / "copy.flows"  # the unchanged file still reads cleanly
    shutil.copy(recording.capture, copy)
    assert all(not isinstance(i, CaptureNote) for i in read_capture(copy))


def test_live_replay_resends_the_capture(recording: Recording, proxy_process: Any,
                                         test_ca: TestCA) -> None:
    """--live: the HAR's requests resent through a fresh proxy (upstreams still up)."""
    proxy = proxy_process.start_mitmdump(
        upstream_ca=test_ca.ca_pem, scripts=[GATE],
        extra=["--set", f"fiveplane_policy={recording.policy_path}",
               "--set", f"fiveplane_state_dir={recording.tmp / 'state-live'}"])
    out = subprocess.run(
        [sys.executable, "-m", "proxy.replay", "replay", str(recording.har),
         "--live", proxy.url, "--ca", str(proxy.ca_file), "--format", "json"],
        capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["sent"] == 11 and summary["errors"] == 0
    assert summary["by_status"]["403"] == 2        # /admin and DELETE
    assert summary["requests_per_second"] > 0
    relive = _evidence(recording.tmp / "state-live")
    # the MCP session was re-established: the resent calls got real decisions
    assert [r["decision"]["rule_ids"] for r in relive
            if r.get("action", {}).get("name") == "delete_all"] == [["no-bulk-delete"]]
