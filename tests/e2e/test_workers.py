"""``fiveplane run --workers N``: N proxy processes behind one port (SO_REUSEPORT), sharing
the SQLite state in the state directory, one evidence chain each; the supervisor forwards
SIGTERM, stops everything when a worker dies, and refuses state the workers cannot share."""

from __future__ import annotations

import inspect
import os
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
from clients import assert_reconstructable, read_evidence
from commands import fiveplane_argv
from load import concurrent_calls, denied_by, passed

pytestmark = pytest.mark.e2e

POLICY = """
version: 1
name: workers
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
mcp_servers:
  crm: {{url: "{url}"}}
budgets:
  - {{id: refund-budget, match: {{server: crm, tool: refund}}, sum: amount, limit: 1000,
     per: global}}
rules:
  - {{id: crm-calls, match: {{server: crm, tool: [echo, refund]}}, effect: allow}}
  - id: refund-large
    match: {{server: crm, tool: refund, args: {{amount: {{gt: 100}}}}}}
    effect: escalate
    reason: refunds over 100 need finance
"""
TOKEN = "e2e-control-token-workers-0123456789"


def worker_pids(output: str) -> list[int]:
    m = re.search(r"with \d+ workers \(pids ([\d, ]+)\)", output)
    assert m, output
    return [int(p) for p in m.group(1).split(", ")]


def gone(pids: list[int], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                # a zombie (exited, not yet reaped by its parent) counts as gone
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        continue
                alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def env(tmp_path: Path, mcp_server, proxy_process) -> dict[str, Any]:
    server = mcp_server.start(json_response=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port, url=server.url))
    state = tmp_path / "state"
    proxy = proxy_process.start_fiveplane(
        policy, state_dir=state,
        extra=["--workers", "2", "--control", "127.0.0.1:0", "--control-token", TOKEN])
    return {"server": server, "proxy": proxy, "state": state, "policy": policy}


def test_two_workers_serve_one_port_each_with_its_own_chain(env: dict[str, Any]) -> None:
    proxy, server = env["proxy"], env["server"]
    pids = worker_pids(proxy.output())
    assert len(pids) == 2
    assert re.search(r"console\s+http://127\.0\.0\.1:\d+ \(worker 0", proxy.output())

    replies = concurrent_calls([proxy.url], None, server.url, "echo",
                               [{"text": f"hello-{i}"} for i in range(60)])
    assert passed(replies) == 60, replies[:3]
    assert sorted(c["arguments"]["text"] for c in server.calls()) == \
        sorted(f"hello-{i}" for i in range(60))

    chains = sorted((env["state"] / "audit").glob("audit-*.jsonl"))
    assert [re.search(r"-w(\d)-", p.name).group(1) for p in chains] == ["0", "1"]
    per_chain = {p.name: sum('"type":"record"' in line or '"type": "record"' in line
                             for line in p.read_text().splitlines()) for p in chains}
    assert all(n > 0 for n in per_chain.values()), per_chain   # both workers got traffic
    echoes = [r for r in read_evidence(env["state"])
              if r["action"].get("name") == "echo" and r["decision"]["verdict"] == "allow"]
    assert len(echoes) == 60
    assert_reconstructable(env["state"])           # verify + explain over both chains

    # SIGTERM to the supervisor alone: it stops both workers and exits cleanly
    os.kill(proxy.proc.pid, signal.SIGTERM)
    assert proxy.proc.wait(20) == 0
    assert gone(pids), pids


def test_budget_is_exact_across_workers_sharing_the_sqlite_state(env: dict[str, Any]) -> None:
    proxy, server = env["proxy"], env["server"]
    replies = concurrent_calls([proxy.url], None, server.url, "refund",
                               [{"customer_id": f"c-{i}", "amount": 10} for i in range(200)])
    assert passed(replies) == 100, denied_by(replies)
    assert denied_by(replies) == {"refund-budget": 100}
    assert len([c for c in server.calls() if c["tool"] == "refund"]) == 100


def test_worker_0s_console_releases_calls_held_on_any_worker(env: dict[str, Any]) -> None:
    proxy, server = env["proxy"], env["server"]
    console = re.search(r"console\s+(http://127\.0\.0\.1:\d+)", proxy.output())
    assert console, proxy.output()
    out: dict[str, Any] = {}

    def held() -> None:   # 6 connections: both workers hold some (all on one: p = 1/32)
        out["replies"] = concurrent_calls([proxy.url], None, server.url, "refund",
                                          [{"customer_id": f"c-{i}", "amount": 101 + i}
                                           for i in range(6)])
        out["done"] = time.monotonic()

    thread = threading.Thread(target=held)
    thread.start()
    with httpx.Client(base_url=console.group(1), trust_env=False, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        deadline = time.monotonic() + 30
        pending: list[dict[str, Any]] = []
        while len(pending) < 6 and time.monotonic() < deadline:
            pending = api.get("/api/approvals", params={"status": "pending"}).json()[
                "approvals"]
            time.sleep(0.1)
        assert len(pending) == 6, pending
        sent = time.monotonic()
        for request in pending:
            assert api.post(f"/api/approvals/{request['id']}/approve").status_code == 200
    thread.join(30)
    assert passed(out["replies"]) == 6, out["replies"]
    # another worker's held call learns of the decision by its store's poll (SQLite: 1 s)
    assert out["done"] - sent < 3.0
    assert sorted(c["arguments"]["amount"] for c in server.calls()) == list(range(101, 107))


def test_a_dead_worker_stops_the_supervisor_and_the_others(env: dict[str, Any]) -> None:
    proxy = env["proxy"]
    first, second = worker_pids(proxy.output())
    os.kill(second, signal.SIGKILL)
    assert proxy.proc.wait(20) == 1
    assert gone([first])
    assert re.search(rf"worker 1 \(pid {second}\) exited with status -9; stopping the other "
                     "workers", proxy.output())


def test_killing_the_supervisor_takes_the_workers_with_it(env: dict[str, Any]) -> None:
    pids = worker_pids(env["proxy"].output())
    os.kill(env["proxy"].proc.pid, signal.SIGKILL)
    assert gone(pids), pids                        # PR_SET_PDEATHSIG


def test_state_the_workers_cannot_share_is_refused(tmp_path: Path, env: dict[str, Any]) -> None:
    for extra, message in [(["--state", "memory:"], "needs state the workers share"),
                           (["--record", str(tmp_path / "f.flows")], "--record cannot be used"),
                           (["--workers", "0"], "at least 1")]:
        argv = fiveplane_argv(env["policy"], "127.0.0.1:0", tmp_path / "certs",
                              tmp_path / "other-state", extra=["--workers", "2", *extra])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        assert done.returncode == 3, (extra, done.stdout, done.stderr)
        assert message in done.stderr


def test_the_reuse_port_listener_mirrors_mitmproxys() -> None:
    # ``addons/reuseport.py`` replaces mitmproxy's listen call with the same call plus
    # reuse_port=True: if mitmproxy changes that call, this fails (review the patch)
    from addons import reuseport

    assert reuseport.UPSTREAM_CALL in inspect.getsource(reuseport.UPSTREAM_LISTEN)
    assert sys.platform != "linux" or hasattr(__import__("socket"), "SO_REUSEPORT")
