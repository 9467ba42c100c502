"""``fiveplane wrap`` end to end: a real MCP client (the ``mcp`` SDK's stdio client) launches
the wrapper, which runs a real stdio MCP server (``servers/stdio_server.py``) behind the
policy. Allowed calls work, denied calls get the proxy's JSON-RPC error naming the rule,
``tools/list`` is filtered, server requests are adjudicated, and every decision lands in
the evidence log of the state directory — in both protocol eras. The process plumbing
(EOF, exit status, signals, stdout discipline, the token kept from the server) is checked
with raw pipes.

Until ``wrap`` is registered in the CLI the wrapper runs as ``python -m proxy.mcp.wrap_cli``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
STDIO_SERVER = REPO_ROOT / "tests" / "e2e" / "servers" / "stdio_server.py"
WRAP = [sys.executable, "-m", "proxy.mcp.wrap_cli"]

# One policy for the HTTP server named `crm` and for the stdio server wrapped as `crm`.
POLICY = """
version: 1
name: wrap-e2e
mcp_servers:
  crm: {url: "http://127.0.0.1:9/mcp"}
rules:
  - {id: crm-read, match: {server: crm, tool: [echo, get_secret, add]}, effect: allow}
  - id: crm-refund-small
    match: {server: crm, tool: refund, args: {amount: {gt: 0, le: 100}}}
    effect: allow
  - id: crm-no-delete
    match: {server: crm, tool: delete_all}
    effect: deny
    reason: deleting every customer record is never a support task
  - {id: crm-ask, match: {server: crm, tool: ask_model}, effect: allow}
"""
SAMPLING_OK = """
  - {id: crm-sampling, match: {server: crm, mcp_method: sampling/createMessage}, effect: allow}
"""


class Wrapped:
    def __init__(self, tmp: Path, policy: str = POLICY, server_args: tuple[str, ...] = (),
                 server_id: str = "crm") -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(policy)
        self.state = tmp / "state"
        self.calls_log = tmp / "calls.jsonl"
        self.errlog = tmp / "wrap.stderr"
        self.argv = [*WRAP, "--server-id", server_id, "--policy", str(self.policy),
                     "--state-dir", str(self.state), "--",
                     sys.executable, str(STDIO_SERVER), "--calls-log", str(self.calls_log),
                     *server_args]

    def params(self, env: dict[str, str] | None = None) -> StdioServerParameters:
        return StdioServerParameters(command=self.argv[0], args=self.argv[1:],
                                     env={"PYTHONPATH": str(REPO_ROOT), **(env or {})},
                                     cwd=str(REPO_ROOT))

    @asynccontextmanager
    async def client(self, mode: str = "legacy", **kw: Any) -> AsyncIterator[Client]:
        with open(self.errlog, "a") as errlog:
            transport = stdio_client(self.params(), errlog=errlog)
            async with Client(transport, mode=mode, **kw) as c:  # type: ignore[arg-type]
                yield c

    def calls(self) -> list[str]:
        if not self.calls_log.exists():
            return []
        return [json.loads(line)["tool"] for line in self.calls_log.read_text().splitlines()]

    def records(self) -> list[dict[str, Any]]:
        out = []
        for chain in sorted((self.state / "audit").glob("audit-*.jsonl")):
            for line in chain.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("type") == "record":
                    out.append(entry["body"])
        return out


async def sampling(ctx: Any, params: Any) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="test",
                                     content=types.TextContent(type="text", text="summary!"))


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_policy_governs_the_stdio_server(tmp_path: Path, mode: str) -> None:
    w = Wrapped(tmp_path)

    async def scenario() -> None:
        async with w.client(mode) as c:
            listed = {t.name for t in (await c.list_tools()).tools}
            assert listed == {"echo", "refund", "get_secret", "ask_model"}   # no delete_all
            assert text_of(await c.call_tool("echo", {"text": "hi"})) == "hi"
            assert "refunded 20.00" in text_of(
                await c.call_tool("refund", {"customer_id": "c-1", "amount": 20}))
            with pytest.raises(MCPError) as denied:
                await c.call_tool("delete_all", {"confirm": True})
            assert denied.value.code == -32003
            assert denied.value.data["rule_ids"] == ["crm-no-delete"]
            assert "never a support task" in denied.value.message
            with pytest.raises(MCPError) as big:
                await c.call_tool("refund", {"customer_id": "c-1", "amount": 5000})
            assert big.value.data["rule_ids"] == ["defaults.effect"]

    anyio.run(scenario)
    assert w.calls() == ["echo", "refund"]            # denied calls never reached the server
    records = w.records()
    decided = [(r["action"].get("name"), r["outcome"], r["decision"]["rule_ids"])
               for r in records if r["action"] and r["action"].get("mcp_method") == "tools/call"]
    assert ("echo", "forwarded", ["crm-read"]) in decided
    assert ("delete_all", "denied", ["crm-no-delete"]) in decided
    assert all(r["action"]["scheme"] == "stdio" for r in records if r["action"])
    verify = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify",
                             str(w.state / "audit")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_poisoned_tool_is_removed_and_its_calls_denied(tmp_path: Path) -> None:
    w = Wrapped(tmp_path, server_args=("--poison",))

    async def scenario() -> None:
        async with w.client() as c:
            listed = {t.name for t in (await c.list_tools()).tools}
            assert "add" not in listed and "echo" in listed
            with pytest.raises(MCPError) as denied:
                await c.call_tool("add", {"a": 1, "b": 2, "sidenote": "x"})
            assert denied.value.data["rule_ids"][0].startswith("mcp.screen.")

    anyio.run(scenario)
    assert "add" not in w.calls()
    notes = [r for r in w.records() if r["outcome"] == "redacted"]
    assert notes and "mcp.screen.hidden.tag" in notes[0]["decision"]["rule_ids"]
    assert notes[0]["extra"]["mcp"]["tools"]["add"]


def test_server_requests_are_adjudicated(tmp_path: Path) -> None:
    w = Wrapped(tmp_path)

    async def denied() -> None:
        async with w.client(sampling_callback=sampling) as c:
            with pytest.raises(MCPError):
                await c.call_tool("ask_model", {"text": "hello"})

    anyio.run(denied)
    server_side = [r for r in w.records()
                   if r["action"] and r["action"].get("mcp_method") == "sampling/createMessage"]
    assert server_side and server_side[0]["outcome"] == "denied"
    assert server_side[0]["action"]["kind"] == "mcp_server"

    (tmp_path / "allowed").mkdir()
    allowed = Wrapped(tmp_path / "allowed", POLICY + SAMPLING_OK)

    async def permitted() -> None:
        async with allowed.client(sampling_callback=sampling) as c:
            assert text_of(await c.call_tool("ask_model", {"text": "hello"})) == "summary!"

    anyio.run(permitted)


def test_an_undeclared_server_is_known_by_its_id(tmp_path: Path) -> None:
    # Until the compiler knows stdio servers, an exact `stdio:notes` is an unknown server
    # name: a glob names it.
    policy = """
