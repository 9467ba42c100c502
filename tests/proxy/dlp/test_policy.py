"""The `data:` policy section: compile_data, DataConfig, the JSON Schema fragment."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from proxy.dlp import DATA_SCHEMA, DataConfig, compile_data, process_text, redact_json

EXAMPLE = yaml.safe_load("""
detect: [secrets, pii.email, pii.credit_card, pii.iban, pii.phone, pii.ssn]
custom:
  - {id: employee_id, regex: 'EMP-[0-9]{6}', label: read:hr_data}
requests: {secrets: deny, pii.credit_card: redact, custom.employee_id: redact}
responses: {secrets: redact, pii.*: redact, secrets.jwt: allow, pii.email: allow}
labels: {pii.*: read:customer_pii, secrets: [saw:secret, sensitive]}
entropy: 3.2
""")


def test_example_compiles() -> None:
    cfg, issues = compile_data(EXAMPLE)
    assert issues == [] and isinstance(cfg, DataConfig)
    assert "custom.employee_id" in cfg.scanner.detectors
    assert cfg.scanner.entropy == 3.2
    # every detector has an action in both directions; most specific selector wins
    assert set(cfg.requests) == set(cfg.responses) == set(cfg.scanner.detectors)
    assert cfg.requests["secrets.github_token"] == "deny"
    assert cfg.requests["pii.email"] == "allow"  # not listed -> allow
    assert cfg.responses["secrets.jwt"] == "allow"  # exact beats group
    assert cfg.responses["pii.email"] == "allow"  # exact beats glob
    assert cfg.responses["pii.iban"] == "redact"
    assert cfg.responses["custom.employee_id"] == "allow"
    assert cfg.actions("request") is cfg.requests
    assert cfg.labels["pii.ssn"] == ("read:customer_pii",)
    assert cfg.labels["secrets.jwt"] == ("saw:secret", "sensitive")
    assert cfg.labels["custom.employee_id"] == ("read:hr_data",)


def test_end_to_end_with_the_compiled_config() -> None:
    cfg, _ = compile_data(EXAMPLE)
    assert cfg is not None
    msg = {"jsonrpc": "2.0", "id": 3, "result": {"text": "card 4111111111111111 EMP-123456"}}
    r = redact_json(msg, cfg.scanner, cfg.responses)
    assert r.value["result"]["text"] == "card [REDACTED:credit_card] EMP-123456"
    assert cfg.session_labels(r.findings) == {"read:customer_pii", "read:hr_data"}
    assert DataConfig.outcome(r.findings) == "modify"
    r = process_text("AKIAIOSFODNN7EXAMPLE", cfg.scanner, cfg.requests)
    assert DataConfig.outcome(r.findings) == "deny"
    assert DataConfig.outcome(()) == "allow"


def test_absent_or_empty_section() -> None:
    assert compile_data(None) == (None, [])
    assert compile_data({}) == (None, [])


def _codes(section: object) -> list[tuple[str, tuple]]:
    cfg, issues = compile_data(section)
    assert cfg is None
    return [(code, path) for code, _, path in issues]


def test_issues_carry_codes_and_paths() -> None:
    section = {
        "detcet": [],
        "detect": ["secret", 5, "pii.iban"],
        "custom": [
            {"id": "ok", "regex": "OK-[0-9]{4}"},
            {"id": "bad", "regex": "(unclosed"},
            {"id": "loose", "regex": "[a-z]+"},
            {"id": "ok", "regex": "OK2-[0-9]{4}"},
            {"id": "Bad Id", "regex": "x"},
            "nope",
            {"id": "extra", "regex": "EX-1", "colour": "red"},
        ],
        "requests": {"pii.iban": "block", "pii.email": "deny", "secrets": "deny"},
        "responses": [],
        "labels": {"pii.iban": ["", "x"], "custom.ok": "read:ok"},
        "entropy": 42,
    }
    assert _codes(section) == [
        ("policy_unknown_key", ("data", "detcet")),
        ("policy_reference_error", ("data", "detect", 0)),
        ("policy_schema_error", ("data", "detect", 1)),
        ("policy_pattern_error", ("data", "custom", 1, "regex")),
        ("policy_pattern_error", ("data", "custom", 2, "regex")),
        ("policy_duplicate_id", ("data", "custom", 3, "id")),
        ("policy_schema_error", ("data", "custom", 4, "id")),
        ("policy_schema_error", ("data", "custom", 5)),
        ("policy_unknown_key", ("data", "custom", 6, "colour")),
        ("policy_schema_error", ("data", "entropy")),
        ("policy_schema_error", ("data", "requests", "pii.iban")),
        ("policy_reference_error", ("data", "requests", "pii.email")),
        ("policy_reference_error", ("data", "requests", "secrets")),
        ("policy_schema_error", ("data", "responses")),
        ("policy_schema_error", ("data", "labels", "pii.iban")),
    ]


def test_messages_are_helpful() -> None:
    _, issues = compile_data({"detect": ["pii.emial"], "custom": [{"id": "x", "regex": "(a"}]})
    messages = [m for _, m, _ in issues]
    assert "unknown detector `pii.emial` (did you mean `pii.email`?)" in messages
    assert any("custom detector `x`: invalid regex at position 0" in m for m in messages)


def test_not_a_mapping() -> None:
    assert _codes(["secrets"]) == [("policy_schema_error", ("data",))]
    _, issues = compile_data("x", root=("policies", 0, "data"))
    assert issues[0][2] == ("policies", 0, "data")


def test_schema_fragment() -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **DATA_SCHEMA}
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(EXAMPLE)) == []
    for bad in (
        {"detect": ["nope"]},
        {"requests": {"secrets": "block"}},
        {"custom": [{"id": "x"}]},
        {"entropy": 0},
        {"unknown": 1},
    ):
        assert list(validator.iter_errors(bad)), bad


@pytest.mark.parametrize("selector", ["pii.*", "secrets.aws_*", "pii", "custom"])
def test_selectors_in_actions(selector: str) -> None:
    cfg, issues = compile_data(
        {
            "detect": ["secrets", "pii"],
            "custom": [{"id": "t", "regex": "T-[0-9]{3}"}],
            "responses": {selector: "redact"},
        }
    )
    assert issues == [] and cfg is not None
    assert any(a == "redact" for a in cfg.responses.values())
