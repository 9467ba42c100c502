"""The operators' view end to end (real proxy, real MCP server, real clients): ``/metrics``
counts the calls made, JSON decision logs link to the evidence records, ``traceparent``
reaches the upstream unchanged and the evidence record (a 10 KB one breaks nothing and is
not recorded raw), distinct tool names add no series."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import http_client, modern_request, parse_jsonrpc, post_jsonrpc, read_evidence
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TOKEN = "e2e-observe-token-0123456789"
SECRET = "sk-live-0123456789ABCDEFghijKLMN"
VALID_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

POLICY = """
version: 1
name: observe
defaults: {{approval_timeout: {timeout}}}
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - {{id: echo-ok, match: {{server: crm, tool: echo}}, effect: allow}}
  - {{id: no-wipe, match: {{server: crm, tool: delete_all}}, effect: deny,
      reason: wiping customer data is not allowed}}
  - {{id: refund-review, match: {{server: crm, tool: refund}}, effect: escalate,
      reason: refunds need finance}}
"""


def start(tmp_path: Path, mcp_server: Any, proxy_process: Any, *, timeout: float = 3,
          extra: tuple[str, ...] = ()) -> dict[str, Any]:
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url, timeout=timeout))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state,
        extra=["--control", "127.0.0.1:0", "--control-token", TOKEN, "--reload-interval",
               "0.2", *extra])
    control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert control, proxy.output()
    return {"server": server, "proxy": proxy, "control": control.group(1), "state": state,
            "policy": policy}


@pytest.fixture
def env(tmp_path: Path, mcp_server: Any, proxy_process: Any) -> dict[str, Any]:
    return start(tmp_path, mcp_server, proxy_process, extra=("--log-format", "json"))


def call(env: dict[str, Any], tool: str, arguments: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, rpc_id: int = 1) -> dict[str, Any]:
    body, hdrs = modern_request("tools/call", {"name": tool, "arguments": arguments or {}},
                                id=rpc_id)
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=30) as c:
        (msg,) = parse_jsonrpc(post_jsonrpc(c, env["server"].url, body,
                                            headers={**hdrs, **(headers or {})}))
    return msg


def scrape(env: dict[str, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(env["control"] + "/metrics", trust_env=False, timeout=10)
    assert r.status_code == 200, r.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_metrics_count_the_calls_made(env: dict[str, Any]) -> None:
    for i in range(4):
        assert "result" in call(env, "echo", {"text": f"hi {i}"}, rpc_id=i)
    for i in range(3):
        msg = call(env, "delete_all", {"confirm": True}, rpc_id=10 + i)
        assert msg["error"]["data"]["rule_ids"] == ["no-wipe"]

    # two refunds held for a person at once; nobody decides, they expire and deny
    held: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda n=n: held.append(
        call(env, "refund", {"customer_id": SECRET, "amount": 900}, rpc_id=20 + n)))
        for n in range(2)]
    for t in threads:
        t.start()
    during = wait_for(lambda: (m := scrape(env)) and
                      value(m, "fiveplane_held_calls") == 2 and m)
    for t in threads:
        t.join(30)
    assert len(held) == 2 and all("error" in m for m in held)
    metrics = wait_for(lambda: (m := scrape(env)) and
                       value(m, "fiveplane_held_calls") == 0 and m)

    assert value(metrics, "fiveplane_rule_decisions_total", rule="no-wipe", verdict="deny") == 3
    assert value(metrics, "fiveplane_rule_decisions_total", rule="echo-ok", verdict="allow") == 4
    assert value(metrics, "fiveplane_holds_total") == 2
    assert value(during, "fiveplane_decisions_total", verdict="escalate", plane="endpoint",
                 outcome="held") == 2
    waits = sum(v for (n, labels), v in metrics.items()
                if n == "fiveplane_approval_wait_seconds_count")
    assert waits == 2
    wait_sum = sum(v for (n, _), v in metrics.items() if n == "fiveplane_approval_wait_seconds_sum")
    assert 2 * 2.0 <= wait_sum < 2 * 30
    assert value(metrics, "fiveplane_request_added_seconds_count", result="forwarded") == 4
    assert value(metrics, "fiveplane_request_added_seconds_count", result="denied") == 3
    records = len(read_evidence(env["state"]))
    metrics = scrape(env)
    assert value(metrics, "fiveplane_audit_records_written_total") >= records >= 11
    assert value(metrics, "fiveplane_audit_failures_total") == 0
    assert value(metrics, "fiveplane_audit_commit_seconds_count") >= 1
    info = [dict(labels) for (n, labels), _ in metrics.items() if n == "fiveplane_policy_info"]
    assert len(info) == 1 and info[0]["name"] == "observe"

    # a broken policy counts as a failed reload, a good one as ok, with the new version
    text = env["policy"].read_text()
    env["policy"].write_text(text + "  - {id: broken\n")
    wait_for(lambda: value(scrape(env), "fiveplane_policy_reloads_total", result="failed") == 1)
    env["policy"].write_text(text.replace("need finance", "need the finance team"))
    after = wait_for(lambda: (m := scrape(env)) and
                     value(m, "fiveplane_policy_reloads_total", result="ok") == 1 and m)
    new = [dict(labels) for (n, labels), _ in after.items() if n == "fiveplane_policy_info"]
    assert len(new) == 1 and new[0]["version"] != info[0]["version"]

    # the JSON decision log: one line per non-allow decision, linked to its record
    lines = [json.loads(line) for line in env["proxy"].output().splitlines()
             if line.startswith("{")]
    denies = [line for line in lines if line.get("event") == "decision"
              and line.get("rule_ids") == ["no-wipe"]]
    evidence = {r["decision_id"]: r for r in read_evidence(env["state"])}
    assert len(denies) == 3
    for line in denies:
        assert line["level"] == "warning" and line["verdict"] == "deny"
        assert evidence[line["decision_id"]]["decision"]["rule_ids"] == ["no-wipe"]
    holds = [line for line in lines if line.get("event") == "decision"
             and line.get("outcome") == "held"]
    approvals = [line for line in lines if line.get("event") == "approval"]
    assert len(holds) == 2 and len(approvals) == 2
    assert any(line.get("event") == "policy_reload" and not line["ok"] for line in lines)
    assert not any(line.get("event") == "decision" and line.get("rule_ids") == ["echo-ok"]
                   for line in lines)                     # plain allows are not logged
    assert SECRET not in env["proxy"].output()


def test_traceparent_forwarded_unchanged_and_recorded(env: dict[str, Any]) -> None:
    assert "result" in call(env, "echo", {"text": "traced"},
                            headers={"traceparent": VALID_TRACE})
    huge = "00-" + "f" * (10 * 1024 - 3)
    assert "result" in call(env, "echo", {"text": "huge"}, headers={"traceparent": huge})
    seen = [c["headers"].get("traceparent") for c in env["server"].calls()]
    assert seen == [VALID_TRACE, huge]       # the upstream gets what the agent sent
    records = [r for r in read_evidence(env["state"]) if r["action"].get("name") == "echo"]
    assert records[0]["extra"]["trace"] == {"traceparent": VALID_TRACE,
                                            "trace_id": VALID_TRACE[3:35],
                                            "parent_id": VALID_TRACE[36:52]}
    assert records[1]["extra"]["trace"] == {"invalid": "longer than 512 characters",
                                            "length": 10 * 1024}
    audit = "".join(p.read_text() for p in (env["state"] / "audit").glob("*.jsonl"))
    assert "f" * 600 not in audit


def test_distinct_tool_names_add_no_series(env: dict[str, Any]) -> None:
    call(env, "tool-first")                  # opens the default deny's series
    before = scrape(env)
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=30) as c:
        for i in range(300):
            body, hdrs = modern_request("tools/call", {"name": f"tool-{i}-{os.getpid()}",
                                                       "arguments": {}}, id=i)
            post_jsonrpc(c, env["server"].url, body, headers=hdrs)
    after = scrape(env)
    series = {k for k in after if not k[0].endswith(("_bucket", "_sum", "_count"))}
    print(f"\n/metrics series: {len(before)} before, {len(after)} after 300 distinct tool names")
    assert set(after) == set(before)
    assert not any("tool-" in v for (_, labels) in series for _, v in labels)
    assert value(after, "fiveplane_rule_decisions_total", rule="defaults.effect",
                 verdict="deny") == 301


def test_stream_cuts_and_redactions_counted_by_detector(tmp_path: Path, mcp_server: Any,
                                                        proxy_process: Any) -> None:
    import anyio
    from clients import mcp_client
    from test_data_plane import POLICY as DATA_POLICY
    from test_data_plane import EndlessSse

    feed = EndlessSse()
    try:
        server = mcp_server.start(json_response=True)
        policy = tmp_path / "policy.yaml"
        policy.write_text(DATA_POLICY.format(stream=feed.port, mcp=server.port,
                                             mcp_url=server.url))
        proxy = proxy_process.start_fiveplane(
            policy, state_dir=tmp_path / "state",
            extra=["--control", "127.0.0.1:0", "--control-token", TOKEN])
        control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
        assert control, proxy.output()
        env = {"control": control.group(1)}
        with http_client(proxy.url, proxy.ca_file, timeout=20) as c, \
                c.stream("GET", f"http://127.0.0.1:{feed.port}/feed") as r:
            try:
                for _ in r.iter_lines():
                    pass
            except httpx.HTTPError:
                pass                                # cut: the proxy closed the stream

        async def customer() -> Any:
            async with mcp_client(server.url, proxy.url, proxy.ca_file, mode="auto") as c:
                return await c.call_tool("get_customer", {"customer_id": "c-1"})

        assert "[REDACTED:" in anyio.run(customer).content[0].text
        metrics = wait_for(lambda: (m := scrape(env)) and value(
            m, "fiveplane_stream_cuts_total", rule="data.secrets.aws_secret_key") == 1 and m)
        assert value(metrics, "fiveplane_redactions_total", detector="pii.credit_card",
                     where="response") == 1
    finally:
        feed.close()
