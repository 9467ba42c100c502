"""``fiveplane audit``: exit codes 0 ok, 1 damage or mismatch, 2 usage; readable output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from audit_kit import write_log

from proxy.audit.cli import add_parser, main, run


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    write_log(d, "cli:1", 12, every=5)
    return d


def log_of(d: Path) -> Path:
    return next(d.glob("audit-*.jsonl"))


def test_add_parser_registers_audit_commands() -> None:
    parser = argparse.ArgumentParser(prog="fiveplane")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["audit", "tail", "x", "-n", "5", "--follow"])
    assert (args.command, args.audit_command, args.n, args.follow) == ("audit", "tail", 5, True)
    args = parser.parse_args(["audit", "verify", "x", "--key", "a.pub", "--key", "b.pub"])
    assert args.key == ["a.pub", "b.pub"]


def test_verify(logdir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["audit", "verify", str(log_of(logdir))]) == 0
    assert "ok — 12 records" in capsys.readouterr().out
    assert main(["audit", "verify", str(logdir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["ok"] and report["records"] == 12 and report["closed"]
    lines = log_of(logdir).read_bytes().splitlines(keepends=True)
    bad = tmp_path / log_of(logdir).name
    bad.write_bytes(b"".join(lines[:3] + lines[4:]))
    (tmp_path / "keys").symlink_to(logdir / "keys")
    assert main(["audit", "verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "deleted at line 4 (seq 2)" in out
    pub = next((logdir / "keys").glob("*.pub"))
    assert main(["audit", "verify", str(log_of(logdir)), "--key", str(pub)]) == 0
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert main(["audit", "verify", str(logdir), "--key", str(tmp_path / "nope.pub")]) == 2
    assert main(["audit", "bogus"]) == 2


def test_explain(logdir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["audit", "explain", str(log_of(logdir)), "1"]) == 0
    assert "MATCH" in capsys.readouterr().out
    assert main(["audit", "explain", str(logdir), "--all"]) == 0
    assert "12 re-adjudicated, 0 mismatches" in capsys.readouterr().out
    assert main(["audit", "explain", str(logdir), "--all", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 12 and all(r["matches"] for r in rows)
    assert main(["audit", "explain", str(logdir)]) == 2  # neither RECORD nor --all
    assert main(["audit", "explain", str(logdir), "999"]) == 2
    policies = tmp_path / "policies"
    policies.mkdir()
    for p in (logdir / "policies").glob("*.yaml"):
        (policies / p.name).write_text(p.read_text().replace("gt: 100", "gt: 7"))
    assert main(["audit", "explain", str(logdir), "--all", "--policies", str(policies)]) == 1
    assert "12 mismatches" in capsys.readouterr().out


def test_show_tail_export(logdir: Path, capsys: pytest.CaptureFixture[str],
                          tmp_path: Path) -> None:
    assert main(["audit", "show", str(logdir), "--seq", "1"]) == 0
    out = capsys.readouterr().out
    assert "seq 1" in out and "refund" in out and "arguments  amount, to" in out
    assert "DE89370400440532013000" not in out
    assert main(["audit", "show", str(logdir), "--seq", "77"]) == 2
    assert main(["audit", "tail", str(logdir), "-n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "checkpoint final" in out[-1] and "#11" in out[-2]
    assert main(["audit", "tail", str(logdir), "-n", "2", "--json"]) == 0
    assert all("sealed" not in json.loads(x).get("body", {})
               for x in capsys.readouterr().out.splitlines())
    target = tmp_path / "siem.jsonl"
    assert main(["audit", "export", str(logdir), "--format", "jsonl", "-o", str(target)]) == 0
    rows = [json.loads(x) for x in target.read_text().splitlines()]
    records = [r for r in rows if r["type"] == "record"]
    assert len(records) == 12 and all("sealed" not in r for r in records)
    assert {"seq", "hash", "prev", "chain", "instance", "decision", "action", "policy",
            "outcome", "principal", "time"} <= set(records[1])
    assert "DE89370400440532013000" not in target.read_text()
    assert sum(r["type"] == "checkpoint" for r in rows) == 3  # at 5, 10 and final at 12
    assert main(["audit", "verify", str(log_of(logdir)), "--checkpoints", str(target)]) == 0
    capsys.readouterr()
    assert main(["audit", "export", str(logdir), "--records-only"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["type"] for r in rows} == {"record"}


def test_run_takes_parsed_args(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="fiveplane")
    add_parser(parser.add_subparsers(dest="command", required=True))
    assert run(parser.parse_args(["audit", "verify", str(logdir)])) == 0
