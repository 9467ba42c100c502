"""Stateful sessions end to end (real proxy, real MCP servers): provenance of values from
untrusted tool output, the lethal trifecta as a sequence rule over session labels, and a
budget that stays exact under concurrent calls."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from clients import (
    assert_reconstructable,
    http_client,
    mcp_client,
    modern_request,
    parse_jsonrpc,
    post_jsonrpc,
)

sys.path.insert(0, str(Path(__file__).parent / "servers"))
from mcp_server import ATTACKER_IBAN, PAYEES

pytestmark = pytest.mark.e2e

POLICY = """
version: 1
name: sessions
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{bank}, {crm}, {web}]}}]
mcp_servers:
  bank: {{url: "{bank_url}"}}
  crm: {{url: "{crm_url}", trust: untrusted_output}}
provenance:
  untrusted: [{{server: bank, tool: read_transactions}}]
budgets:
  - id: refund-budget
    match: {{server: crm, tool: refund}}
    sum: amount
    limit: 1000
    per: global
rules:
  - {{id: bank-read, match: {{server: bank, tool: [read_transactions, get_payees]}}, effect: allow}}
  - {{id: bank-send, match: {{server: bank, tool: send_money}}, effect: allow}}
  - id: no-tainted-recipients
    match: {{server: bank, tool: send_money}}
    when: {{tainted_args: [recipient]}}
    effect: deny
    reason: the recipient was first seen in untrusted tool output
  - id: crm-read
    match: {{server: crm, tool: get_customer}}
    effect: allow
    labels: ["read:customer_pii"]
  - {{id: crm-refund, match: {{server: crm, tool: refund}}, effect: allow}}
  - {{id: egress, match: {{host: 127.0.0.1, method: [GET, POST]}}, effect: allow}}
  - id: lethal-trifecta
    description: private data read + untrusted content seen + egress outside the allowlist
    match: {{method: [POST, PUT, PATCH]}}
    when:
      labels: ["read:customer_pii", untrusted_content]
      outside: ["*.example.com"]
    effect: deny
"""


@pytest.fixture
def env(tmp_path: Path, mcp_server, http_upstream, proxy_process) -> dict[str, Any]:
    bank = mcp_server.start(name="bank", json_response=True)
    crm = mcp_server.start(name="crm")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(bank=bank.port, crm=crm.port, web=http_upstream.port,
                                    bank_url=bank.url, crm_url=crm.url))
    proxy = proxy_process.start_fiveplane(policy, state_dir=tmp_path / "state")
    return {"bank": bank, "crm": crm, "web": http_upstream, "proxy": proxy, "tmp": tmp_path}


def call(env: dict[str, Any], server: str, tool: str, args: dict[str, Any], *,
         rpc_id: int = 1) -> dict[str, Any]:
    body, headers = modern_request("tools/call", {"name": tool, "arguments": args}, id=rpc_id)
    with http_client(env["proxy"].url, env["proxy"].ca_file) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env[server].url, body, headers=headers))
    return msg


def test_values_from_untrusted_output_cannot_become_recipients(env: dict[str, Any]) -> None:
    async def agent() -> tuple[str, str]:
        async with mcp_client(env["bank"].url, env["proxy"].url, env["proxy"].ca_file,
                              mode="legacy") as c:
            await c.call_tool("read_transactions", {})
            await c.call_tool("get_payees", {})
            ok = await c.call_tool("send_money", {"recipient": PAYEES[0]["iban"],
                                                  "amount": 20})
            try:
                # the planted IBAN, spelled as the agent might copy it
                await c.call_tool("send_money", {"recipient": "gb33 bukb 2020 1555 5555 55",
                                                 "amount": 900})
            except Exception as e:
                return ok.content[0].text, repr(e)
            return ok.content[0].text, "sent"

    trusted, planted = anyio.run(agent)
    assert trusted.startswith("sent 20")
    assert "no-tainted-recipients" in planted and "untrusted tool output" in planted
    sent = [c["arguments"]["recipient"] for c in env["bank"].calls() if c["tool"] == "send_money"]
    assert sent == [PAYEES[0]["iban"]]
    assert ATTACKER_IBAN not in json.dumps(env["bank"].calls())
    assert_reconstructable(env["tmp"] / "state")


def test_lethal_trifecta(env: dict[str, Any]) -> None:
    with http_client(env["proxy"].url, env["proxy"].ca_file) as c:
        before = c.post(f"{env['web'].url}/upload", content=b"report")
    assert before.status_code == 200  # only the network rules govern it so far

    msg = call(env, "crm", "get_customer", {"customer_id": "c-1"})
    assert "jane.doe@example.com" in json.dumps(msg["result"])

    with http_client(env["proxy"].url, env["proxy"].ca_file) as c:
        after = c.post(f"{env['web'].url}/upload", content=b"report")
        still_get = c.get(f"{env['web'].url}/status")
    assert after.status_code == 403
    assert after.json()["rule_ids"] == ["lethal-trifecta"]
    assert still_get.status_code == 200  # reads stay allowed; only egress writes are cut
    assert [h.method for h in env["web"].hits] == ["POST", "GET"]
    assert_reconstructable(env["tmp"] / "state")


def test_budget_is_exact_under_concurrent_calls(env: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def refund(i: int) -> None:
        msg = call(env, "crm", "refund", {"customer_id": f"c-{i}", "amount": 100}, rpc_id=i)
        with lock:
            results.append(msg)

    threads = [threading.Thread(target=refund, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    passed = [m for m in results if "result" in m]
    refused = [m for m in results if "error" in m]
    assert len(results) == 20
    assert len(passed) == 10
    assert {m["error"]["data"]["rule_ids"][0] for m in refused} == {"refund-budget"}
    assert len([c for c in env["crm"].calls() if c["tool"] == "refund"]) == 10
    assert_reconstructable(env["tmp"] / "state")  # budget refusals are recorded as enforced
