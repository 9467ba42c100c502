"""``--expect``: expectations keyed by flow or by a match, checked as rows stream by,
reported with file:line; a typo (matching nothing) fails instead of passing."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.replay.engine import Row
from proxy.replay.expect import ExpectationError, check_rows, load_expectations


def row(flow: int, ordinal: int = 0, *, verdict: str = "allow",
        rules: tuple[str, ...] = ("read",), **kw: str) -> Row:
    fields = {"kind": "mcp", "target": "crm", "what": "tools/call x", "principal": "anonymous",
              "method": "POST", "host": "crm.example.com", "path": "/mcp", "server": "crm",
              "mcp_method": "tools/call", "name": "get_customer"}
    fields.update(kw)
    return Row(flow=flow, ordinal=ordinal, time=0.0, verdict=verdict, enforced=verdict,
               rule_ids=rules, reason="because", decision_id="d", **fields)  # type: ignore[arg-type]


def load(tmp_path: Path, text: str) -> list:
    path = tmp_path / "expect.yaml"
    path.write_text(text)
    return load_expectations(path)


def test_flow_match_count_and_rules(tmp_path: Path) -> None:
    exps = load(tmp_path, """\
- flow: 1
  verdict: allow
  rule: read
- flow: 2
  action: 1
  verdict: deny
- name: refunds stay allowed
  match: {tool: refund, host: CRM.example.com}
  verdict: allow
  count: 2
- match: {method: get, path: "/api/*"}
  rule: [api, network.connect]
- match: {kind: mcp_server}
  verdict: deny
""")
    rows = [row(1), row(2), row(2, 1, verdict="deny", rules=("no-logs",), kind="mcp_server"),
            row(3, name="refund"), row(4, name="refund"),
            row(5, method="GET", path="/api/x", rules=("network.connect", "api"), kind="http")]
    for r in rows:
        check_rows(exps, r)
    assert [e.ok for e in exps] == [True, True, True, True, True]
    assert exps[0].where.endswith("expect.yaml:1") and exps[2].where.endswith(":7")
    assert exps[2].name == "refunds stay allowed" and exps[3].name == "method=get, path=/api/*"
    assert exps[2].summary() == "2 actions as expected"


def test_failures_say_what_differs(tmp_path: Path) -> None:
    exps = load(tmp_path, """\
- {flow: 1, verdict: deny, rule: crm-no-bulk}
- {match: {tool: delete_*}, verdict: deny}
- {match: {tool: refund}, verdict: allow, count: 1}
- {flow: 9, verdict: allow}
""")
    for r in (row(1), row(2, name="delete_all"), row(3, name="refund"), row(4, name="refund")):
        check_rows(exps, r)
    assert [e.ok for e in exps] == [False, False, False, False]
    assert "verdict allow, expected deny; rules read, expected crm-no-bulk" in exps[0].summary()
    assert exps[1].summary().startswith("1 of 1 actions differ: flow 2 action 0")
    assert exps[2].summary() == "matched 2 actions, expected 1"
    assert exps[3].summary() == "matched no action"
    assert exps[1].to_dict()["ok"] is False


def test_invalid_files_name_every_problem_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ExpectationError) as e:
        load(tmp_path, """\
- flow: 0
  verdict: maybe
- match: {tol: refund}
  verdict: allow
- verdict: allow
- flow: 1
  action: -1
  rule: 5
- {flow: 2, verdict: allow, colour: red}
- action: 1
  verdict: deny
- just a string
""")
    problems = "\n".join(e.value.problems)
    for expected in (":1: `flow` must be a flow number", ":2: unknown verdict `maybe`",
                     ":3: unknown match key `tol`", ":5: an expectation needs `flow` or `match`",
                     ":7: `action` must be 0", ":8: `rule` must be a rule id",
                     ":9: unknown key `colour`", ":10: `action` needs `flow`",
                     ":12: an expectation must be a mapping"):
        assert expected in problems, (expected, problems)
    with pytest.raises(ExpectationError, match="must be a YAML list"):
        load(tmp_path, "flow: 1\n")
    with pytest.raises(ExpectationError, match="invalid YAML"):
        load(tmp_path, "- [unclosed\n")
    with pytest.raises(ExpectationError, match="cannot read"):
        load_expectations(tmp_path / "missing.yaml")
    assert load(tmp_path, "") == []
