"""defer and pause end to end (real proxy, real MCP server): a call parked until another
call of the same session completes is released and decided again when it does; a
parked call whose precondition never holds is denied at its timeout; a call outside a
time window waits for the window to open; pause waits for a person, and ``pause until``
resumes by itself. Every re-decision is its own evidence record, linked to the first,
and the whole log re-decides with 0 mismatches."""

from __future__ import annotations

import datetime as dt
import json
import re
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
name: defer
defaults: {{approval_timeout: 20}}
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - {{id: crm-tools, match: {{server: crm, tool: [refund, list_tickets, echo, get_customer]}},
     effect: allow}}
  - id: refund-after-tickets
    match: {{server: crm, tool: refund}}
    effect: defer
    until: {{completed: {{server: crm, tool: list_tickets}}}}
    timeout: {refund_timeout}
  - id: echo-in-window
    match: {{server: crm, tool: echo}}
    effect: defer
    until: {{window: {{from: "{opens}", to: "{closes}", tz: UTC}}}}
    timeout: {window_timeout}
  - id: customer-pause
    match: {{server: crm, tool: get_customer, args: {{customer_id: {{eq: c-person}}}}}}
    effect: pause
    timeout: 20
  - id: customer-pause-until
    match: {{server: crm, tool: get_customer, args: {{customer_id: {{eq: c-auto}}}}}}
    effect: pause
    until: {{completed: {{server: crm, tool: list_tickets}}}}
"""


def start(tmp_path: Path, mcp_server: Any, proxy_process: Any, *, refund_timeout: float = 20,
          window_in: float = 3600, window_timeout: float = 30) -> dict[str, Any]:
    server = mcp_server.start(json_response=True)
    opens = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=window_in)).replace(microsecond=0)
    closes = opens + dt.timedelta(hours=2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url,
                                    refund_timeout=refund_timeout,
                                    window_timeout=window_timeout,
                                    opens=opens.strftime("%H:%M:%S"),
                                    closes=closes.strftime("%H:%M:%S")))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state, extra=["--control", "127.0.0.1:0", "--control-token", TOKEN])
    control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert control, proxy.output()
    return {"server": server, "proxy": proxy, "state": state, "opens": opens.timestamp(),
            "control": control.group(1)}


def call(env: dict[str, Any], tool: str, args: dict[str, Any], session: str,
         timeout: float = 60) -> dict[str, Any]:
    body, headers = modern_request("tools/call", {"name": tool, "arguments": args})
    headers["X-Fiveplane-Session"] = session
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=timeout) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body, headers=headers))
    return msg


def in_background(env: dict[str, Any], tool: str, args: dict[str, Any],
                  session: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        out["msg"] = call(env, tool, args, session)
        out["seconds"], out["done_at"] = time.monotonic() - started, time.time()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def seen(env: dict[str, Any], tool: str) -> list[dict[str, Any]]:
    return [c for c in env["server"].calls() if c["tool"] == tool]


def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def parked_records(env: dict[str, Any], first: str) -> list[dict[str, Any]]:
    return [r for r in read_evidence(env["state"])
            if r.get("extra", {}).get("parked", {}).get("first") == first]


def held_record(env: dict[str, Any], tool: str) -> dict[str, Any]:
    def find() -> list[dict[str, Any]]:
        return [r for r in read_evidence(env["state"])
                if r["action"].get("name") == tool and r["outcome"] == "held"]
    wait_for(lambda: bool(find()))
    return find()[-1]


def test_deferred_call_released_when_another_call_of_its_session_completes(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process)
    thread, out = in_background(env, "refund", {"customer_id": "c-1", "amount": 50}, "task-1")
    first = held_record(env, "refund")
    assert first["decision"]["verdict"] == "defer"
    assert first["decision"]["rule_ids"] == ["refund-after-tickets"]

    # another session completing the same call does not release it, and other calls move
    started = time.monotonic()
    other = call(env, "list_tickets", {}, "task-2")
    assert "result" in other and time.monotonic() - started < 3
    time.sleep(1.0)
    assert thread.is_alive() and seen(env, "refund") == []

    done = call(env, "list_tickets", {}, "task-1")
    released_after = time.time()
    assert "result" in done
    thread.join(15)
    assert not thread.is_alive()
    assert out["msg"]["result"]["content"][0]["text"] == "refunded 50.00 to c-1", out
    assert out["done_at"] - released_after < 3          # woken by the completion, not a poll
    assert len(seen(env, "refund")) == 1

    (again,) = parked_records(env, first["decision_id"])
    assert again["decision"]["verdict"] == "allow"
    assert again["decision"]["rule_ids"] == ["crm-tools"]
    assert again["outcome"] == "forwarded" and again["basis"] == "adjudicated"
    assert again["extra"]["parked"]["previous"] == first["decision_id"]
    assert "@completed:refund-after-tickets" in again["action"]["marks"]
    # the next refund of that session goes through at once: the precondition holds
    started = time.monotonic()
    assert "result" in call(env, "refund", {"customer_id": "c-2", "amount": 5}, "task-1")
    assert time.monotonic() - started < 3
    assert_reconstructable(env["state"])


def test_deferred_call_denied_when_its_precondition_never_holds(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process, refund_timeout=2)
    started = time.monotonic()
    msg = call(env, "refund", {"customer_id": "c-1", "amount": 50}, "task-1")
    took = time.monotonic() - started
    assert 1.8 < took < 12, took
    assert msg["error"]["data"]["rule_ids"] == ["refund-after-tickets"]
    assert "did not hold within 2 s" in msg["error"]["message"]
    assert "list_tickets" in msg["error"]["message"]
    assert seen(env, "refund") == []
    first = held_record(env, "refund")
    (denied,) = parked_records(env, first["decision_id"])
    assert denied["outcome"] == "denied" and denied["decision"]["verdict"] == "deny"
    assert_reconstructable(env["state"])


def test_call_outside_its_window_waits_for_the_window_to_open(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process, window_in=12)
    if time.time() > env["opens"] - 2:
        pytest.fail("the proxy took too long to start for the window under test")
    msg = call(env, "echo", {"text": "after opening"}, "task-1")
    done = time.time()
    assert msg["result"]["content"][0]["text"] == "after opening", msg
    assert env["opens"] <= done < env["opens"] + 3      # woken by the window's own timer
    calls = seen(env, "echo")
    assert len(calls) == 1
    first = held_record(env, "echo")
    (again,) = parked_records(env, first["decision_id"])
    assert again["decision"]["rule_ids"] == ["crm-tools"]
    assert again["time"] >= env["opens"]
    assert_reconstructable(env["state"])


def test_call_in_a_closed_window_is_denied_at_its_timeout(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process, window_timeout=2)
    started = time.monotonic()
    msg = call(env, "echo", {"text": "too early"}, "task-1")
    assert 1.8 < time.monotonic() - started < 12
    assert msg["error"]["data"]["rule_ids"] == ["echo-in-window"]
    assert "UTC" in msg["error"]["message"] and "within 2 s" in msg["error"]["message"]
    assert seen(env, "echo") == []


def approvals_cli(env: dict[str, Any], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "approvals", *args, "--control", env["control"],
         "--token", TOKEN], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def pending(env: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def any_pending() -> bool:
        found[:] = json.loads(approvals_cli(env, "list", "--format", "json"))
        return bool(found)
    wait_for(any_pending)
    return found


def test_pause_waits_for_a_person_and_pause_until_resumes_by_itself(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process)
    thread, out = in_background(env, "get_customer", {"customer_id": "c-person"}, "task-1")
    (request,) = pending(env)
    assert request["rule_ids"] == ["customer-pause"]
    time.sleep(0.5)
    assert seen(env, "get_customer") == [] and thread.is_alive()
    approvals_cli(env, "approve", request["id"], "--reason", "resume")
    thread.join(15)
    assert "result" in out["msg"], out

    # pause until: a person could resume it, but the precondition does first
    thread, out = in_background(env, "get_customer", {"customer_id": "c-auto"}, "task-2")
    (request,) = pending(env)
    assert request["rule_ids"] == ["customer-pause-until"]
    call(env, "list_tickets", {}, "task-2")
    thread.join(15)
    assert "result" in out["msg"], out
    assert [c["arguments"]["customer_id"] for c in seen(env, "get_customer")] == [
        "c-person", "c-auto"]
    resumed = json.loads(approvals_cli(env, "show", request["id"]))
    assert resumed["status"] == "cancelled" and "resumed" in resumed["note"]
    assert_reconstructable(env["state"])


HTTP_POLICY = """
version: 1
name: defer-http
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
rules:
  - {{id: web, match: {{host: 127.0.0.1, method: [GET, POST]}}, effect: allow}}
  - id: upload-after-status-check
    match: {{host: 127.0.0.1, method: POST, path: /upload}}
    effect: defer
    until: {{completed: {{host: 127.0.0.1, method: GET, path: /status}}}}
    timeout: 20
