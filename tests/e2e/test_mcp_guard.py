"""MCP in depth through the real proxy: a rug pull holds calls until an operator approves
the new definitions with `fiveplane pins`; a poisoned tool disappears from the list the
agent sees and calls to it are denied; two servers offering `send_email` are kept apart and
the shadowing is in the evidence log; an `Mcp-Session-Id` presented by another principal is
denied; a server's sampling request is adjudicated; one policy test suite holds for the
adjudicator (`fiveplane test`), the proxy over HTTP and `fiveplane wrap` over stdio."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from clients import (
    assert_reconstructable,
    http_client,
    legacy_handshake,
    mcp_client,
    modern_request,
    parse_jsonrpc,
    post_jsonrpc,
    read_evidence,
)
from harness import MCP_SERVER_READY
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

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


# --- shadowing, session binding, server → client requests, one suite on both paths ---------

MCP_SERVER = Path(__file__).parent / "servers" / "mcp_server.py"
STDIO_SERVER = Path(__file__).parent / "servers" / "stdio_server.py"
REPO_ROOT = Path(__file__).resolve().parents[2]


def start_rug(tmp_path: Path, proxy_process, name: str, *, json_response: bool = True) -> Any:
    """A rugpull_server instance named ``name`` logging its calls to ``calls-NAME.jsonl``."""
    log = tmp_path / f"calls-{name}.jsonl"
    log.touch()
    argv = [sys.executable, str(RUGPULL), "--port", "0", "--name", name,
            "--calls-log", str(log)]
    server = proxy_process.start(argv + (["--json-response"] if json_response else []),
                                 MCP_SERVER_READY)
    server.calls_log = log
    server.mcp_url = f"http://127.0.0.1:{server.port}/mcp"
    return server


def logged_calls(server: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.calls_log.read_text().splitlines() if line]


def post(proxy: Any, url: str, body: Any, **kw: Any) -> list[dict[str, Any]]:
    with http_client(proxy.url, proxy.ca_file) as c:
        return parse_jsonrpc(post_jsonrpc(c, url, body, **kw))


SHADOW_POLICY = """
version: 1
name: shadowing
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port_a}, {port_b}]}}]
mcp_servers:
  mail_a: {{url: "{url_a}"}}
  mail_b: {{url: "{url_b}"}}
mcp:
  screen: false
rules:
  - {{id: mail-send, match: {{server: [mail_a, mail_b], tool: send_email}}, effect: allow}}
"""


def test_shadowed_tool_reaches_the_addressed_server_and_is_recorded(
        tmp_path: Path, proxy_process) -> None:
    a = start_rug(tmp_path, proxy_process, "mail-a")
    b = start_rug(tmp_path, proxy_process, "mail-b")
    policy = tmp_path / "policy.yaml"
    policy.write_text(SHADOW_POLICY.format(port_a=a.port, port_b=b.port, url_a=a.mcp_url,
                                           url_b=b.mcp_url))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state, extra=["--control", "off"])

    for n, server in enumerate((a, b)):
        body, headers = modern_request("tools/list", {}, id=n + 1)
        (listed,) = post(proxy, server.mcp_url, body, headers=headers)
        assert "send_email" in [t["name"] for t in listed["result"]["tools"]], listed
    body, headers = modern_request("tools/call", {"name": "send_email", "arguments": {
        "to": "bob@example.com", "body": "hi"}}, id=9)
    (sent,) = post(proxy, a.mcp_url, body, headers=headers)
    assert "result" in sent and not sent["result"].get("isError"), sent
    assert "sent by mail-a" in json.dumps(sent["result"])
    assert [(c["tool"], c["server"]) for c in logged_calls(a)] == [("send_email", "mail-a")]
    assert logged_calls(b) == []                     # routed by server identity, not by name

    shadow = [r for r in read_evidence(state) if "mcp.shadowing" in r["decision"]["rule_ids"]]
    assert shadow, [r["decision"]["rule_ids"] for r in read_evidence(state)]
    detail = shadow[0]["extra"]["mcp"]
    assert [f for f in detail["shadowed"] if "send_email" in json.dumps(f)], detail
    assert f":{a.port}/mcp" in json.dumps(detail) or f":{b.port}/mcp" in json.dumps(detail)


def token_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "proxy", "token", *args], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


BINDING_POLICY = """
version: 1
name: binding
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  rug: {{url: "{url}"}}
mcp:
  screen: false
