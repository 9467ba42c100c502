"""``fiveplane test``: the shipped suites pass and cover the shipped policies; a wrong
expectation fails with the case's file:line; what cannot be evaluated yet says so."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from proxy.policy import compile_file
from proxy.policy.loader import parse_text
from proxy.replay.cli import cmd_test
from proxy.replay.policytest import discover, run_suite

REPO = Path(__file__).resolve().parents[3]
SUITES = REPO / "policies" / "tests"
SUPPORT = REPO / "policies" / "examples" / "support-agent.yaml"


def suite(tmp_path: Path, body: str, policy: Path = SUPPORT, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"policy: {policy}\n" + textwrap.dedent(body))
    return path


def run(*paths: Path, fmt: str = "text", strict: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = cmd_test([str(p) for p in paths], fmt, strict, out=out)
    return code, out.getvalue()


def test_the_shipped_suites_pass() -> None:
    code, text = run(SUITES)
    assert code == 0, text
    assert "0 failed, 0 errors, 0 not evaluated" in text
    files = {p.name for p in discover([str(SUITES)])}
    assert {"support-agent.yaml", "default.yaml"} <= files


def test_every_rule_of_the_shipped_policies_is_tested() -> None:
    expected: dict[str, set[str]] = {}
    for path in discover([str(SUITES)]):
        doc, _ = parse_text(path.read_text(), str(path))
        policy = (path.parent / doc["policy"]).resolve()
        rules = expected.setdefault(str(policy), set())
        for case in doc["cases"]:
            for item in [case, *case.get("actions", [])]:
                rule = (item.get("expect") or {}).get("rule")
                rules.update([rule] if isinstance(rule, str) else rule or [])
                shadow = (item.get("expect") or {}).get("shadow")
                rules.update([shadow] if shadow not in (None, "none") else [])
    support = expected[str(SUPPORT.resolve())]
    compiled = compile_file(SUPPORT)
    # lethal-trifecta only denies egress outside example.com, which network.allow already
    # refuses in this policy: it can never decide (the suite pins the network decision).
    unreachable = {"lethal-trifecta"}
    assert {r.id for r in compiled.rules} - unreachable <= support
    assert {b.id for b in compiled.budgets} <= support
    assert {"network.default", "network.connect", "network.internal", "network.metadata",
            "defaults.effect", "mcp.lifecycle", "paste-sites"} <= support
    assert {r for r in support if r.startswith("mediation.")} >= {
        "mediation.jsonrpc_batch", "mediation.mcp_bad_name", "mediation.mcp_header_mismatch",
        "mediation.duplicate_key", "mediation.ambiguous_header"}
    default = expected[str((REPO / "policies" / "default.yaml").resolve())]
    assert {"network.default", "network.internal", "network.metadata"} <= default


def test_a_wrong_expectation_fails_with_file_and_line(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        cases:
          - name: right
            server: crm
            tool: get_customer
            expect: {verdict: allow, rule: crm-read}
          - name: wrong
            server: crm
            tool: delete_all
            expect: {verdict: allow, rule: crm-read}
          - name: wrong in a sequence
            actions:
              - {server: crm, mcp_method: initialize, expect: {verdict: allow}}
              - {server: crm, tool: export_all}
            expect: {verdict: allow}
        """)
    code, text = run(path)
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == f"PASS {path}:3 right"
    assert lines[1] == (f"FAIL {path}:10 wrong: expected verdict allow and rule crm-read, "
                        "got deny by crm-no-bulk: bulk export and deletion are not support "
                        "tasks")
    assert lines[2].startswith(f"FAIL {path}:14 wrong in a sequence: action 2 of 2: "
                               "expected verdict allow, got deny by crm-no-bulk")
    assert "1 passed, 2 failed, 0 errors, 0 not evaluated" in text


def test_escalate_enforced_and_reason(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        cases:
          - server: crm
            tool: refund
            arguments: {amount: 500}
            expect: {verdict: escalate, enforced: deny, reason: approval by finance}
          - server: crm
            tool: refund
            arguments: {amount: 500}
            expect: {verdict: escalate, enforced: allow, reason: nope}
        """)
    code, text = run(path)
    assert code == 1
    assert "expected enforced allow and reason containing 'nope', got escalate by " \
           "crm-refund-large (enforced deny)" in text


def test_narrow_and_shadow_expectations(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        cases:
          - server: crm
            tool: search_customers
            arguments: {limit: 100}
            expect: {verdict: narrow, enforced: narrow, rule: crm-search}
          - server: crm
            tool: refund
            arguments: {customer_id: c-1, amount: 60}
            expect: {verdict: allow, shadow: crm-refund-review-trial}
          - server: crm
            tool: refund
            arguments: {customer_id: c-1, amount: 40}
            expect: {verdict: allow, shadow: crm-refund-review-trial}
          - server: crm
            tool: refund
            arguments: {customer_id: c-1, amount: 40}
            expect: {verdict: allow, shadow: [not, a, rule]}
        """)
    code, text = run(path)
    assert code == 1
    assert "expected shadow rule crm-refund-review-trial, got allow by crm-refund-small" in text
    assert "`shadow` must be a shadow rule id or `none`" in text
    assert text.count("PASS") == 2


