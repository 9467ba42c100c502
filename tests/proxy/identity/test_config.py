"""The ``identity`` policy section: compile issues with paths, token extraction from
headers, credential brokering (inject only for the upstream, strip what agents send)."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from proxy.errors import PolicyIssue
from proxy.identity import (
    ChainPrincipal,
    IdentityError,
    RejectedPrincipal,
    attenuate,
    compile_identity,
    credential_for,
    headers_to_strip,
    keygen,
    mint,
    principal_for,
    strip_headers,
    token_from_headers,
)
from proxy.identity.schema import fragment, merged
from proxy.policy import loader
from proxy.policy.compiler import schema as policy_schema
from proxy.principal import ANONYMOUS
from proxy.testing import http_request, mcp_call

T0 = 1_800_000_000
FRAGMENT_FILE = Path(__file__).resolve().parents[3] / "proxy" / "identity" / "schema_fragment.json"


@pytest.fixture
def keys(tmp_path: Path, root_pem: tuple[bytes, bytes]) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "corp.pub").write_bytes(root_pem[1])
    (tmp_path / "keys" / "corp.key").write_bytes(root_pem[0])
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "files.token").write_text("file-secret\n")
    return tmp_path


def section(text: str) -> Any:
    doc, issues = loader.parse_text(textwrap.dedent(text))
    assert not issues
    return doc["identity"]


GOOD = """
identity:
  trusted_roots:
    - {name: corp, key_file: keys/corp.pub}
  anonymous: deny
  credentials:
    - id: crm-api
      upstream: {server: crm}
      scheme: Bearer
      value_from_env: CRM_TOKEN
    - id: files
      upstream: {host: ["files.example.com", "*.files.example.net"]}
      header: X-Api-Key
      value_from_file: secrets/files.token
    - id: local
      upstream: {host: 127.0.0.1}
      value_from_env: LOCAL_TOKEN
      allow_http: true