identity:
  trusted_roots: [{{name: corp, key_file: keys/corp.pub}}]
  anonymous: policy
rules:
  - {{id: rug-mail, match: {{server: rug, tool: send_email}}, effect: allow}}
"""

LEGACY = "2025-11-25"


def test_a_session_id_replayed_by_another_principal_is_denied(tmp_path: Path,
                                                               proxy_process) -> None:
    rug = start_rug(tmp_path, proxy_process, "rug")
    keys = tmp_path / "keys"
    token_cli("keygen", "--out", str(keys), "--name", "corp")
    tokens = {who: token_cli("mint", "--root-key", str(keys / "corp.key"), "--principal", who,
                             "--kind", "agent", "--cap", json.dumps({"server": "rug"}),
                             "--ttl", "600")
              for who in ("alice", "mallory")}
    policy = tmp_path / "policy.yaml"
    policy.write_text(BINDING_POLICY.format(port=rug.port, url=rug.mcp_url))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state, extra=["--control", "off"])

    def call(who: str | None, session_id: str, rpc_id: int) -> dict[str, Any]:
        headers = {"X-Fiveplane-Token": tokens[who]} if who else {}
        body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                "params": {"name": "send_email", "arguments": {"to": who or "anon",
                                                               "body": "x"}}}
        (msg,) = post(proxy, rug.mcp_url, body, headers=headers, session_id=session_id,
                      protocol_version=LEGACY)
        return msg

    with http_client(proxy.url, proxy.ca_file,
                     headers={"X-Fiveplane-Token": tokens["alice"]}) as c:
        session = legacy_handshake(c, rug.mcp_url)
    assert "result" in call("alice", session, 1)
    hijacked = call("mallory", session, 2)
    assert hijacked["error"]["data"]["rule_ids"] == ["mcp.session_hijack"], hijacked
    anonymous = call(None, session, 3)                 # judged by rules, still not the owner
    assert anonymous["error"]["data"]["rule_ids"] == ["mcp.session_hijack"], anonymous
    again = call("alice", session, 4)
    assert "result" in again and not again["result"].get("isError"), again
    assert [c["arguments"]["to"] for c in logged_calls(rug)] == ["alice", "alice"]
    denied = [r for r in read_evidence(state)
              if "mcp.session_hijack" in r["decision"]["rule_ids"]]
    assert [(r["outcome"], r["decision"]["verdict"]) for r in denied] == \
        [("refused", "deny")] * 2, denied


SAMPLING_POLICY = """
version: 1
name: sampling
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  rug: {{url: "{url}"}}
mcp:
  screen: false
rules:
  - {{id: rug-ask, match: {{server: rug, tool: ask_model}}, effect: allow}}
"""
SAMPLING_RULE = """
  - {id: rug-sampling, match: {server: rug, mcp_method: sampling/createMessage}, effect: allow}
