"""The proxy answers a withheld server request in the client's stead: against a real local
server, through the network plane and with the proxy's upstream trust, recorded."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy.action import Kind
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.mcp.answer import answer_server, upstream_trust
from proxy.testing import mcp_call, policy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from servers.http_upstream import TestCA, Upstream

POLICY = """
version: 1
name: answer
network:
  {internal}
mcp_servers:
  crm: {{url: "{scheme}://127.0.0.1:{port}/mcp"}}
rules:
  - {{id: tools, match: {{server: crm, tool: "*"}}, effect: allow}}
"""


def gateway_for(up: Upstream, *, internal: bool = True) -> tuple[Gateway, MemorySink]:
    allow = (f"allow_internal: [{{cidr: 127.0.0.1/32, ports: [{up.port}]}}]" if internal
             else "allow: []")
    sink = MemorySink()
    text = POLICY.format(internal=allow, scheme=up.scheme, port=up.port)
    return Gateway(policy(text), sink), sink


def stream_of(up: Upstream) -> Any:
    """The GET stream's action the withheld request came on."""
    return replace(mcp_call("", method="transport/stream", host="127.0.0.1", port=up.port),
                   scheme=up.scheme, method="GET", rpc_id=None, session="s1")


def answer(gw: Gateway, up: Upstream, verify: Any = False, **kw: Any) -> bool:
    request = stream_of(up)
    decision_id, decision = gw.refuse(replace(request, kind=Kind.MCP_SERVER,
                                              mcp_method="sampling/createMessage"),
                                      "defaults.effect", "no rule matched: denied by default")

    async def resolve(host: str, port: int) -> tuple[str, ...]:
        return ()

    return asyncio.run(answer_server(
        gw, request, 7, decision, decision_id, url=f"{up.url}/mcp",
        headers={"Mcp-Session-Id": "abc", "MCP-Protocol-Version": "2025-11-25",
                 "X-Fiveplane-Token": "never-forwarded", "Host": f"127.0.0.1:{up.port}"},
        verify=verify, resolve=resolve, **kw))


def answers(sink: MemorySink) -> list[tuple[str, list[str]]]:
    return [(r["outcome"], r["decision"]["rule_ids"]) for r in sink.records
            if (r.get("action") or {}).get("mcp_method") == "client/response"]


def test_the_denial_reaches_the_server_in_the_session() -> None:
    with Upstream() as up:
        up.set_response("/mcp", 202)
        gw, sink = gateway_for(up)
        assert answer(gw, up)
        [hit] = up.hits
    body = json.loads(hit.body)
    assert hit.method == "POST" and body["id"] == 7 and body["error"]["code"] == -32003
    assert "defaults.effect" in body["error"]["message"]
    assert body["error"]["data"]["decision_id"]
    assert hit.headers["mcp-session-id"] == "abc"
    assert hit.headers["mcp-protocol-version"] == "2025-11-25"
    assert "x-fiveplane-token" not in hit.headers       # only the session's own headers
    assert answers(sink) == [("forwarded", ["mcp.lifecycle"])]


def test_the_network_plane_decides_where_the_answer_may_go() -> None:
    with Upstream() as up:
        gw, sink = gateway_for(up, internal=False)
        assert not answer(gw, up)
        assert up.hits == []
    refused = [r for r in sink.records if r["outcome"] == "refused"
               and r["decision"]["rule_ids"] == ["network.internal"]]
    assert refused and "was not sent" in refused[0]["decision"]["reason"]


def test_a_server_that_refuses_the_answer_is_recorded() -> None:
    with Upstream() as up:
        up.set_response("/mcp", 404, body="no such session")
        gw, sink = gateway_for(up)
        assert not answer(gw, up)
    failed = [r for r in sink.records if r["decision"]["rule_ids"] == ["mcp.answer_failed"]]
    assert failed and "404" in failed[0]["decision"]["reason"]


def test_the_answer_trusts_what_the_proxy_trusts_upstream(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    with Upstream(tls=True, ca=ca) as up:
        up.set_response("/mcp", 202)
        gw, sink = gateway_for(up)
        # the proxy's default trust (public CAs) does not know this private CA
        assert not answer(gw, up, verify=upstream_trust(None, False))
        assert up.hits == []
        # with the upstream CA the proxy is configured with, it does
        assert answer(gw, up, verify=upstream_trust(str(ca.ca_pem), False))
        assert len(up.hits) == 1
    failed = [r for r in sink.records if r["decision"]["rule_ids"] == ["mcp.answer_failed"]]
    assert len(failed) == 1 and "CERTIFICATE_VERIFY_FAILED" in failed[0]["decision"]["reason"]
    assert upstream_trust(None, True) is False


def test_an_undeclared_server_gets_no_answer() -> None:
    with Upstream() as up:
        up.set_response("/mcp", 202)
        gw, sink = gateway_for(up)
        request = replace(stream_of(up), server=f"http://127.0.0.1:{up.port}/other")
        decision_id, decision = gw.refuse(request, "defaults.effect", "denied")

        async def resolve(host: str, port: int) -> tuple[str, ...]:
            return ()

        sent = asyncio.run(answer_server(gw, request, 3, decision, decision_id,
                                         url=f"{up.url}/other", headers={}, verify=False,
                                         resolve=resolve))
        assert not sent and up.hits == []
    assert answers(sink) == [("denied", ["defaults.effect"])]
