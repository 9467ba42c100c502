"""MCP in depth through the real proxy: a rug pull holds calls until an operator approves
the new definitions with `fiveplane pins`; a poisoned tool disappears from the list the
agent sees and calls to it are denied."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clients import assert_reconstructable, http_client, modern_request, parse_jsonrpc, post_jsonrpc
from harness import MCP_SERVER_READY

pytestmark = pytest.mark.e2e

RUGPULL = Path(__file__).parent / "servers" / "rugpull_server.py"

POLICY = """
version: 1
name: guard
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  rug: {{url: "{url}"}}
mcp:
  screen: {screen}
rules:
  - {{id: rug-tools, match: {{server: rug, tool: "*"}}, effect: allow}}
"""


def start(tmp_path: Path, proxy_process, *, screen: str) -> dict[str, Any]:
    server = proxy_process.start(
        [sys.executable, str(RUGPULL), "--port", "0", "--json-response"], MCP_SERVER_READY)
    url = f"http://127.0.0.1:{server.port}/mcp"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=url, screen=screen))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state,
                                          extra=["--control", "off"])
    return {"url": url, "proxy": proxy, "state": state}


def rpc(env: dict[str, Any], method: str, params: dict[str, Any], rpc_id: int = 1) -> Any:
    body, headers = modern_request(method, params, id=rpc_id)
    with http_client(env["proxy"].url, env["proxy"].ca_file) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["url"], body, headers=headers))
    return msg


def tools(env: dict[str, Any]) -> list[str]:
    return [t["name"] for t in rpc(env, "tools/list", {})["result"]["tools"]]


def test_rug_pull_holds_calls_until_approved(tmp_path: Path, proxy_process) -> None:
    env = start(tmp_path, proxy_process, screen="false")
    assert "add" in tools(env)                       # first sight: pinned
    ok = rpc(env, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert "result" in ok, ok
    assert "add" not in tools(env)                   # the description changed: not shown
    held = rpc(env, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert held["error"]["data"]["rule_ids"] == ["mcp.pin_changed"]
    server, digest = re.search(r"fiveplane pins approve (\S+) (sha256:[0-9a-f]+)",
                               held["error"]["message"]).groups()
    diff = subprocess.run([sys.executable, "-m", "proxy", "pins", "diff", server,
                           "--state-dir", str(env["state"])], capture_output=True, text=True)
    assert diff.returncode == 0 and "IMPORTANT" in diff.stdout, diff.stdout + diff.stderr
    done = subprocess.run([sys.executable, "-m", "proxy", "pins", "approve", server, digest,
                           "--state-dir", str(env["state"]), "--by", "secops"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    again = rpc(env, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert "result" in again, again
    assert_reconstructable(env["state"])


def test_poisoned_description_is_stripped_and_calls_denied(tmp_path: Path,
                                                            proxy_process) -> None:
    env = start(tmp_path, proxy_process, screen="{hidden_instructions: strip}")
    listed = tools(env)
    assert "get_fact_of_the_day" not in listed and "send_email" in listed
    denied = rpc(env, "tools/call", {"name": "get_fact_of_the_day", "arguments": {}})
    rule = denied["error"]["data"]["rule_ids"][0]
    assert rule.startswith("mcp.screen."), denied
