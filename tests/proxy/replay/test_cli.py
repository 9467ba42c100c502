"""``fiveplane replay`` / ``fiveplane test`` as the lead wires them: ``add_parser`` on the
``fiveplane`` subparsers, ``run(args)`` for the exit code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from proxy.replay import cli
from proxy.replay.har import HarWriter, har_entry

POLICY = """\
version: 1
name: cli
network: {allow: [{host: "*"}]}
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
rules:
  - {id: read, match: {server: crm, tool: [get_customer, echo]}, effect: allow}
  - {id: api, match: {host: api.example.com, method: GET}, effect: allow}
"""


def call(tool: str, i: int) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                       "params": {"name": tool, "arguments": {}}}).encode()
    return har_entry(started=1_700_000_000 + i, method="POST",
                     url="https://crm.example.com/mcp",
                     headers=[("Content-Type", "application/json")], body=body, status=200,
                     response_headers=[("Content-Type", "application/json")],
                     response_body=b'{"jsonrpc": "2.0", "id": %d, "result": {}}' % i,
                     mime_type="application/json")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    tighter = tmp_path / "tighter.yaml"
    tighter.write_text(POLICY.replace("[get_customer, echo]", "[get_customer]"))
    capture = tmp_path / "capture.har"
    with capture.open("w") as fo:
        w = HarWriter(fo)
        w.add(call("get_customer", 1))
        w.add(call("echo", 2))
        w.add(har_entry(started=1_700_000_003, method="GET", url="https://api.example.com/x",
                        status=200))
        w.add(har_entry(started=1_700_000_004, method="DELETE",
                        url="https://api.example.com/x", status=403))
        w.close()
    broken = tmp_path / "broken.har"
    doc = json.loads(capture.read_text())
    del doc["log"]["entries"][1]["request"]["url"]
    broken.write_text(json.dumps(doc))
    return {"policy": policy, "tighter": tighter, "capture": capture, "broken": broken,
            "dir": tmp_path}


def main(*argv: str | Path) -> int:
    return cli.main([str(a) for a in argv])


def test_add_parser_and_run_plug_into_a_parent_parser(files: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="fiveplane")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    cli.add_parser(sub)
    args = parser.parse_args(["replay", str(files["capture"]), "--policy",
                              str(files["policy"])])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("#        TIME (UTC)")
    assert "tools/call echo" in out and "summary: 4 actions in 4 flows" in out
    assert "by verdict: allow 3, deny 1" in out
    args = parser.parse_args(["test", "--format", "json", str(files["dir"] / "none.yaml")])
    assert cli.run(args) == 1


def test_json_rows_and_summary(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main("replay", files["capture"], "--policy", files["policy"], "--format",
                "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["flow"], r["verdict"], r["rule_ids"]) for r in doc["rows"]] == [
        (1, "allow", ["read"]), (2, "allow", ["read"]), (3, "allow", ["api"]),
        (4, "deny", ["defaults.effect"])]
    assert doc["summary"]["by_rule"] == {"read": 2, "api": 1, "defaults.effect": 1}
    assert doc["notes"] == []


def test_expectations_set_the_exit_code(files: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    good = files["dir"] / "good.yaml"
    good.write_text("- {flow: 4, verdict: deny, rule: defaults.effect}\n"
                    "- {match: {tool: echo}, verdict: allow}\n")
    bad = files["dir"] / "bad.yaml"
    bad.write_text("- {flow: 1, verdict: allow}\n- {match: {tool: echo}, verdict: deny}\n")
    assert main("replay", files["capture"], "--policy", files["policy"], "--expect",
                good) == 0
    assert "expectations: 2 passed, 0 failed" in capsys.readouterr().out
    assert main("replay", files["capture"], "--policy", files["policy"], "--expect",
                bad) == 1
    out = capsys.readouterr().out
    assert f"FAIL {bad}:2 tool=echo: 1 of 1 actions differ" in out
    assert main("replay", files["capture"], "--policy", files["policy"], "--expect", bad,
                "--format", "json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert [e["ok"] for e in doc["expectations"]] == [True, False]


def test_what_if_lists_only_the_changes(files: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main("replay", files["capture"], "--policy", files["tighter"], "--against",
                files["policy"]) == 0
    out = capsys.readouterr().out
    assert "1 action change" in out and "read → defaults.effect  (1)" in out
    assert "tools/call echo" in out and "get_customer" not in out
    assert main("replay", files["capture"], "--policy", files["tighter"], "--against",
                files["policy"], "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] == 1 and doc["groups"][0]["change"] == "read → defaults.effect"


def test_exit_codes_for_bad_input(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                  ) -> None:
    d = files["dir"]
    (d / "text.txt").write_text("hello")
    (d / "bad-policy.yaml").write_text("version: 1\nname: x\nrules: [{id: 1}]\n")
    (d / "bad-expect.yaml").write_text("- {verdict: allow}\n")
    p, c = files["policy"], files["capture"]
    assert main("replay", d / "missing.flows", "--policy", p) == 2
    assert main("replay", d / "text.txt", "--policy", p) == 2
    assert main("replay", c) == 2
    assert main("replay", c, "--policy", d / "bad-policy.yaml") == 3
    assert main("replay", c, "--policy", p, "--against", d / "bad-policy.yaml") == 3
    assert main("replay", c, "--policy", p, "--expect", d / "bad-expect.yaml") == 2
    assert main("replay", c, "--policy", p, "--against", p, "--expect",
                d / "bad-expect.yaml") == 2
    assert main("replay", c, "--policy", p, "--live", "http://127.0.0.1:9") == 2
    capsys.readouterr()
    assert main("replay", files["broken"], "--policy", p) == 4
    out = capsys.readouterr().out
    assert "missing `request.url`; entry skipped" in out and "1 unreadable entry" in out
    assert main("replay", files["broken"], "--policy", p, "--against", p) == 4
