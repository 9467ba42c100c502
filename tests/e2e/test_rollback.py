"""Rollback end to end (real proxy, real MCP server): a refused call under a rule with
``rollback: true`` makes the proxy issue the journaled compensations itself, newest
first, each adjudicated and recorded; a session killed with ``fiveplane sessions kill``
is rolled back the same way."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
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
    read_evidence,
)

pytestmark = pytest.mark.e2e

TOKEN = "e2e-control-token-rollback-0123456789"
POLICY = """
version: 1
name: rollback
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
compensations:
  - id: undo-ticket
    match: {{server: crm, tool: create_ticket}}
    undo: {{tool: delete_ticket, args: {{id: {{from_result: id}}}}}}
rules:
  - id: tickets
    match: {{server: crm, tool: [create_ticket, delete_ticket, list_created_tickets]}}
    effect: allow
  - id: no-mass-delete
    match: {{server: crm, tool: delete_all}}
    effect: deny
    rollback: true
    reason: mass deletion is refused, and the session is undone
"""


@pytest.fixture(params=[False, True], ids=["sse", "json"])
def env(request: pytest.FixtureRequest, tmp_path: Path, mcp_server,
        proxy_process) -> dict[str, Any]:
    server = mcp_server.start(json_response=request.param)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state, extra=["--control", "127.0.0.1:0", "--control-token", TOKEN])
    control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert control, proxy.output()
    return {"server": server, "proxy": proxy, "state": state, "control": control.group(1)}


def call(env: dict[str, Any], tool: str, args: dict[str, Any], rpc_id: int) -> dict[str, Any]:
    """One stateless (2026-era) tools/call through the proxy."""
    body, headers = modern_request("tools/call", {"name": tool, "arguments": args}, id=rpc_id)
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=60) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body, headers=headers))
    return msg


def open_tickets(env: dict[str, Any]) -> list[str]:
    msg = call(env, "list_created_tickets", {}, 99)
    return [t["id"] for t in msg["result"]["structuredContent"]["tickets"]]


def deletes(env: dict[str, Any]) -> list[str]:
    return [c["arguments"]["id"] for c in env["server"].calls() if c["tool"] == "delete_ticket"]


def rollback_records(env: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in read_evidence(env["state"]) if "rollback" in (r.get("extra") or {})]


def test_a_refused_call_rolls_the_session_back(env: dict[str, Any]) -> None:
    first = call(env, "create_ticket", {"title": "printer on fire"}, 1)
    second = call(env, "create_ticket", {"title": "coffee machine"}, 2)
    ids = [m["result"]["structuredContent"]["id"] for m in (first, second)]
    assert open_tickets(env) == ids

    refused = call(env, "delete_all", {"confirm": True}, 3)
    assert "mass deletion is refused" in json.dumps(refused["error"])
    assert not [c for c in env["server"].calls() if c["tool"] == "delete_all"]
    # the refusal answers once the compensations ran: the server is back to empty
    assert deletes(env) == ids[::-1]                     # newest first
    assert open_tickets(env) == []

    evidence = read_evidence(env["state"])
    creates = [r["decision_id"] for r in evidence
               if r["action"].get("name") == "create_ticket" and r["outcome"] == "forwarded"]
    trigger = next(r for r in evidence if r["action"].get("name") == "delete_all")
    assert trigger["decision"]["rule_ids"] == ["no-mass-delete"]
    steps = [r for r in rollback_records(env) if r["outcome"] == "compensated"]
    assert [s["extra"]["rollback"]["step"] for s in steps] == [1, 2]
    assert [s["extra"]["rollback"]["compensates"] for s in steps] == creates[::-1]
    for s in steps:
        info = s["extra"]["rollback"]
        assert info["trigger"] == {"kind": "refusal", "decision_id": trigger["decision_id"],
                                   "rule_ids": ["no-mass-delete"]}
        assert s["action"]["name"] == "delete_ticket" and s["decision"]["verdict"] == "allow"
        # each compensating call was adjudicated (and recorded) before it was sent
        decided = next(r for r in evidence if r["decision_id"] == info["decision"])
        assert decided["outcome"] == "forwarded" and decided["decision"]["rule_ids"] == [
            "tickets"]
    public = json.dumps([s["extra"] for s in steps])
    assert not [i for i in ids if i in public]           # argument values stay sealed

    # a second refusal finds nothing left to undo: journal entries run exactly once
    call(env, "delete_all", {"confirm": True}, 4)
    assert deletes(env) == ids[::-1]
    assert len([r for r in rollback_records(env) if r["outcome"] == "compensated"]) == 2
    assert_reconstructable(env["state"])


def kill(env: dict[str, Any], session: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "sessions", "kill", session, "--reason", "runaway",
         "--control", env["control"], "--token", TOKEN],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (done.stdout, done.stderr)


def wait_for_deletes(env: dict[str, Any], n: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while deadline > time.monotonic() and len(deletes(env)) < n:
        time.sleep(0.2)
    return deletes(env)


@pytest.mark.parametrize("agent_gone", [False, True], ids=["connected", "disconnected"])
def test_a_killed_session_is_rolled_back(env: dict[str, Any], agent_gone: bool) -> None:
    """``fiveplane sessions kill`` (another process, through the control API) → the proxy
    notices within its poll interval and compensates the session. A 2025-era session is
    reached with its own Mcp-Session-Id while the agent is connected; once the agent has
    ended it (DELETE), the proxy opens a session of its own."""
    got: dict[str, Any] = {}

    def session_of_creates() -> str:
        evidence = read_evidence(env["state"])
        return next(r["session"] for r in evidence
                    if r["action"].get("name") == "create_ticket")

    async def agent() -> None:
        async with mcp_client(env["server"].url, env["proxy"].url, env["proxy"].ca_file,
                              mode="legacy") as c:
            made = [await c.call_tool("create_ticket", {"title": t}) for t in ("a", "b")]
            got["ids"] = [m.structured_content["id"] for m in made]
            if not agent_gone:
                await anyio.to_thread.run_sync(kill, env, session_of_creates())
                got["deleted"] = await anyio.to_thread.run_sync(wait_for_deletes, env, 2)
                with pytest.raises(Exception, match="killed"):
                    await c.call_tool("create_ticket", {"title": "after the kill"})

    anyio.run(agent)
    ids = got["ids"]
    if agent_gone:
        assert open_tickets(env) == ids
        kill(env, session_of_creates())
        got["deleted"] = wait_for_deletes(env, 2)
    assert got["deleted"] == ids[::-1]
    assert open_tickets(env) == []
    calls = env["server"].calls()
    agent_session = next(c for c in calls if c["tool"] == "create_ticket")["headers"][
        "mcp-session-id"]
    used = {c["headers"].get("mcp-session-id") for c in calls if c["tool"] == "delete_ticket"}
    assert (used == {agent_session}) is not agent_gone
    steps = [r for r in rollback_records(env) if r["outcome"] == "compensated"]
    assert [s["extra"]["rollback"]["step"] for s in steps] == [1, 2]
    session = session_of_creates()
    for s in steps:
        info = s["extra"]["rollback"]
        assert info["trigger"]["kind"] == "session.killed" and "runaway" in info["trigger"][
            "reason"]
        assert s["session"] == session
        assert ("proxy's own" in info["detail"]) is agent_gone
    assert_reconstructable(env["state"])


HTTP_POLICY = """
version: 1
name: rollback-http
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
compensations:
  - id: undo-http-ticket
    match: {{host: 127.0.0.1, method: POST, path: /tickets}}
    undo: {{method: DELETE, url: "http://127.0.0.1:{port}/tickets/{{result.ticket.id}}"}}