"""


def test_plain_http_call_deferred_until_a_successful_check(
        tmp_path: Path, http_upstream: Any, proxy_process: Any) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HTTP_POLICY.format(port=http_upstream.port))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state)
    out: dict[str, Any] = {}

    def upload() -> None:
        with http_client(proxy.url, proxy.ca_file, timeout=60) as c:
            out["response"] = c.post(f"{http_upstream.url}/upload", content=b"report")

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive() and http_upstream.hits == []
    http_upstream.set_response("/status", status=503, body="down")
    with http_client(proxy.url, proxy.ca_file) as c:
        assert c.get(f"{http_upstream.url}/status/other").status_code == 200  # other path
        assert c.get(f"{http_upstream.url}/status").status_code == 503        # not a success
        time.sleep(1.5)
        assert thread.is_alive()
        http_upstream.set_response("/status", status=200, body="up")
        assert c.get(f"{http_upstream.url}/status").status_code == 200
    thread.join(10)
    assert out["response"].status_code == 200, out["response"].text
    assert [h.method for h in http_upstream.hits] == ["GET", "GET", "GET", "POST"]
    assert_reconstructable(state)


def test_client_gone_while_parked_means_nothing_is_forwarded(
        tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:
    env = start(tmp_path, mcp_server, proxy_process)
    with pytest.raises(httpx.ReadTimeout):
        call(env, "refund", {"customer_id": "c-1", "amount": 50}, "task-1", timeout=1.5)
    first = held_record(env, "refund")
    wait_for(lambda: bool(parked_records(env, first["decision_id"])))
    (gone,) = parked_records(env, first["decision_id"])
    assert gone["outcome"] == "denied" and "disconnected" in gone["decision"]["reason"]
    assert "result" in call(env, "list_tickets", {}, "task-1")   # the precondition now holds
    time.sleep(1.5)
    assert seen(env, "refund") == []
    assert_reconstructable(env["state"])
