"""The recorder addon next to the real gate (mitmproxy's test context, no sockets): what it
writes, what it redacts, that the live flow is never touched, and that the file replays to
the gate's own decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addons.fiveplane_gate import FiveplaneGate
from addons.fiveplane_recorder import FiveplaneRecorder
from proxy.policy import compile_file
from proxy.replay import CapturedFlow, Row, read_capture, replay

POLICY = """\
version: 1
name: recorder
network: {allow: [{host: "*"}], allow_internal: [{cidr: 127.0.0.1/32}]}
mcp_servers: {crm: {url: "http://127.0.0.1:8000/mcp"}}
rules:
  - {id: read, match: {server: crm, tool: [echo]}, effect: allow}
  - {id: no-logs, match: {server: crm, mcp_method: notifications/message}, effect: deny}
  - {id: api, match: {host: 127.0.0.1, method: [GET, POST], path: "/api/**"}, effect: allow}
"""
SECRET = "ghp_" + "Z" * 36


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Rig:
    def __init__(self, tctx: Any, gate: FiveplaneGate, rec: FiveplaneRecorder,
                 capture: Path, policy: Path) -> None:
        self.tctx, self.gate, self.rec, self.capture, self.policy = (
            tctx, gate, rec, capture, policy)

    async def exchange(self, flow: http.HTTPFlow, upstream: http.Response | None = None,
                       chunks: list[bytes] | None = None) -> list[bytes]:
        """The hook order of a live flow: tap, gate, recorder at each stop point."""
        self.rec.tap.request(flow)
        await self.gate.requestheaders(flow)
        await self.gate.request(flow)
        await self.rec.request(flow)
        if flow.response is None:
            assert upstream is not None
            flow.response = upstream
        await self.gate.responseheaders(flow)
        self.rec.responseheaders(flow)
        sent: list[bytes] = []
        if chunks is not None:
            assert callable(flow.response.stream)
            for chunk in [*chunks, b""]:
                sent += flow.response.stream(chunk)
            flow.response.content = b""  # streamed: mitmproxy keeps no body
        self.rec.tap.response(flow)
        await self.gate.response(flow)
        self.rec.response(flow)
        return sent

    def written(self) -> list[CapturedFlow]:
        return [f for f in read_capture(self.capture) if isinstance(f, CapturedFlow)]

    def replayed(self) -> list[Row]:
        return [r for r in replay(read_capture(self.capture), compile_file(self.policy))
                if isinstance(r, Row)]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    capture = tmp_path / "capture.flows"
    gate, rec = FiveplaneGate(), FiveplaneRecorder()
    with taddons.context(gate, rec) as tctx:
        tctx.configure(gate, fiveplane_policy=str(policy),
                       fiveplane_state_dir=str(tmp_path / "state"))
        tctx.configure(rec, fiveplane_record=str(capture))
        rec.running()
        yield Rig(tctx, gate, rec, capture, policy)
        rec.done()
        gate.done()


def request(method: str = "GET", path: str = "/api/items", body: bytes = b"",
            headers: dict[str, str] | None = None) -> http.HTTPFlow:
    hdrs = http.Headers(**{k.replace("-", "_"): v for k, v in (headers or {}).items()})
    req = tutils.treq(method=method.encode(), host="127.0.0.1", port=8000, path=path.encode(),
                      headers=hdrs, content=body)
    return tflow.tflow(req=req)


def rpc(msg: dict[str, Any], **headers: str) -> http.HTTPFlow:
    return request("POST", "/mcp", json.dumps(msg).encode(),
                   {"content-type": "application/json", **headers})


def ok(body: bytes, ctype: str = "application/json") -> http.Response:
    return tutils.tresp(headers=http.Headers(content_type=ctype), content=body)


def test_the_tap_runs_before_everything(rig: Rig) -> None:
    assert rig.tctx.master.addons.chain[0] is rig.rec.tap
    rig.rec.running()  # idempotent
    assert sum(a is rig.rec.tap for a in rig.tctx.master.addons.chain) == 1


@pytest.mark.anyio
async def test_secrets_are_redacted_in_the_copy_only(rig: Rig) -> None:
    flow = request("POST", f"/api/items?token={SECRET}", json.dumps({"key": SECRET}).encode(),
                   {"authorization": "Bearer abc.def", "cookie": "s=1",
                    "content-type": "application/json"})
    await rig.exchange(flow, ok(b'{"set": "' + SECRET.encode() + b'"}'))
    (w,) = rig.written()
    raw = rig.capture.read_bytes()
    assert SECRET.encode() not in raw and b"abc.def" not in raw
    assert w.header("authorization") == "Bearer [REDACTED]" and w.header("cookie") == "[REDACTED]"
    assert json.loads(w.body) == {"key": "[REDACTED:github_token]"}
    assert w.path == "/api/items?token=[REDACTED:github_token]"
    assert w.response is not None and b"[REDACTED:github_token]" in w.response.body
    assert "secrets were redacted" in w.notes[0]
    # the live flow is exactly what was forwarded: nothing redacted there
    assert flow.request.headers["authorization"] == "Bearer abc.def"
    assert SECRET.encode() in flow.request.content and SECRET in flow.request.path
    assert w.recorded is not None and w.recorded["verdict"] == "allow"
    assert w.answered_by_proxy is False and w.upstream is None


@pytest.mark.anyio
async def test_secrets_kept_on_request(rig: Rig) -> None:
    rig.tctx.options.update(fiveplane_record_secrets=True)
    await rig.exchange(request(headers={"authorization": "Bearer abc.def"}), ok(b"{}"))
    (w,) = rig.written()
    assert w.header("authorization") == "Bearer abc.def" and w.notes == []


@pytest.mark.anyio
async def test_refused_and_filtered_flows_keep_what_the_upstream_sent(rig: Rig) -> None:
    denied = request("DELETE")
    await rig.exchange(denied)
    schema = {"type": "object"}
    tools = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "echo", "inputSchema": schema}, {"name": "delete_all", "inputSchema": schema}]}}
    listed = rpc({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    await rig.exchange(listed, ok(json.dumps(tools).encode()))
    one, two = rig.written()
    assert one.answered_by_proxy is True and one.upstream_response() is None
    assert one.response is not None and one.response.status == 403
    assert two.response is not None and b"delete_all" not in two.response.body
    assert two.upstream is not None and json.loads(two.upstream.body) == tools
    assert two.header("accept-encoding") == ""  # as the client sent it, not as forwarded
    assert listed.request.headers["accept-encoding"] == "identity"


@pytest.mark.anyio
async def test_streams_are_recorded_as_sent_and_as_received(rig: Rig) -> None:
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}}
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
    events = [b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n"
              for m in (log, result)]
    stream = b"".join(events)
    flow = rpc({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "hi"}}})
    sent = await rig.exchange(flow, ok(b"", "text/event-stream"),
                              chunks=[stream[:30], stream[30:]])
    assert b"notifications/message" not in b"".join(sent)  # the gate withheld it
    (w,) = rig.written()
    assert w.response is not None and w.response.body == b"".join(sent)
    assert w.upstream is not None and w.upstream.body == stream
    got = rig.replayed()
    assert [(r.flow, r.kind, r.verdict, r.rule_ids) for r in got] == [
        (1, "mcp", "allow", ("read",)), (1, "mcp_server", "deny", ("no-logs",))]
    rig.gate.gw().close()  # flush the audit chain
    evidence = [json.loads(line)["body"]
                for path in (rig.policy.parent / "state" / "audit").glob("audit-*.jsonl")
                for line in path.read_text().splitlines() if '"type":"record"' in line]
    assert [(e["decision"]["verdict"], e["decision"]["rule_ids"]) for e in evidence] == [
        (r.verdict, list(r.rule_ids)) for r in got]


@pytest.mark.anyio
async def test_connect_and_unfinished_flows(rig: Rig) -> None:
    connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="127.0.0.1", port=8443,
                                          path=b"", content=b""))
    await rig.gate.http_connect(connect)
    rig.rec.http_connected(connect)
    rig.rec.http_connect_error(connect)  # written once, whichever hooks fire
    open_flow = request()
    rig.rec.tap.request(open_flow)
    await rig.gate.request(open_flow)
    await rig.rec.request(open_flow)
    rig.rec.done()
    one, two = rig.written()
    assert one.kind == "connect" and one.recorded is not None and "connect" in one.recorded
    assert two.kind == "http" and "had not finished" in two.notes[0]
    assert [r.rule_ids for r in rig.replayed()] == [("network.connect",), ("api",)]
    assert rig.tctx.master.addons.chain[0] is not rig.rec.tap  # done() took the tap out