"""
ENV = {"CRM_TOKEN": "crm-secret", "LOCAL_TOKEN": "local-secret"}


def test_good_section_compiles(keys: Path) -> None:
    config, issues = compile_identity(section(GOOD), keys, servers={"crm"}, env=ENV)
    assert issues == [] and config is not None
    assert [r.name for r in config.roots] == ["corp"]
    assert config.deny_anonymous and config.token_header == "X-Fiveplane-Token"
    assert [c.id for c in config.credentials] == ["crm-api", "files", "local"]
    assert "crm-secret" not in repr(config.credentials[0])
    assert config.verifier.root_names == ["corp"]
    assert config.line == 3


def test_no_section_means_no_config() -> None:
    assert compile_identity(None) == (None, [])


def test_defaults_and_inline_key(root_pem: tuple[bytes, bytes]) -> None:
    config, issues = compile_identity({"trusted_roots": [{"name": "corp",
                                                          "key": root_pem[1].decode()}]})
    assert issues == [] and config is not None
    assert config.anonymous == "deny" and config.credentials == ()


@pytest.mark.parametrize("text, code, path, fragment", [
    ("trusted_roots: [{name: corp, key_file: keys/missing.pub}]", "policy_key_error",
     ("identity", "trusted_roots", 0, "key_file"), "cannot read"),
    ("trusted_roots: [{name: corp, key_file: keys/corp.key}]", "policy_key_error",
     ("identity", "trusted_roots", 0, "key_file"), "private key"),
    ("trusted_roots: [{name: corp, key: 'not a key'}]", "policy_key_error",
     ("identity", "trusted_roots", 0, "key"), "not a PEM"),
    ("trusted_roots: [{name: corp}]", "policy_schema_error",
     ("identity", "trusted_roots", 0), "exactly one"),
    ("trusted_roots: [{name: a, key_file: keys/corp.pub}, {name: a, key_file: keys/corp.pub}]",
     "policy_duplicate_id", ("identity", "trusted_roots", 1, "name"), "already defined"),
    ("trusted_roots: [{name: a, key_file: keys/corp.pub}, {name: b, key_file: keys/corp.pub}]",
     "policy_conflict_error", ("identity", "trusted_roots", 1), "same key"),
    ("anonymous: allow", "policy_schema_error", ("identity", "anonymous"), "deny, policy"),
    ("token_header: Authorization", "policy_conflict_error", ("identity", "token_header"),
     "cannot carry"),
    ("token_header: 'X Token'", "policy_schema_error", ("identity", "token_header"), "bad header"),
    ("credentials: [{id: a, upstream: {server: crm}, value_from_env: NOPE}]",
     "policy_credential_error", ("identity", "credentials", 0, "value_from_env"), "not set"),
    ("credentials: [{id: a, upstream: {server: crm}, value_from_file: secrets/none}]",
     "policy_credential_error", ("identity", "credentials", 0, "value_from_file"), "cannot read"),
    ("credentials: [{id: a, upstream: {server: crm}, value_from_env: EMPTY}]",
     "policy_credential_error", ("identity", "credentials", 0, "value_from_env"), "empty"),
    ("credentials: [{id: a, upstream: {server: crm}, value_from_env: CRLF}]",
     "policy_credential_error", ("identity", "credentials", 0, "value_from_env"), "line break"),
    ("credentials: [{id: a, upstream: {server: crm}}]", "policy_schema_error",
     ("identity", "credentials", 0), "exactly one"),
    ("credentials: [{id: a, upstream: {server: crn}, value_from_env: CRM_TOKEN}]",
     "policy_reference_error", ("identity", "credentials", 0, "upstream", "server"),
     "unknown MCP server"),
    ("credentials: [{id: a, upstream: {host: '*'}, value_from_env: CRM_TOKEN}]",
     "policy_unsafe_error", ("identity", "credentials", 0, "upstream", "host"), "every host"),
    ("credentials: [{id: a, upstream: {host: 'a b'}, value_from_env: CRM_TOKEN}]",
     "policy_pattern_error", ("identity", "credentials", 0, "upstream", "host"), "bad host"),
    ("credentials: [{id: a, upstream: {host: x.com, server: crm}, value_from_env: CRM_TOKEN}]",
     "policy_schema_error", ("identity", "credentials", 0, "upstream"), "exactly one"),
    ("credentials: [{id: a, upstream: {server: crm}, header: Host, value_from_env: CRM_TOKEN}]",
     "policy_conflict_error", ("identity", "credentials", 0, "header"), "cannot be sent"),
    ("credentials: [{id: a, upstream: {server: crm}, header: X-Fiveplane-Token, "
     "value_from_env: CRM_TOKEN}]",
     "policy_conflict_error", ("identity", "credentials", 0, "header"), "cannot be sent"),
    ("credentials: [{id: a, upstream: {server: crm}, value_from_env: CRM_TOKEN}, "
     "{id: a, upstream: {server: crm}, value_from_env: CRM_TOKEN}]",
     "policy_duplicate_id", ("identity", "credentials", 1, "id"), "already used"),
])
def test_issues_carry_code_and_path(text: str, code: str, path: tuple[Any, ...], fragment: str,
                                    keys: Path) -> None:
    env = {**ENV, "EMPTY": "", "CRLF": "a\r\nInjected: yes"}
    config, issues = compile_identity(section("identity:\n  " + text), keys, servers={"crm"},
                                      env=env)
    assert config is None
    assert issues, "expected an issue"
    found = [i for i in issues if i[0] == code]
    assert found, issues
    assert found[0][2] == path
    assert fragment in found[0][1], found[0][1]


def test_issues_map_to_policy_issues_with_lines(keys: Path) -> None:
    text = "version: 1\nname: x\nidentity:\n  trusted_roots:\n    - {name: c, key_file: nope.pub}\n"
    doc, _ = loader.parse_text(text, "p.yaml")
    _, issues = compile_identity(doc["identity"], keys)
    policy_issues = [PolicyIssue(code, message, "p.yaml", loader.line_of(doc, path))
                     for code, message, path in issues]
    assert policy_issues[0].line == 5
    assert str(policy_issues[0]).startswith("p.yaml:5:")


def test_secrets_need_not_be_present_for_a_check(keys: Path) -> None:
    config, issues = compile_identity(section(GOOD), keys, env={}, resolve_secrets=False)
    assert issues == [] and config is not None
    assert credential_for(mcp_call("refund"), config) is None


# --- schema fragment ------------------------------------------------------------------------


def test_schema_fragment_file_is_current() -> None:
    import json

    assert json.loads(FRAGMENT_FILE.read_text("utf-8")) == fragment()


@pytest.mark.parametrize("extra, ok", [
    ({"identity": {"trusted_roots": [{"name": "corp", "key_file": "k.pub"}]}}, True),
    ({"identity": {"trusted_roots": [{"name": "corp"}]}}, False),
    ({"identity": {"trusted_roots": [{"name": "corp", "key_file": "a", "key": "b"}]}}, False),
    ({"identity": {"anonymous": "policy", "token_header": "X-Agent-Token"}}, True),
    ({"identity": {"anonymous": "allow"}}, False),
    ({"identity": {"credentials": [{"id": "c", "upstream": {"server": "crm"},
                                    "value_from_env": "T", "scheme": "Bearer"}]}}, True),
    ({"identity": {"credentials": [{"id": "c", "upstream": {"server": "crm", "host": "x"},
                                    "value_from_env": "T"}]}}, False),
    ({"identity": {"credentials": [{"id": "c", "upstream": {"host": "x"}}]}}, False),
    ({"identity": {"trusted_roots": [], "typo": 1}}, False),
    ({"rules": [{"id": "r", "effect": "allow", "match": {
        "server": "crm", "principal": {"root": "alice", "depth": {"le": 3}, "kind": "agent",
                                       "id": "planner-*"}}}]}, True),
    ({"rules": [{"id": "r", "effect": "allow", "match": {
        "principal": {"kind": ["human", "tool"], "anonymous": False, "acting": "x"}}}]}, True),
    ({"rules": [{"id": "r", "effect": "allow", "match": {"principal": {"kind": "robot"}}}]},
     False),
    ({"rules": [{"id": "r", "effect": "allow", "match": {"principal": {"depth": {"regex": "1"}}}}]},
     False),
    ({"rules": [{"id": "r", "effect": "allow", "match": {"principal": {}}}]}, False),
])
def test_merged_schema(extra: dict[str, Any], ok: bool) -> None:
    doc = {"version": 1, "name": "x", **extra}
    validator = jsonschema.Draft202012Validator(merged(policy_schema()))
    assert validator.is_valid(doc) is ok, list(validator.iter_errors(doc))
    # The shipped schema already carries the fragments.
    assert merged(policy_schema()) == policy_schema()


# --- tokens in headers --------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_token_from_headers() -> None:
    assert token_from_headers([("Host", "x")], None) is None
    assert token_from_headers([("Proxy-Authorization", basic("agent", "fp1.AAA"))],
                              None) == "fp1.AAA"
    assert token_from_headers([("proxy-authorization", "Bearer fp1.BBB")], None) == "fp1.BBB"
    # The per-request header wins over the connection's proxy credentials.
    assert token_from_headers([("Proxy-Authorization", basic("agent", "fp1.AAA")),
                               ("x-fiveplane-token", " fp1.CCC ")], None) == "fp1.CCC"
    for bad in ([("X-Fiveplane-Token", "a"), ("x-fiveplane-token", "b")],
                [("Proxy-Authorization", "Digest abc")],
                [("Proxy-Authorization", "Basic !!!")],
                [("Proxy-Authorization", basic("agent", ""))]):
        result = token_from_headers(bad, None)
        assert isinstance(result, IdentityError) and result.code == "malformed", bad


def test_principal_for(keys: Path, root_key: Any) -> None:
    config, _ = compile_identity(section(GOOD), keys, env=ENV)
    assert config is not None
    token = attenuate(mint(root_key, ("alice", "human"), [{"server": "crm"}], 3600, T0),
                      ("planner", "agent"), None, 600, T0).to_text()
    p = principal_for(token, config, T0 + 1)
    assert isinstance(p, ChainPrincipal) and str(p) == "alice → planner"
    assert p.to_dict() == [{"id": "alice", "kind": "human"}, {"id": "planner", "kind": "agent"}]
    expired = principal_for(token, config, T0 + 601)
    assert isinstance(expired, RejectedPrincipal) and expired.error.code == "expired"
    assert expired.chain == ANONYMOUS.chain
    assert principal_for(None, config, T0) is ANONYMOUS
    bad = principal_for(IdentityError("malformed", "x"), config, T0)
    assert isinstance(bad, RejectedPrincipal)


# --- credential brokering ---------------------------------------------------------------------


def test_credential_for(keys: Path) -> None:
    config, _ = compile_identity(section(GOOD), keys, servers={"crm"}, env=ENV)
    assert config is not None
    assert credential_for(mcp_call("refund"), config) == ("Authorization", "Bearer crm-secret")
    assert credential_for(mcp_call("refund", server="billing"), config) is None
    assert credential_for(http_request("GET", "files.example.com"), config) == (
        "X-Api-Key", "file-secret")
    assert credential_for(http_request("GET", "a.b.files.example.net"), config) == (
        "X-Api-Key", "file-secret")
    assert credential_for(http_request("GET", "files.example.com.evil.com"), config) is None
    # Never over plain http unless the credential allows it.
    assert credential_for(http_request("GET", "files.example.com", scheme="http"),
                          config) is None
    assert credential_for(http_request("GET", "127.0.0.1", scheme="http"), config) == (
        "Authorization", "local-secret")
    assert credential_for(http_request("GET", "other.example.com"), config) is None
    assert credential_for(mcp_call("refund"), None) is None


def test_strip_headers(keys: Path) -> None:
    config, _ = compile_identity(section(GOOD), keys, servers={"crm"}, env=ENV)
    assert config is not None
    sent = [("Host", "crm.example.com"), ("Proxy-Authorization", "Basic x"),
            ("X-Fiveplane-Token", "fp1.x"), ("authorization", "Bearer agent-held"),
            ("X-Api-Key", "agent-held"), ("Accept", "*/*")]
    assert strip_headers(sent, config, mcp_call("refund")) == [
        ("Host", "crm.example.com"), ("X-Api-Key", "agent-held"), ("Accept", "*/*")]
    assert strip_headers(sent, config, http_request("GET", "files.example.com")) == [
        ("Host", "crm.example.com"), ("authorization", "Bearer agent-held"), ("Accept", "*/*")]
    # Without a brokered credential for the upstream, the agent's own Authorization stays.
    assert strip_headers(sent, config, http_request("GET", "other.example.com")) == [
        ("Host", "crm.example.com"), ("authorization", "Bearer agent-held"),
        ("X-Api-Key", "agent-held"), ("Accept", "*/*")]
    assert headers_to_strip(None, None) == {"proxy-authorization", "x-fiveplane-token"}


def test_custom_token_header(root_pem: tuple[bytes, bytes]) -> None:
    config, _ = compile_identity({"token_header": "X-Agent-Token", "trusted_roots": [
        {"name": "c", "key": root_pem[1].decode()}]})
    assert config is not None
    assert token_from_headers([("x-agent-token", "fp1.Z"), ("x-fiveplane-token", "fp1.Y")],
                              config) == "fp1.Z"
    assert "x-agent-token" in headers_to_strip(None, config)


def test_keygen_pems_load(root_pem: tuple[bytes, bytes]) -> None:
    private, public = keygen()
    assert b"PRIVATE KEY" in private and b"PUBLIC KEY" in public


def test_roots_fingerprint_lets_a_reload_keep_the_warm_verifier(
        root_pem: tuple[bytes, bytes]) -> None:
    from dataclasses import replace

    spec = {"trusted_roots": [{"name": "corp", "key": root_pem[1].decode()}]}
    old, _ = compile_identity(spec)
    new, _ = compile_identity({**spec, "anonymous": "policy"})
    assert old is not None and new is not None
    assert old.roots_fingerprint == new.roots_fingerprint
    kept = replace(new, verifier=old.verifier)
    assert kept.verifier is old.verifier and kept.anonymous == "policy"
