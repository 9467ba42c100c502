"""Escalate end to end: a call held in the real proxy until a person decides through the
CLI (which talks to the control API); the approval is bound to the exact call; a denial
and a timeout deny; the decision and approver are in the evidence log."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
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

TOKEN = "e2e-control-token-0123456789"

POLICY = """
version: 1
name: approvals
defaults: {{approval_timeout: 4}}
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - {{id: refund-small, match: {{server: crm, tool: [refund, echo], args: {{}}}}, effect: allow}}
  - id: refund-large
    match: {{server: crm, tool: refund, args: {{amount: {{gt: 100}}}}}}
    effect: escalate
    reason: refunds over 100 need finance
"""


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path, mcp_server,
        proxy_process) -> dict[str, Any]:
    # Held calls wait long enough that CLI round trips on a loaded machine never race
    # the timeout; the timeout test asks for a short one.
    short = request.node.get_closest_marker("short_approval_timeout") is not None
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url).replace(
        "approval_timeout: 4", "approval_timeout: 4" if short else "approval_timeout: 60"))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state,
        extra=["--control", "127.0.0.1:0", "--control-token", TOKEN])
    control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert control, proxy.output()
    return {"server": server, "proxy": proxy, "control": control.group(1), "state": state}


def cli(env: dict[str, Any], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "approvals", *args, "--control", env["control"],
         "--token", TOKEN], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def pending(env: dict[str, Any], timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(cli(env, "list", "--format", "json"))
        items = listed if isinstance(listed, list) else listed.get("approvals", [])
        if items:
            return items
        time.sleep(0.2)
    raise AssertionError("no pending approval appeared")


def refund_in_background(env: dict[str, Any], amount: float,
                         out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        body, headers = modern_request("tools/call", {"name": "refund", "arguments": {
            "customer_id": "c-1", "amount": amount}})
        started = time.monotonic()
        with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=60) as c:
            (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body, headers=headers))
        out["msg"], out["seconds"] = msg, time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def refunds(env: dict[str, Any]) -> list[float]:
    return [c["arguments"]["amount"] for c in env["server"].calls() if c["tool"] == "refund"]


def test_held_call_completes_when_approved_and_is_bound_to_its_arguments(env) -> None:
    first: dict[str, Any] = {}
    thread = refund_in_background(env, 500, first)
    (request,) = pending(env)
    assert refunds(env) == []  # held: the server has not seen it
    assert "refund" in json.dumps(request) and "refund-large" in json.dumps(request)
    cli(env, "approve", request["id"], "--reason", "checked with the customer")
    thread.join(30)
    assert "result" in first["msg"], first
    assert refunds(env) == [500]

    # the same approval cannot carry a changed amount: a new request is held
    second: dict[str, Any] = {}
    thread = refund_in_background(env, 600, second)
    (again,) = pending(env)
    assert again["id"] != request["id"]
    cli(env, "deny", again["id"], "--reason", "not this one")
    thread.join(30)
    assert second["msg"]["error"]["data"]["rule_ids"] == ["refund-large"]
    assert "not this one" in second["msg"]["error"]["message"]
    assert refunds(env) == [500]

    records = read_evidence(env["state"])
    approvals = [r for r in records if r.get("extra", {}).get("approval")]
    assert [r["extra"]["approval"]["outcome"] for r in approvals] == ["approved", "denied"]
    assert approvals[0]["extra"]["approval"]["approver"]
    assert_reconstructable(env["state"])


@pytest.mark.short_approval_timeout
def test_nobody_decides_and_the_hold_times_out(env) -> None:
    out: dict[str, Any] = {}
    thread = refund_in_background(env, 700, out)
    thread.join(30)
    assert out["msg"]["error"]["data"]["rule_ids"] == ["refund-large"]
    assert 3 < out["seconds"] < 15
    assert refunds(env) == []


@pytest.mark.short_approval_timeout
def test_other_calls_keep_moving_while_one_is_held(env) -> None:
    out: dict[str, Any] = {}
    thread = refund_in_background(env, 800, out)
    pending(env)
    body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    started = time.monotonic()
    with http_client(env["proxy"].url, env["proxy"].ca_file) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body, headers=headers))
    assert msg["result"]["content"][0]["text"] == "hi"
    assert time.monotonic() - started < 2
    thread.join(30)


def test_pending_approvals_survive_a_kill_9_of_the_proxy(tmp_path: Path, mcp_server,
                                                         proxy_process) -> None:
    """kill -9 with 3 calls held: after a restart on the same state directory the 3
    requests are listed, can be approved, and the retried identical calls pass."""
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url).replace(
        "approval_timeout: 4", "approval_timeout: 120"))
    state = tmp_path / "state"
    extra = ["--control", "127.0.0.1:0", "--control-token", TOKEN]

    def started() -> dict[str, Any]:
        proxy = proxy_process.start_fiveplane(policy, state_dir=state, extra=extra)
        control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
        assert control, proxy.output()
        return {"server": server, "proxy": proxy, "control": control.group(1), "state": state}

    env = started()
    amounts = [200.0, 300.0, 400.0]
    errors: list[str] = []

    def held(amount: float) -> None:
        body, headers = modern_request("tools/call", {"name": "refund", "arguments": {
            "customer_id": "c-1", "amount": amount}})
        try:
            with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=60) as c:
                post_jsonrpc(c, env["server"].url, body, headers=headers)
        except httpx.HTTPError as e:   # the proxy dies under the held call
            errors.append(repr(e))

    threads = [threading.Thread(target=held, args=(a,)) for a in amounts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(pending(env)) < 3:
        assert time.monotonic() < deadline, pending(env)
        time.sleep(0.2)
    env["proxy"].proc.send_signal(signal.SIGKILL)
    env["proxy"].proc.wait(10)
    for t in threads:
        t.join(30)
    assert len(errors) == 3, errors        # every held client saw the proxy go away
    assert refunds(env) == []              # nothing held ever reached the server

    env = started()
    listed = pending(env)
    assert len(listed) == 3
    assert sorted(r["action"]["arguments"]["amount"] for r in listed) == amounts
    for request in listed:
        cli(env, "approve", request["id"], "--reason", "checked after the restart")
    results = []
    for amount in amounts:
        out: dict[str, Any] = {}
        refund_in_background(env, amount, out).join(30)
        results.append(out["msg"])
    assert all("result" in m for m in results), results
    assert sorted(refunds(env)) == amounts
    assert json.loads(cli(env, "list", "--format", "json")) == []
    used = json.loads(cli(env, "list", "--status", "approved", "--format", "json"))
    assert len(used) == 3 and all(r["consumed_at"] for r in used)
    records = read_evidence(state)
    outcomes = [r["extra"]["approval"]["outcome"] for r in records
                if r.get("extra", {}).get("approval")]
    assert outcomes == ["approved"] * 3
    assert_reconstructable(state)