rules:
  - {{id: web, match: {{host: 127.0.0.1, method: [GET, POST, DELETE]}}, effect: allow}}
  - id: no-purge
    match: {{host: 127.0.0.1, method: POST, path: /purge}}
    effect: deny
    rollback: true
"""


def test_plain_http_calls_are_compensated_too(tmp_path: Path, http_upstream,
                                              proxy_process) -> None:
    from servers.http_upstream import CannedResponse

    made = iter(["T-1", "a/../../admin?x"])
    http_upstream.set_handler("/tickets", lambda hit: CannedResponse(
        201, {"Content-Type": "application/json"},
        json.dumps({"ticket": {"id": next(made)}}).encode()))
    policy = tmp_path / "policy.yaml"
    policy.write_text(HTTP_POLICY.format(port=http_upstream.port))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state)
    with http_client(proxy.url, proxy.ca_file, timeout=60) as c:
        for title in ("one", "two"):
            assert c.post(f"{http_upstream.url}/tickets", json={"title": title}).status_code == 201
        refused = c.post(f"{http_upstream.url}/purge", content=b"{}")
    assert refused.status_code == 403 and "no-purge" in refused.text
    deleted = [h.path for h in http_upstream.hits if h.method == "DELETE"]
    # newest first; a value from the response is one encoded path segment, never a path
    assert deleted == ["/tickets/a%2F%2E%2E%2F%2E%2E%2Fadmin%3Fx", "/tickets/T-1"]
    assert not [h for h in http_upstream.hits if h.route == "/purge"]
    steps = [r for r in rollback_records({"state": state}) if r["outcome"] == "compensated"]
    assert [s["extra"]["rollback"]["step"] for s in steps] == [1, 2]
    assert all(s["action"]["method"] == "DELETE" for s in steps)
    assert_reconstructable(state)
