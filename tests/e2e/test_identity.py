"""Identity plane end to end: delegation tokens minted and attenuated with the CLI, sent
as proxy credentials or a per-request header, enforced per hop by the real proxy in
front of a real MCP server; the upstream never sees an agent token and sees the brokered
credential only on allowed calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from clients import assert_reconstructable, mcp_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e

BROKERED = "crm-secret-brokered-7f3a"


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "proxy", "token", *args], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def setup(tmp_path: Path, mcp_server, proxy_process) -> dict[str, Any]:
    server = mcp_server.start(name="crm")
    keys = tmp_path / "keys"
    cli("keygen", "--out", str(keys), "--name", "corp")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
name: delegation
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{server.port}]}}]
mcp_servers:
  crm: {{url: "{server.url}"}}
identity:
  trusted_roots: [{{name: corp, key_file: keys/corp.pub}}]
  anonymous: deny
  credentials:
    - {{id: crm-api, upstream: {{server: crm}}, scheme: Bearer,
       value_from_env: CRM_TOKEN, allow_http: true}}
rules:
  - id: refunds
    match: {{server: crm, tool: [refund, echo]}}
    effect: allow
  - id: planners-only-via-alice
    match: {{server: crm, tool: refund, principal: {{root: alice}}}}
    effect: allow
""")
    proxy = proxy_process.start_fiveplane(policy, state_dir=tmp_path / "state",
                                          env={"CRM_TOKEN": BROKERED})
    echo = json.dumps({"server": "crm", "tool": "echo"})
    grant = json.dumps({"server": "crm", "tool": "refund", "args": {"amount": {"le": 500}}})
    planner = cli("mint", "--root-key", str(keys / "corp.key"), "--principal", "alice",
                  "--kind", "human", "--cap", json.dumps({"server": "crm"}), "--ttl", "600")
    planner = cli("attenuate", planner, "--principal", "planner-1", "--kind", "agent",
                  "--cap", grant, "--cap", echo, "--ttl", "600")
    sub = cli("attenuate", planner, "--principal", "sub-1", "--kind", "agent", "--cap",
              json.dumps({"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}}),
              "--cap", echo, "--ttl", "300")
    return {"server": server, "proxy": proxy, "planner": planner, "sub": sub,
            "state": tmp_path / "state"}


async def refund(env: dict[str, Any], token: str | None, amount: int, *, via: str,
                 mode: str = "legacy") -> str:
    proxy_url = env["proxy"].url
    headers = None
    if token is not None and via == "proxy-url":
        proxy_url = proxy_url.replace("http://", f"http://agent:{token}@")
    elif token is not None:
        headers = {"X-Fiveplane-Token": token}
    try:
        async with mcp_client(env["server"].url, proxy_url, env["proxy"].ca_file, mode=mode,
                              headers=headers) as c:
            result = await c.call_tool("refund", {"customer_id": "c-1", "amount": amount})
            return "ok: " + result.content[0].text
    except Exception as e:
        error = _mcp_error(e)
        return f"denied: {error.message}" if error else f"failed: {e!r}"


def _mcp_error(e: BaseException) -> MCPError | None:
    """The MCPError inside the SDK's task-group wrappers, if any."""
    if isinstance(e, MCPError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            found = _mcp_error(inner)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("via, mode", [("proxy-url", "legacy"), ("header", "auto")])
def test_attenuation_is_enforced_per_hop(setup: dict[str, Any], via: str, mode: str) -> None:
    sub_300 = anyio.run(lambda: refund(setup, setup["sub"], 300, via=via, mode=mode))
    sub_50 = anyio.run(lambda: refund(setup, setup["sub"], 50, via=via, mode=mode))
    parent_300 = anyio.run(lambda: refund(setup, setup["planner"], 300, via=via, mode=mode))
    parent_900 = anyio.run(lambda: refund(setup, setup["planner"], 900, via=via, mode=mode))
    assert sub_300.startswith("denied") and "identity.attenuation" in sub_300, sub_300
    assert "sub-1" in sub_300  # the reason names the block that refused
    assert sub_50.startswith("ok"), sub_50
    assert parent_300.startswith("ok"), parent_300
    assert parent_900.startswith("denied") and "identity.attenuation" in parent_900

    calls = [c for c in setup["server"].calls() if c["tool"] == "refund"]
    assert sorted(c["arguments"]["amount"] for c in calls) == [50, 300]
    for call in calls:  # the upstream sees the brokered credential, never an agent token
        headers = call["headers"]
        assert headers.get("authorization") == f"Bearer {BROKERED}"
        assert "proxy-authorization" not in headers
        assert "x-fiveplane-token" not in headers
        assert setup["sub"] not in json.dumps(headers)
        assert setup["planner"] not in json.dumps(headers)
    out = assert_reconstructable(setup["state"])  # identity decisions re-decide too
    assert "0 mismatch" in out


def test_no_token_is_denied_and_a_forged_one_too(setup: dict[str, Any]) -> None:
    anonymous = anyio.run(lambda: refund(setup, None, 10, via="header"))
    assert not anonymous.startswith("ok"), anonymous
    forged = setup["sub"][:-6] + ("A" if setup["sub"][-6] != "A" else "B") + setup["sub"][-5:]
    forged_result = anyio.run(lambda: refund(setup, forged, 10, via="header"))
    assert not forged_result.startswith("ok"), forged_result
    assert [c for c in setup["server"].calls() if c["tool"] == "refund"] == []


def test_agent_supplied_credentials_are_replaced(setup: dict[str, Any]) -> None:
    async def call() -> str:
        async with mcp_client(setup["server"].url, setup["proxy"].url,
                              setup["proxy"].ca_file, mode="auto",
                              headers={"X-Fiveplane-Token": setup["sub"],
                                       "Authorization": "Bearer agent-own-key"}) as c:
            result = await c.call_tool("echo", {"text": "hi"})
            return result.content[0].text

    assert anyio.run(call) == "hi"
    (echo,) = [c for c in setup["server"].calls() if c["tool"] == "echo"]
    assert echo["headers"]["authorization"] == f"Bearer {BROKERED}"
