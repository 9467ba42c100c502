"""``fiveplane token`` keygen | mint | attenuate | seal | inspect, through ``run``."""

from __future__ import annotations

import argparse
import io
import json
import stat
from pathlib import Path

import pytest

from proxy.identity import IdentityError, Verifier, load_public_key
from proxy.identity import cli as token_cli
from proxy.testing import mcp_call

T0 = 1_800_000_000


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fiveplane")
    sub = parser.add_subparsers(dest="command", required=True)
    token_cli.add_parser(sub)
    args = parser.parse_args(list(argv))
    assert args.command == "token"
    return token_cli.run(args)


@pytest.fixture
def keydir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run("token", "keygen", "--out", str(tmp_path / "keys"), "--name", "corp") == 0
    out = capsys.readouterr().out
    assert "key id:" in out
    return tmp_path / "keys"


def test_keygen_writes_a_private_key_only_the_owner_can_read(keydir: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    private, public = keydir / "corp.key", keydir / "corp.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    assert run("token", "keygen", "--out", str(keydir), "--name", "corp") == 1
    assert "exists" in capsys.readouterr().err


def test_mint_attenuate_inspect(keydir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    planner_file = tmp_path / "planner.token"
    assert run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "alice",
               "--kind", "human", "--cap", '{"server": "crm", "tool": "refund", '
               '"args": {"amount": {"le": 500}}}', "--cap", "{server: crm, tool: 'get_*'}",
               "--ttl", "3600", "--now", str(T0), "--out", str(planner_file)) == 0
    assert stat.S_IMODE(planner_file.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run("token", "attenuate", str(planner_file), "--principal", "sub-1",
               "--cap", "[{server: crm, tool: refund, args: {amount: {le: 100}}}, "
               "{server: '*', tool: '*'}]", "--ttl", "600", "--now", str(T0)) == 0
    sub = capsys.readouterr().out.strip()
    assert sub.startswith("fp1.")
    chain = Verifier({"corp": load_public_key((keydir / "corp.pub").read_bytes())}).verify(
        sub, T0 + 1)
    assert not isinstance(chain, IdentityError)
    assert str(chain.principal) == "alice → sub-1"
    assert chain.admits(mcp_call("refund", amount=50)) is True
    # sub-1's `server: *, tool: *` grant is wider than alice's: only the intersection.
    assert chain.admits(mcp_call("refund", amount=300)) is True
    assert chain.admits(mcp_call("refund", amount=600)) is not True
    assert chain.admits(mcp_call("delete_customer")) is not True

    assert run("token", "inspect", sub, "--root", f"corp={keydir / 'corp.pub'}",
               "--at", str(T0 + 1)) == 0
    text = capsys.readouterr().out
    assert "block 0  human `alice`" in text and "block 1  agent `sub-1`" in text
    assert "server=crm tool=refund amount<=100" in text
    assert "! server=* tool=*" in text                     # not within the parent
    assert "verification: ok — root `corp`, principal alice → sub-1" in text
    assert "expires in 599 s" in text

    assert run("token", "inspect", sub, "--root", str(keydir / "corp.pub"), "--format", "json",
               "--at", str(T0 + 700)) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["code"] == "expired"
    assert report["depth"] == 2 and report["effective"]["not_after"] == T0 + 600


def test_inspect_without_or_with_a_wrong_root(keydir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "alice",
        "--cap", "{host: api.example.com}", "--now", str(T0))
    token = capsys.readouterr().out.strip()
    assert run("token", "inspect", token, "--at", str(T0)) == 3
    assert "no trusted root given" in capsys.readouterr().out
    run("token", "keygen", "--out", str(tmp_path / "other"))
    capsys.readouterr()
    assert run("token", "inspect", token, "--root", str(tmp_path / "other" / "root.pub"),
               "--at", str(T0)) == 3
    assert "[unknown_root]" in capsys.readouterr().out
    assert run("token", "inspect", "fp1.garbage!", "--root", str(keydir / "corp.pub")) == 3
    assert "[malformed]" in capsys.readouterr().out


def test_seal_and_stdin(keydir: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "alice",
        "--cap", "{server: crm}", "--now", str(T0))
    token = capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert run("token", "seal", "-") == 0
    sealed = capsys.readouterr().out.strip()
    assert run("token", "attenuate", sealed, "--principal", "x") == 1
    assert "sealed" in capsys.readouterr().err
    assert run("token", "inspect", sealed, "--root", str(keydir / "corp.pub"),
               "--at", str(T0 + 1)) == 0
    assert "sealed" in capsys.readouterr().out


@pytest.mark.parametrize("cap, fragment", [
    ("{server: crm, sever: x}", "unknown key `sever`"),
    ("{server: crm, server: billing}", "duplicate key"),
    ("[1, 2]", "a grant is a mapping"),
    ("{tool: refund, args: {amount: {le: '100'}}}", "finite number"),
    ("{: ", "invalid YAML"),
])
def test_bad_capabilities_are_explained(cap: str, fragment: str, keydir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "alice",
               "--cap", cap) == 1
    assert fragment in capsys.readouterr().err


def test_mint_needs_capabilities_and_a_private_key(keydir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "a") == 1
    assert "--cap" in capsys.readouterr().err
    assert run("token", "mint", "--root-key", str(keydir / "corp.pub"), "--principal", "a",
               "--cap", "{server: crm}") == 1
    assert "private key" in capsys.readouterr().err


def test_caps_file(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    caps = tmp_path / "caps.yaml"
    caps.write_text("- {server: crm, tool: refund}\n- {host: '*.example.com', method: GET}\n")
    assert run("token", "mint", "--root-key", str(keydir / "corp.key"), "--principal", "a",
               "--caps-file", str(caps), "--now", str(T0)) == 0
    token = capsys.readouterr().out.strip()
    assert run("token", "inspect", token, "--root", str(keydir / "corp.pub"), "--format",
               "json", "--at", str(T0)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blocks"][0]["summary"] == ["server=crm tool=refund",
                                             "host=*.example.com method=GET"]
