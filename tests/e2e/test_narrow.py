"""Narrow and shadow end to end, through the real proxy to the real MCP server: a transfer
of 900 under a cap of 500 reaches the server as 500, a recipient list reaches it cut to the
allowed subset, a read-only narrowing refuses later writes in the session, a shadow rule that
would deny is recorded while the call passes, and every record re-decides from the log."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from clients import (
    assert_reconstructable,
    http_client,
    modern_request,
    parse_jsonrpc,
    post_jsonrpc,
    read_evidence,
)

pytestmark = pytest.mark.e2e

POLICY = """
version: 1
name: narrow
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - id: payments
    match: {{server: crm, tool: [send_money, transfer, get_customer]}}
    effect: allow
  - id: cap-500
    match: {{server: crm, tool: send_money}}
    effect: narrow
    narrow: {{args: {{amount: {{max: 500}}}}}}
  - id: corp-recipients
    match: {{server: crm, tool: transfer}}
    effect: narrow
    narrow: {{args: {{to: {{subset: ["*@corp.example"]}}}}}}
  - id: trial-no-big-payments
    mode: shadow
    match: {{server: crm, tool: send_money, args: {{amount: {{gt: 100}}}}}}
    effect: deny
    reason: payments over 100 would be stopped
  - id: pii-read-locks-session
    match: {{server: crm, tool: get_customer}}
    effect: narrow
    narrow: {{session: read_only, read_tools: ["get_*"]}}
"""


@pytest.fixture
def env(tmp_path: Path, mcp_server, proxy_process) -> dict[str, Any]:
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state)
    return {"server": server, "proxy": proxy, "state": state}


def call_tool(env: dict[str, Any], name: str, **arguments: Any) -> dict[str, Any]:
    body, headers = modern_request("tools/call", {"name": name, "arguments": arguments})
    headers["X-Fiveplane-Session"] = "narrow-e2e"
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=30) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body, headers=headers))
    return msg


def received(env: dict[str, Any], tool: str) -> list[dict[str, Any]]:
    return [c["arguments"] for c in env["server"].calls() if c["tool"] == tool]


def test_narrowed_calls_reach_the_server_narrowed_and_the_evidence_keeps_both(env) -> None:
    paid = call_tool(env, "send_money", recipient="DE89370400440532013000", amount=900)
    assert "result" in paid, paid
    assert "500" in str(paid["result"]) and "900" not in str(paid["result"])
    assert received(env, "send_money") == [
        {"recipient": "DE89370400440532013000", "amount": 500}]

    sent = call_tool(env, "transfer", to=["ann@corp.example", "eve@evil.example"], amount=20)
    assert "result" in sent, sent
    assert received(env, "transfer") == [{"to": ["ann@corp.example"], "amount": 20}]

    # nothing allowed is left: refused, and the server never hears of it
    refused = call_tool(env, "transfer", to=["eve@evil.example"], amount=20)
    assert refused["error"]["data"]["rule_ids"] == ["corp-recipients"]
    assert "no value of `to`" in refused["error"]["message"]
    assert len(received(env, "transfer")) == 1

    # reading customer PII narrows the rest of the session to reads
    assert "result" in call_tool(env, "get_customer", customer_id="c-1")
    assert "result" in call_tool(env, "get_customer", customer_id="c-2")
    locked = call_tool(env, "send_money", recipient="DE89370400440532013000", amount=10)
    assert locked["error"]["data"]["rule_ids"] == ["pii-read-locks-session:read_only"]
    assert "read-only" in locked["error"]["message"]
    assert len(received(env, "send_money")) == 1

    records = read_evidence(env["state"])
    (money,) = [r for r in records if r["action"] and r["action"].get("name") == "send_money"
                and r["decision"]["verdict"] == "narrow"]
    assert money["outcome"] == "forwarded" and money["decision"]["rule_ids"] == ["cap-500"]
    assert money["decision"]["directives"] == [{"plane": "endpoint", "kind": "narrow", "params": {
        "rule": "cap-500", "args": {"amount": {"max": 500}}}}]
    narrowed = money["narrowed"]
    assert narrowed["v"] == 1 and narrowed["changed"] == ["amount"]
    assert narrowed["rule_ids"] == ["cap-500"]
    # both forms, as keyed digests: the value as sent and the value forwarded
    assert narrowed["before_hmacs"]["amount"] == money["action"]["argument_hmacs"]["amount"]
    assert narrowed["argument_hmacs"]["amount"] != money["action"]["argument_hmacs"]["amount"]
    # the shadow rule would have denied; it was recorded, not enforced
    assert money["shadow"] == {"verdict": "deny", "rule_ids": ["trial-no-big-payments"],
                               "reason": "payments over 100 would be stopped",
                               "matched": ["trial-no-big-payments"]}
    (cut,) = [r for r in records if r["action"] and r["action"].get("name") == "transfer"
              and r["outcome"] == "forwarded"]
    assert cut["narrowed"]["changed"] == ["to"]

    explained = assert_reconstructable(env["state"])
    assert "0 mismatches, 0 errors" in explained
    done = int(explained.split(" re-adjudicated")[0].rsplit(" ", 1)[-1])
    assert done == 6  # every tool call above, narrowed, refused or locked, re-decided


HTTP_POLICY = """
version: 1
name: narrow-http
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
rules:
  - id: payouts-capped
    match: {{host: 127.0.0.1, method: POST, path: /v1/payouts}}
    effect: narrow
    narrow: {{args: {{amount: {{max: 100}}, currency: {{subset: [EUR]}}, page_size: {{set: 20}}}}}}
"""


def test_http_json_fields_reach_the_upstream_narrowed(tmp_path: Path, http_upstream,
                                                       proxy_process) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HTTP_POLICY.format(port=http_upstream.port))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state)
    url = http_upstream.url_for("/v1/payouts")
    with http_client(proxy.url, proxy.ca_file, timeout=30) as c:
        plain = c.post(url, json={"amount": 250, "currency": "EUR", "to": "bob"})
        gzipped = c.post(url, content=gzip.compress(b'{"amount": 7, "currency": "EUR"}'),
                         headers={"content-type": "application/json",
                                  "content-encoding": "gzip"})
        wrong = c.post(url, json={"amount": 5, "currency": "USD"})
        text = c.post(url, content=b"amount=250", headers={"content-type": "text/plain"})
    assert plain.status_code == 200 and gzipped.status_code == 200
    assert wrong.status_code == 403 and "`currency` is not allowed" in wrong.text
    assert text.status_code == 403 and "not a JSON object" in text.text
    hits = [h for h in http_upstream.hits if h.path == "/v1/payouts"]
    assert len(hits) == 2  # the refused ones never left the proxy
    assert json.loads(hits[0].body) == {"amount": 100, "currency": "EUR", "to": "bob",
                                        "page_size": 20}
    assert hits[1].headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(hits[1].body)) == {"amount": 7, "currency": "EUR",
                                                         "page_size": 20}
    records = [r for r in read_evidence(state) if r["decision"]["verdict"] == "narrow"]
    assert [r["narrowed"]["changed"] for r in records[:2]] == [["amount", "page_size"],
                                                               ["page_size"]]
    assert "0 mismatches, 0 errors" in assert_reconstructable(state)