def test_prior_events_set_up_the_session(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        cases:
          - name: an IBAN from ticket text is tainted
            prior:
              - server: crm
                tool: list_tickets
                result: {content: [{type: text, text: "pay DE89 3704 0044 0532 0130 00"}]}
            server: crm
            tool: refund
            arguments: {customer_id: c-1, amount: 20, iban: DE89370400440532013000}
            expect: {verdict: escalate, rule: no-tainted-refund-targets}
          - name: without the prior it is not
            server: crm
            tool: refund
            arguments: {customer_id: c-1, amount: 20, iban: DE89370400440532013000}
            expect: {verdict: allow, rule: crm-refund-small}
          - name: a denied prior is reported
            prior: [{server: crm, tool: delete_all}, {label: [untrusted_content, x]}]
            server: crm
            tool: get_customer
            expect: {verdict: allow}
        """)
    code, text = run(path)
    assert code == 0, text
    assert f"PASS {path}:3 an IBAN from ticket text is tainted" in text
    assert "note: prior event 1 (line 18) was denied by crm-no-bulk" in text
    bad = suite(tmp_path, """\
        cases:
          - prior: [{server: nowhere, tool: x}]
            method: GET
            url: https://tickets.example.com/api/v2/tickets/1
            expect: {verdict: allow}
          - prior: [{label: 5}]
            method: GET
            url: https://tickets.example.com/api/v2/tickets/1
            expect: {verdict: allow}
          - prior: [{server: crm, tool: get_customer, expect: {verdict: allow}}]
            method: GET
            url: https://tickets.example.com/api/v2/tickets/1
            result: {x: 1}
            expect: {verdict: allow}
        """, name="bad.yaml")
    code, text = run(bad)
    assert code == 1
    assert "server `nowhere` is not in the policy's mcp_servers" in text
    assert f"{bad}:7: a label event is `{{label: NAME}}`" in text
    assert f"{bad}:11: prior events set the scene: they take no `expect`" in text
    assert "(and 1 more problems)" in text  # `result` on an HTTP request


def test_principal_is_put_on_the_action(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent("""\
        version: 1
        name: chains
        network: {allow: [{host: "*"}]}
        rules:
          - id: alice-reads
            match: {host: api.example.com, method: GET, principal: {root: alice}}
            effect: allow
        """))
    path = suite(tmp_path, """\
        cases:
          - name: alice's agent
            principal: [human:alice, agent:planner]
            method: GET
            url: https://api.example.com/x
            expect: {verdict: allow, rule: alice-reads}
          - name: nobody
            method: GET
            url: https://api.example.com/x
            expect: {verdict: deny, rule: defaults.effect}
          - name: bad chain
            principal: [wizard:merlin]
            method: GET
            url: https://api.example.com/x
            expect: {verdict: deny}
        """, policy=policy)
    code, text = run(path)
    assert f"PASS {path}:3 alice's agent" in text and f"PASS {path}:8 nobody" in text
    assert "principal link 'wizard:merlin' must be `kind:id`" in text and code == 1
    assert "note:" not in text  # no identity section: nothing to warn about


def test_invalid_cases_and_suites_are_errors_with_lines(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        cases:
          - sever: crm
            tool: x
            expect: {verdict: allow}
          - server: crm
            tool: x
          - connect: crm.example.com
            expect: {verdict: allow}
          - method: GET
            url: /relative
            expect: {verdict: allow}
          - server: crm
            tool: x
            actions: [{server: crm, tool: y}]
            expect: {verdict: allow}
          - server: crm
            tool: x
            expect: {verdict: maybe, colour: red}
          - server: crm
            expect: {verdict: allow}
        """)
    code, text = run(path)
    assert code == 1
    for expected in (f"ERROR {path}:3: unknown key `sever` (did you mean `server`?)",
                     f"ERROR {path}:6: the case has no `expect`",
                     f"ERROR {path}:8: `connect` is `host:port`",
                     f"ERROR {path}:11: `url` '/relative' must be an absolute http(s) URL",
                     f"ERROR {path}:15: a case has either `actions` or one action's keys",
                     f"ERROR {path}:19: unknown expect key `colour`",
                     f"ERROR {path}:20: an MCP action needs `tool`"):
        assert expected in text, (expected, text)
    missing = tmp_path / "nopolicy.yaml"
    missing.write_text("cases: [{method: GET, url: 'https://x.example/', "
                       "expect: {verdict: deny}}]\npolice: x\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("policy: p.yaml\ncases: [\n")
    invalid = suite(tmp_path, "cases: [{method: GET, url: 'https://x.example/', "
                    "expect: {verdict: deny}}]\n", policy=broken, name="invalid.yaml")
    results = [r for p in (missing, broken, invalid) for r in run_suite(p)]
    details = " | ".join(f"{r.where} {r.detail}" for r in results)
    assert f"{missing}:2 unknown key `police` (did you mean `policy`?)" in details
    assert f"{broken}:3 invalid YAML" in details
    assert "does not compile" in details
    assert all(r.status == "error" for r in results)


def test_json_output_and_no_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run(SUITES / "default.yaml", fmt="json")
    doc = json.loads(text)
    assert code == 0 and doc["summary"]["pass"] == len(doc["results"]) > 5
    assert doc["results"][0]["where"].endswith("default.yaml:5")
    monkeypatch.chdir(tmp_path)
    assert run()[0] == 1
    code, text = run(tmp_path / "missing.yaml")
    assert code == 1 and "no such test suite" in text
