"""``fiveplane approvals|sessions`` against a live control server on an ephemeral port."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import pytest

from proxy.approvals import MemoryApprovalStore, Status
from proxy.control import ControlAuth, ThreadedControlServer, create_app
from proxy.control import cli as control_cli
from proxy.principal import Link, Principal, PrincipalKind
from proxy.state import MemoryStore

TOKEN = "cli-control-token-0123456789abcdef"
SESSION = "3f9a0c1d2e4b.00000000000000000000000000000002"
CHAIN = Principal((Link("alice", PrincipalKind.HUMAN), Link("refunder", PrincipalKind.AGENT)))


@pytest.fixture
def stores() -> tuple[MemoryApprovalStore, MemoryStore]:
    sessions = MemoryStore()
    sessions.touch(SESSION, "3f9a0c1d2e4b" + "0" * 52, time.time())
    return MemoryApprovalStore(), sessions


@pytest.fixture
def server(stores) -> Iterator[ThreadedControlServer]:
    approvals, sessions = stores
    auth = ControlAuth({"bob": TOKEN, "refunder": "refunder-token-0123456789"})
    with ThreadedControlServer(create_app(approvals, auth, sessions)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("FIVEPLANE_CONTROL_TOKEN", "FIVEPLANE_CONTROL_URL", "HTTP_PROXY",
                 "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def fiveplane(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fiveplane")
    sub = parser.add_subparsers(dest="command", required=True)
    control_cli.add_parser(sub)
    args = parser.parse_args(argv)
    assert args.command in control_cli.COMMANDS
    return control_cli.run(args)


def held(approvals: MemoryApprovalStore, amount: int) -> str:
    return approvals.request(
        f"sha256:{amount}", rule_ids=["refund.over_threshold"], reason="refunds over 500",
        principal=CHAIN, session=SESSION,
        action={"summary": "MCP tools/call refund on bank", "name": "refund",
                "arguments": {"amount": amount, "password": "***"}}).id


def test_approvals_list_approve_deny(server, stores, capsys, tmp_path):
    approvals, _ = stores
    a, b = held(approvals, 900), held(approvals, 1200)
    url = ["--control", server.url, "--token", TOKEN]

    assert fiveplane("approvals", "list", *url) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 pending approval requests")
    assert a in out and b in out and "human:alice → agent:refunder" in out
    assert "refund.over_threshold: refunds over 500" in out
    assert '"amount": 900' in out and '"password": "***"' in out

    assert fiveplane("approvals", "approve", a, "--reason", "called the customer", *url) == 0
    assert capsys.readouterr().out.strip() == f"{a}: approved by bob (called the customer)"
    assert approvals.get(a).status is Status.APPROVED and approvals.get(a).approver == "bob"

    assert fiveplane("approvals", "deny", b, *url) == 0
    assert capsys.readouterr().out.strip() == f"{b}: denied by bob"
    assert approvals.get(b).status is Status.DENIED

    assert fiveplane("approvals", "list", "--status", "all", "--format", "json", *url) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["status"] for r in listed} == {a: "approved", b: "denied"}

    assert fiveplane("approvals", "show", a, *url) == 0
    assert json.loads(capsys.readouterr().out)["approver"] == "bob"

    assert fiveplane("approvals", "approve", a, *url) == 1
    err = capsys.readouterr().err
    assert "already approved by bob" in err and "HTTP 409" in err


def test_sessions_list_and_kill(server, stores, capsys):
    approvals, sessions = stores
    a = held(approvals, 900)
    url = ["--control", server.url, "--token", TOKEN]
    assert fiveplane("sessions", "list", *url) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 session\n") and SESSION in out and "held 1" in out
    assert "active" in out

    assert fiveplane("sessions", "kill", SESSION, "--reason", "runaway", *url) == 0
    out = capsys.readouterr().out
    assert "killed (runaway (killed by bob)); 1 held call released as denied" in out
    assert sessions.killed(SESSION) == "runaway (killed by bob)"
    assert approvals.get(a).status is Status.CANCELLED

    assert fiveplane("sessions", "list", "--format", "json", *url) == 0
    assert json.loads(capsys.readouterr().out)[0]["killed"] == "runaway (killed by bob)"
    assert fiveplane("sessions", "kill", "nope.1", *url) == 1
    assert "no session" in capsys.readouterr().err


def test_token_from_the_environment_and_from_the_state_dir(server, stores, capsys, tmp_path,
                                                           monkeypatch):
    approvals, _ = stores
    held(approvals, 900)
    monkeypatch.setenv("FIVEPLANE_CONTROL_URL", server.url)
    monkeypatch.setenv("FIVEPLANE_CONTROL_TOKEN", TOKEN)
    assert fiveplane("approvals", "list", "--state-dir", str(tmp_path)) == 0
    assert "1 pending" in capsys.readouterr().out
    monkeypatch.delenv("FIVEPLANE_CONTROL_TOKEN")
    (tmp_path / "control.token").write_text(f"bob {TOKEN}\n")
    assert fiveplane("approvals", "list", "--state-dir", str(tmp_path)) == 0
    assert "1 pending" in capsys.readouterr().out


def test_errors(server, stores, capsys, tmp_path):
    approvals, _ = stores
    a = held(approvals, 900)
    assert fiveplane("approvals", "list", "--control", server.url,
                     "--state-dir", str(tmp_path)) == 1
    assert "no control token" in capsys.readouterr().err
    assert fiveplane("approvals", "list", "--control", server.url,
                     "--token", "wrong-token-0123456789") == 1
    assert "not valid (HTTP 403)" in capsys.readouterr().err
    # the agent's own principal holds a token: it still cannot approve its call
    assert fiveplane("approvals", "approve", a, "--control", server.url,
                     "--token", "refunder-token-0123456789") == 1
    assert "agents cannot approve their own calls" in capsys.readouterr().err
    assert approvals.get(a).status is Status.PENDING
    assert fiveplane("approvals", "approve", "nope", "--control", server.url,
                     "--token", TOKEN) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_unreachable_control_api(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fiveplane("approvals", "list", "--control", f"http://127.0.0.1:{port}",
                     "--token", TOKEN) == 1
    assert "cannot reach the control API" in capsys.readouterr().err


def test_cli_does_not_go_through_a_proxy(server, stores, capsys, monkeypatch):
    """Agents' shells point HTTP_PROXY at fiveplane itself; the CLI talks to the API direct."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert fiveplane("approvals", "list", "--control", server.url, "--token", TOKEN) == 0


def test_generated_ids_and_tokens_can_be_typed_after_a_cli_flag():
    # argparse reads `approve -Xy…` / `--token -Xy…` as an option: an id or token starting
    # with "-" (one in 64 of token_urlsafe) would be unusable from the command line.
    from proxy.approvals.memory import new_id
    from proxy.control.auth import new_token

    assert not any(new_id().startswith("-") for _ in range(5000))
    assert not any(new_token().startswith("-") for _ in range(5000))