version: 1
name: by-id
rules:
  - {id: notes-plumbing, match: {server: "stdio:note?", mcp_method: [initialize,
     notifications/initialized, tools/list, server/discover]}, effect: allow}
  - {id: notes-echo, match: {server: "stdio:*", tool: echo}, effect: allow}
"""
    w = Wrapped(tmp_path, policy, server_id="notes")

    async def scenario() -> None:
        async with w.client() as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"echo"}
            assert text_of(await c.call_tool("echo", {"text": "x"})) == "x"

    anyio.run(scenario)


# --- process plumbing, with raw pipes ------------------------------------------------------------


def raw(argv: list[str], env: dict[str, str] | None = None,
        stderr: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, cwd=REPO_ROOT, env=full_env)


def wrap_argv(tmp: Path, child: list[str], policy: str = POLICY) -> list[str]:
    (tmp / "policy.yaml").write_text(policy)
    return [*WRAP, "--server-id", "crm", "--policy", str(tmp / "policy.yaml"), "--state-dir",
            str(tmp / "state"), "--", *child]


INIT = (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "raw", "version": "1"}}}) + "\n").encode()


def test_stdout_carries_only_jsonrpc_and_eof_ends_the_server(tmp_path: Path) -> None:
    proc = raw(wrap_argv(tmp_path, [sys.executable, str(STDIO_SERVER), "--noisy"]))
    delete = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "delete_all", "arguments": {}}}).encode() + b"\n"
    out, err = proc.communicate(INIT + delete, timeout=60)
    assert proc.returncode == 0                       # stdin closed → server done → exit 0
    lines = out.splitlines()
    messages = [json.loads(line) for line in lines]   # every stdout line is JSON-RPC
    assert {m["id"] for m in messages} == {1, 2}
    assert next(m for m in messages if m["id"] == 2)["error"]["data"]["rule_ids"] == \
        ["crm-no-delete"]
    assert b"stdio server crm starting" in err        # the server's stderr is passed through


def test_exit_status_and_the_token_is_kept_from_the_server(tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    child = [sys.executable, "-c",
             f"import os, sys; open({str(seen)!r}, 'w').write(os.environ.get("
             "'FIVEPLANE_TOKEN', 'absent')); sys.exit(3)"]
    proc = raw(wrap_argv(tmp_path, child), env={"FIVEPLANE_TOKEN": "fp1.not-for-servers"})
    proc.communicate(b"", timeout=60)
    assert proc.returncode == 3
    assert seen.read_text() == "absent"


def test_signals_are_forwarded_and_the_wrapper_dies_like_the_server(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = [sys.executable, "-c",
             f"import time; open({str(ready)!r}, 'w').close(); time.sleep(60)"]
    proc = raw(wrap_argv(tmp_path, child))
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)                  # the wrapper only, not its group
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_an_invalid_policy_is_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    child = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    proc = raw(wrap_argv(tmp_path, child, policy="version: 1\nrules: 7\n"))
    out, err = proc.communicate(INIT, timeout=60)
    assert proc.returncode == 3
    assert out == b"" and err
    assert not marker.exists()