"""


async def sampled(ctx: Any, params: Any) -> Any:
    return types.CreateMessageResult(role="assistant", model="test",
                                     content=types.TextContent(type="text", text="summary!"))


def mcp_error_of(e: BaseException) -> Any:
    if isinstance(e, MCPError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = mcp_error_of(inner)
        if found is not None:
            return found
    return None


def start_sampling(tmp_path: Path, proxy_process, extra: str) -> tuple[Any, Any, Path]:
    rug = start_rug(tmp_path, proxy_process, "rug", json_response=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(SAMPLING_POLICY.format(port=rug.port, url=rug.mcp_url) + extra)
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state, extra=["--control", "off"])
    return rug, proxy, state


def ask_model(rug: Any, proxy: Any, asked: list[str], limit: float = 8.0, *,
              on_call_stream: bool = False) -> str:
    """Call ``ask_model`` with a legacy client that declares sampling; ``ok: TEXT``,
    ``denied: MESSAGE DATA`` or ``timeout``."""

    async def callback(ctx: Any, params: Any) -> Any:
        asked.append("sampling")
        return await sampled(ctx, params)

    async def ask() -> str:
        try:
            with anyio.fail_after(limit):
                async with mcp_client(rug.mcp_url, proxy.url, proxy.ca_file, mode="legacy",
                                      sampling_callback=callback) as c:
                    result = await c.call_tool("ask_model", {
                        "text": "hello", "on_call_stream": on_call_stream})
                    return "ok: " + "".join(getattr(x, "text", "") for x in result.content)
        except TimeoutError:
            return "timeout"
        except Exception as e:
            err = mcp_error_of(e)
            if err is None:
                raise
            return f"denied: {err.message} {json.dumps(err.data)}"

    return anyio.run(ask)


@pytest.mark.parametrize("on_call_stream", [False, True], ids=["get-stream", "call-stream"])
def test_sampling_request_denied_by_policy_is_answered_for_the_client(
        tmp_path: Path, proxy_process, on_call_stream: bool) -> None:
    """The server's sampling request is withheld from the agent and answered by the proxy
    with the denial, so the tool call ends at once (the SDK server would wait forever)
    instead of at the agent's timeout; on the call's own stream the agent gets the denial
    directly, on the standalone GET stream the server passes it on."""
    rug, proxy, state = start_sampling(tmp_path, proxy_process, "")
    asked: list[str] = []
    started = time.monotonic()
    denied = ask_model(rug, proxy, asked, limit=20.0, on_call_stream=on_call_stream)
    elapsed = time.monotonic() - started
    assert asked == []                                 # the client never saw the request
    assert denied.startswith("denied: ") and "defaults.effect" in denied, denied
    assert elapsed < 10.0, elapsed
    evidence = read_evidence(state)
    server_side = [r for r in evidence
                   if (r["action"] or {}).get("mcp_method") == "sampling/createMessage"]
    assert [(r["action"]["kind"], r["outcome"], r["decision"]["rule_ids"])
            for r in server_side] == [("mcp_server", "denied", ["defaults.effect"])]
    sampling_id = server_side[0]["action"]["rpc_id"]
    answers = [r for r in evidence if (r["action"] or {}).get("mcp_method") == "client/response"]
    assert [(r["action"]["rpc_id"], r["outcome"], r["decision"]["rule_ids"])
            for r in answers] == [(sampling_id, "forwarded", ["mcp.lifecycle"])]
    # the server got the denial as the answer to its request, with the decision id
    failed = [c for c in logged_calls(rug) if c["tool"] == "ask_model.sampling_failed"]
    assert len(failed) == 1 and "defaults.effect" in failed[0]["arguments"]["error"], failed
    assert "answered withheld" in proxy.output()
    assert_reconstructable(state)


def test_sampling_request_allowed_by_rule_passes_through(tmp_path: Path,
                                                         proxy_process) -> None:
    rug, proxy, state = start_sampling(tmp_path, proxy_process, SAMPLING_RULE)
    asked: list[str] = []
    assert ask_model(rug, proxy, asked) == "ok: summary!"
    assert asked == ["sampling"]
    server_side = [r for r in read_evidence(state)
                   if (r["action"] or {}).get("mcp_method") == "sampling/createMessage"]
    assert [(r["outcome"], r["decision"]["rule_ids"]) for r in server_side] == \
        [("forwarded", ["rug-sampling"])]


# One policy for the HTTP server `crm` (mcp_server.py) and the stdio server wrapped as `crm`.
BOTH_POLICY = """
version: 1
name: both-paths
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - {{id: crm-read, match: {{server: crm, tool: echo}}, effect: allow}}
  - id: crm-refund-small
    match: {{server: crm, tool: refund, args: {{amount: {{gt: 0, le: 100}}}}}}
    effect: allow
  - id: crm-no-delete
    match: {{server: crm, tool: delete_all}}
    effect: deny
    reason: deleting every customer record is never a support task
