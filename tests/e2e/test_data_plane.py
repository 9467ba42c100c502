"""The data plane end to end (real proxy): a secret in the third SSE event cuts the
stream there and closes the upstream at once; a card number in a JSON tool result comes
back redacted and still valid JSON; a secret the agent tries to send is refused."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from clients import http_client, mcp_client, read_evidence

pytestmark = pytest.mark.e2e

AWS_SECRET = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

POLICY = """
version: 1
name: data
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{stream}, {mcp}]}}]
mcp_servers:
  crm: {{url: "{mcp_url}"}}
data:
  detect: [secrets, pii.credit_card, pii.email]
  requests: {{secrets: deny}}
  responses: {{secrets: deny, pii.credit_card: redact}}
  labels: {{pii.credit_card: "read:customer_pii"}}
rules:
  - {{id: feed, match: {{host: 127.0.0.1, port: {stream}}}, effect: allow}}
  - {{id: crm, match: {{server: crm, tool: [get_customer, echo]}}, effect: allow}}
"""


class EndlessSse:
    """An upstream that would stream an event every 0.2 s for a minute; records when the
    proxy hung up on it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.sent: list[float] = []
        self.closed_at: float | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n")
            for i in range(300):
                text = AWS_SECRET if i == 2 else f"event {i}"
                event = f"data: {json.dumps({'seq': i, 'text': text})}\n\n".encode()
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                except OSError:
                    self.closed_at = time.monotonic()
                    return
                self.sent.append(time.monotonic())
                time.sleep(0.2)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def env(tmp_path: Path, mcp_server, proxy_process) -> Any:
    feed = EndlessSse()
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(stream=feed.port, mcp=server.port, mcp_url=server.url))
    proxy = proxy_process.start_fiveplane(policy, state_dir=tmp_path / "state")
    yield {"feed": feed, "server": server, "proxy": proxy, "state": tmp_path / "state"}
    feed.close()


def test_secret_in_third_event_cuts_the_stream_and_the_upstream(env: Any) -> None:
    events: list[str] = []
    with http_client(env["proxy"].url, env["proxy"].ca_file, timeout=20) as c, \
            c.stream("GET", f"http://127.0.0.1:{env['feed'].port}/feed") as r:
        assert r.status_code == 200
        try:
            for line in r.iter_lines():
                if line.startswith(("data:", "event:")):
                    events.append(line)
        except Exception:
            pass
        ended = time.monotonic()
    data = [json.loads(e[5:]) for e in events if e.startswith("data:")]
    assert [d.get("seq") for d in data[:2]] == [0, 1]
    assert "event: error" in events
    assert "data.secrets.aws_secret_key" in json.dumps(data[2])
    assert AWS_SECRET not in json.dumps(data)
    deadline = time.monotonic() + 3
    while env["feed"].closed_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert env["feed"].closed_at is not None, "the upstream was never disconnected"
    third_sent = env["feed"].sent[2] if len(env["feed"].sent) > 2 else ended
    assert env["feed"].closed_at - third_sent < 1.0
    assert len(env["feed"].sent) < 10  # it would have kept streaming for a minute


def test_card_number_in_a_json_tool_result_is_redacted(env: Any) -> None:
    async def call() -> Any:
        async with mcp_client(env["server"].url, env["proxy"].url, env["proxy"].ca_file,
                              mode="auto") as c:
            return await c.call_tool("get_customer", {"customer_id": "c-1"})

    result = anyio.run(call)
    text = result.content[0].text
    assert "4111 1111 1111 1111" not in text and "[REDACTED:" in text
    json.loads(text)  # still valid JSON inside the tool result
    assert "jane.doe@example.com" in text  # detected (pii.email) but allowed by the policy
    records = read_evidence(env["state"])
    assert any(r["outcome"] == "redacted" and
               r["decision"]["rule_ids"] == ["data.pii.credit_card"] for r in records)


def test_a_secret_the_agent_sends_is_refused(env: Any) -> None:
    async def call() -> str:
        async with mcp_client(env["server"].url, env["proxy"].url, env["proxy"].ca_file,
                              mode="auto") as c:
            try:
                await c.call_tool("echo", {"text": f"here you go: {AWS_SECRET}"})
            except Exception as e:
                return repr(e)
            return "sent"

    outcome = anyio.run(call)
    assert "data.secrets." in outcome and "fiveplane deny" in outcome
    assert [c for c in env["server"].calls() if c["tool"] == "echo"] == []
