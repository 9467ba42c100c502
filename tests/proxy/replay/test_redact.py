"""The recorder's conservative secret detectors: each kind is caught, the JSON around it
stays valid, ordinary text is left alone."""

from __future__ import annotations

import json

import pytest

from proxy.replay.redact import SECRET_HEADERS, redact_bytes, redact_header

GITHUB = "ghp_" + "A1b2C3d4" * 5
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("secret", "kind"), [
    ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
    ("ASIAY34FZKBOKMUTVV7A", "aws_access_key"),
    (GITHUB, "github_token"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_token"),
    ("gho_" + "z" * 36, "github_token"),
    (JWT, "jwt"),
    (PEM, "private_key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
     "private_key"),
])
def test_each_detector_inside_json_keeps_the_document_valid(secret: str, kind: str) -> None:
    doc = json.dumps({"note": f"use {secret} now", "id": 7}).encode()
    red = redact_bytes(doc)
    assert secret.encode() not in red
    assert json.loads(red) == {"note": f"use [REDACTED:{kind}] now", "id": 7}


def test_named_and_bearer_secrets_keep_their_name() -> None:
    text = b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY; x"
    assert redact_bytes(text) == b"aws_secret_access_key = [REDACTED:aws_secret_key]; x"
    auth = b'{"h": "Authorization: Bearer abcdefghijklmnop.qrstuvwxyz"}'
    assert redact_bytes(auth) == b'{"h": "Authorization: Bearer [REDACTED:bearer]"}'


def test_ordinary_data_is_left_alone_and_returned_as_is() -> None:
    for text in (b"", b"hello world", b'{"amount": 100, "customer": "c-1"}',
                 b"AKIA-short", b"bearer token", b"eyJhbGciOi.notajwt", bytes(range(256))):
        assert redact_bytes(text) is text


def test_headers() -> None:
    assert {"authorization", "cookie", "set-cookie", "x-fiveplane-token",
                              "proxy-authorization"} <= SECRET_HEADERS
    assert redact_header("Authorization", "Bearer abc") == "Bearer [REDACTED]"
    assert redact_header("Proxy-Authorization", "Basic YWdlbnQ6dG9rZW4=") == "Basic [REDACTED]"
    assert redact_header("Cookie", "session=abc; theme=dark") == "[REDACTED]"
    assert redact_header("X-Fiveplane-Token", "v1.abc.def") == "[REDACTED]"
    assert redact_header("X-Api-Key", GITHUB) == "[REDACTED:github_token]"
    assert redact_header("Accept", "application/json") == "application/json"
