"""The kill switch on open streams (real proxy, real MCP server): ``fiveplane sessions
kill`` ends a killed session's silent MCP SSE stream (the GET stream, where no chunk
ever arrives to be checked) within a few seconds, with an evidence record of the cut;
another session's stream stays open; the killed session's next call is denied. A
governed plain event stream is cut the same way."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from clients import (
    JSONRPC_ACCEPT,
    assert_reconstructable,
    http_client,
    legacy_handshake,
    parse_jsonrpc,
    post_jsonrpc,
    read_evidence,
)

from proxy.state import session_key

pytestmark = pytest.mark.e2e

TOKEN = "e2e-control-token-0123456789"
VERSION = "2025-11-25"

POLICY = """
version: 1
name: killswitch
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}, {web}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
rules:
  - {{id: crm-echo, match: {{server: crm, tool: echo}}, effect: allow}}
  - {{id: web, match: {{host: 127.0.0.1, method: GET}}, effect: allow}}
data:
  detect: [secrets]
  responses: {{secrets: redact}}
"""


class Stream:
    """A GET stream of one MCP session, read in a thread: ``ended`` is when it ended."""

    def __init__(self, env: dict[str, Any], task: str) -> None:
        self.env, self.task = env, task
        self.headers = {"X-Fiveplane-Session": task}
        self.client = http_client(env["proxy"].url, env["proxy"].ca_file, timeout=60,
                                  headers=self.headers)
        self.sid = legacy_handshake(self.client, env["server"].url)
        self.opened = threading.Event()
        self.ended: float | None = None
        self.status = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.opened.wait(15), "the GET stream did not open"

    def _read(self) -> None:
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": self.sid,
                   "MCP-Protocol-Version": VERSION}
        try:
            with self.client.stream("GET", self.env["server"].url, headers=headers) as r:
                self.status = r.status_code
                self.opened.set()
                for _ in r.iter_raw():
                    pass
        except Exception:
            pass  # a cut stream ends with a protocol error on the client side
        finally:
            self.opened.set()
            self.ended = time.monotonic()

    def call(self) -> dict[str, Any]:
        (msg,) = parse_jsonrpc(post_jsonrpc(
            self.client, self.env["server"].url,
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"text": "still there?"}}},
            session_id=self.sid, protocol_version=VERSION,
            headers={"Accept": JSONRPC_ACCEPT}))
        return msg

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def env(tmp_path: Path, mcp_server: Any, http_upstream: Any, proxy_process: Any
        ) -> dict[str, Any]:
    server = mcp_server.start()   # SSE answers and a GET stream per session
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url, web=http_upstream.port))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state, extra=["--control", "127.0.0.1:0", "--control-token", TOKEN])
    control = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert control, proxy.output()
    return {"server": server, "proxy": proxy, "state": state, "control": control.group(1),
            "web": http_upstream}


def sessions_cli(env: dict[str, Any], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "sessions", *args, "--control", env["control"],
         "--token", TOKEN], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_killing_a_session_cuts_its_silent_stream_and_denies_its_next_call(
        env: dict[str, Any]) -> None:
    doomed, spared = Stream(env, "doomed-task"), Stream(env, "spared-task")
    try:
        assert doomed.status == 200 and spared.status == 200
        assert "result" in doomed.call()          # alive: calls go through
        time.sleep(1.0)
        assert doomed.ended is None and spared.ended is None   # silent streams stay open

        killed_at = time.monotonic()
        sessions_cli(env, "kill", session_key(None, "doomed-task"), "--reason", "runaway")
        doomed.thread.join(10)
        assert doomed.ended is not None, "the killed session's stream is still open"
        assert doomed.ended - killed_at < 4
        time.sleep(1.0)
        assert spared.ended is None               # another session's stream is untouched

        denied = doomed.call()
        assert denied["error"]["data"]["rule_ids"] == ["session.killed"]
        assert "runaway" in denied["error"]["message"]
        assert "result" in spared.call()

        cuts = [r for r in read_evidence(env["state"]) if r["outcome"] == "cut"]
        assert len(cuts) == 1
        assert cuts[0]["decision"]["rule_ids"] == ["session.killed"]
        assert cuts[0]["action"]["mcp_method"] == "transport/stream"
        assert cuts[0]["session"] == session_key(None, "doomed-task")
        assert "runaway" in cuts[0]["decision"]["reason"]
    finally:
        doomed.close()
        spared.close()
    assert_reconstructable(env["state"])


def test_killing_a_session_cuts_its_plain_event_stream(env: dict[str, Any]) -> None:
    """A governed plain SSE download (the data plane scans it event by event)."""
    env["web"].set_sse("/feed", n=120, delay=0.5)     # a minute of events
    events: list[bytes] = []
    ended: list[float] = []

    def read() -> None:
        try:
            with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=60,
                             headers={"X-Fiveplane-Session": "feed-task"}) as c, \
                    c.stream("GET", f"{env['web'].url}/feed") as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line.encode())
        except Exception:
            pass  # cut: the client sees the connection close mid-stream
        ended.append(time.monotonic())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while len(events) < 2:
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.1)
    killed_at = time.monotonic()
    sessions_cli(env, "kill", session_key(None, "feed-task"), "--reason", "runaway download")
    thread.join(10)
    assert ended and ended[0] - killed_at < 4, "the killed session's download is still open"
    assert len(events) < 30
    cuts = [r for r in read_evidence(env["state"]) if r["outcome"] == "cut"]
    assert [c["decision"]["rule_ids"] for c in cuts] == [["session.killed"]]
    assert cuts[0]["action"]["path"] == "/feed"