"""

# (name, tool, arguments, verdict, rule)
BOTH_CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("echo is allowed", "echo", {"text": "hi"}, "allow", "crm-read"),
    ("a small refund is allowed", "refund", {"customer_id": "c-1", "amount": 50},
     "allow", "crm-refund-small"),
    ("a large refund falls to the default", "refund", {"customer_id": "c-1", "amount": 5000},
     "deny", "defaults.effect"),
    ("a string amount never helps", "refund", {"customer_id": "c-1", "amount": "50"},
     "deny", "defaults.effect"),
    ("delete_all is denied", "delete_all", {"confirm": True}, "deny", "crm-no-delete"),
]


def suite_yaml() -> str:
    lines = ["policy: policy.yaml", "cases:"]
    for name, tool, args, verdict, rule in BOTH_CASES:
        lines += [f"  - name: {json.dumps(name)}", "    server: crm", f"    tool: {tool}",
                  f"    arguments: {json.dumps(args)}",
                  f"    expect: {{verdict: {verdict}, rule: {rule}}}"]
    return "\n".join(lines) + "\n"


def outcome_of(result: Any = None, error: BaseException | None = None) -> tuple[str, list[str]]:
    if error is None:
        return ("error" if result.is_error else "allow"), []
    err = mcp_error_of(error)
    assert err is not None, repr(error)
    return "deny", list((err.data or {}).get("rule_ids", []))


async def run_cases(client: Any) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for name, tool, args, _verdict, _rule in BOTH_CASES:
        try:
            result = await client.call_tool(tool, args)
        except Exception as e:
            out[name] = outcome_of(error=e)
        else:
            out[name] = outcome_of(result)
    return out


def check_live(path: str, live: dict[str, tuple[str, list[str]]],
               records: list[dict[str, Any]]) -> None:
    forwarded = {}
    for r in records:
        action = r.get("action") or {}
        if action.get("mcp_method") == "tools/call" and r["outcome"] == "forwarded":
            forwarded.setdefault(action.get("name"), []).append(r["decision"]["rule_ids"])
    for name, tool, _args, verdict, rule in BOTH_CASES:
        got_verdict, rules = live[name]
        assert got_verdict == verdict, (path, name, live[name])
        if verdict == "deny":
            assert rule in rules, (path, name, rules)
        else:
            assert [rule] in forwarded.get(tool, []), (path, name, forwarded)


def test_one_policy_suite_passes_on_the_proxy_and_the_wrapper(
        tmp_path: Path, mcp_server, proxy_process) -> None:

    server = mcp_server.start(name="crm")
    policy = tmp_path / "policy.yaml"
    policy.write_text(BOTH_POLICY.format(port=server.port, url=server.url))
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite_yaml())
    done = subprocess.run([sys.executable, "-m", "proxy", "test", str(suite), "--format",
                           "json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [r["status"] for r in report["results"]] == ["pass"] * len(BOTH_CASES), report
    assert report["summary"]["pass"] == len(BOTH_CASES), report

    # over HTTP, through the proxy
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(policy, state_dir=state, extra=["--control", "off"])

    async def over_http() -> dict[str, tuple[str, list[str]]]:
        async with mcp_client(server.url, proxy.url, proxy.ca_file, mode="legacy") as c:
            return await run_cases(c)

    http_live = anyio.run(over_http)
    check_live("http", http_live, read_evidence(state))
    assert sorted(c["tool"] for c in server.calls()) == ["echo", "refund"]

    # through `fiveplane wrap` around the stdio server
    wrap_state = tmp_path / "wrap-state"
    calls = tmp_path / "stdio-calls.jsonl"
    argv = [sys.executable, "-m", "proxy.mcp.wrap_cli", "--server-id", "crm", "--policy",
            str(policy), "--state-dir", str(wrap_state), "--", sys.executable,
            str(STDIO_SERVER), "--calls-log", str(calls)]
    params = StdioServerParameters(command=argv[0], args=argv[1:],
                                   env={"PYTHONPATH": str(REPO_ROOT)}, cwd=str(REPO_ROOT))

    async def wrapped() -> dict[str, tuple[str, list[str]]]:
        with open(tmp_path / "wrap.stderr", "a") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy") as c:  # type: ignore[arg-type]
                return await run_cases(c)

    wrap_live = anyio.run(wrapped)
    check_live("wrap", wrap_live, read_evidence(wrap_state))
    assert sorted(json.loads(line)["tool"] for line in calls.read_text().splitlines()) == \
        ["echo", "refund"]
    assert http_live == wrap_live
