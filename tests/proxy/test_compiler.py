"""The policy compiler: every mistake reported at once, with file:line and a stable code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.errors import PolicyError
from proxy.policy import compile_file, compile_text

REPO = Path(__file__).resolve().parents[2]


def issues(text: str) -> list[tuple[int, str, str | None]]:
    with pytest.raises(PolicyError) as info:
        compile_text(textwrap.dedent(text), "p.yaml")
    return [(i.line, i.code, i.rule_id) for i in info.value.issues]


def test_shipped_policies_compile() -> None:
    examples = sorted((REPO / "policies").glob("examples/*.yaml"))
    paths = [REPO / "policies" / "default.yaml", *examples]
    assert len(paths) >= 2
    for path in paths:
        policy = compile_file(path)
        assert policy.version.startswith("sha256:")


def test_every_error_reported_at_once_with_lines_and_codes() -> None:
    found = issues("""\
        version: 1
        name: broken
        defaults: {effect: maybe}
        network:
          allow:
            - {hosts: a.example.com}
          allow_internal:
            - {cidr: 169.254.0.0/16}
        mcp_servers:
          crm: {url: "https://crm.example.com/mcp"}
        rules:
          - id: one
            match: {server: cmr, tool: x}
            effect: allow
          - id: one
            match: {tool: y, args: {amount: {gt: 1, regex: "("}}}
            effect: deny
          - id: two
            match: {tool: z}
            effect: allow
            effect: deny
        """)
    assert (3, "policy_schema_error", None) in found
    assert (6, "policy_unknown_key", None) in found
    assert (8, "policy_unsafe_error", None) in found
    assert (13, "policy_reference_error", "one") in found
    assert (15, "policy_duplicate_id", "one") in found
    assert (16, "policy_predicate_error", "one") in found
    assert (21, "policy_duplicate_key", None) in found


def test_messages_are_readable() -> None:
    with pytest.raises(PolicyError) as info:
        compile_text("version: 1\nname: x\nrules:\n  - id: r\n    match: {hots: a}\n"
                     "    effect: allow\n", "pol.yaml")
    text = str(info.value)
    assert "pol.yaml:5:" in text
    assert "unknown key `hots`" in text and "did you mean `host`" in text
    assert "[policy_unknown_key]" in text


@pytest.mark.parametrize("text, code", [
    ("", "policy_schema_error"),
    ("- a\n- b\n", "policy_schema_error"),
    ("version: 1\nname: [unclosed\n", "policy_parse_error"),
    ("version: 2\nname: x\n", "policy_schema_error"),
    ("version: 1\nname: x\nrules:\n  - {id: 'bad id!', match: {tool: a}, effect: allow}\n",
     "policy_schema_error"),
    ("version: 1\nname: x\nrules:\n  - {id: a, match: {tool: a, prompt: b}, effect: allow}\n",
     "policy_conflict_error"),
    ("version: 1\nname: x\nrules:\n  - {id: a, match: {tool: a, method: GET}, effect: allow}\n",
     "policy_conflict_error"),
    ("version: 1\nname: x\nrules:\n  - {id: a, match: {host: 'a..b'}, effect: allow}\n",
     "policy_pattern_error"),
    ("version: 1\nname: x\nrules:\n  - {id: a, match: {tool: a}, effect: explode}\n",
     "policy_schema_error"),
    ("version: 1\nname: x\nnetwork: {allow_internal: [{cidr: 'fd00:ec2::/64'}]}\n",
     "policy_unsafe_error"),
    ("version: 1\nname: x\nnetwork: {allow_internal: [{cidr: '10.0.0.0/33'}]}\n",
     "policy_pattern_error"),
])
def test_bad_policies_name_the_problem(text: str, code: str) -> None:
    codes = [c for _, c, _ in issues(text)]
    assert code in codes


def test_version_is_content_hash() -> None:
    a = compile_text("version: 1\nname: a\n")
    b = compile_text("version: 1\nname: a\n")
    c = compile_text("version: 1\nname: a  # changed\n")
    assert a.version == b.version != c.version
    assert a.default_decision.policy_version == a.version


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        compile_file(tmp_path / "nope.yaml")
    assert info.value.issues[0].code == "policy_io_error"
