"""The display masker: secrets by key name and by shape; everything else readable."""

from __future__ import annotations

import pytest

from proxy.approvals.redact import MASK, is_secret_key, redact, redact_text


@pytest.mark.parametrize("key", [
    "password", "Password", "db_passwd", "passphrase", "pwd", "token", "access_token",
    "refreshToken", "secret", "client_secret", "Authorization", "X-Api-Key", "api_key",
    "apikey", "aws_access_key_id", "private_key", "credentials", "cookie", "Set-Cookie",
    "auth", "cvv", "pin", "otp", "session_key",
])
def test_secret_keys(key):
    assert is_secret_key(key)
    assert redact({key: "value"}) == {key: MASK}


@pytest.mark.parametrize("key", [
    "amount", "customer", "author", "bypass", "passenger",
    "description", "recipient", "keyword",
])
def test_ordinary_keys(key):
    assert not is_secret_key(key)
    assert redact({key: "value"}) == {key: "value"}


@pytest.mark.parametrize("text", [
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "sk_live_51HqLyjWDarjtT1zdp7dcXYZ",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "xoxb-123456789012-abcdefghijkl",
    "AKIAIOSFODNN7EXAMPLE",
    "AIzaSyA-abcdefghijklmnopqrstuvwxyz0123",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Bearer abcdefghijklmnop.qrstuv",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "Zx8Kq2Lm9Pw4Rt7Yv1Bn6Hc3Jd5Fg0Ss",
])
def test_key_like_values(text):
    assert redact(text) == MASK
    assert redact({"note": text}) == {"note": MASK}


def test_key_inside_text_is_masked_alone():
    assert redact_text("use sk-live-ABCDEFGHIJKLMNOP1234 for the refund") == \
        "use *** for the refund"
    assert redact_text("https://bob:s3cret@db.internal/x") == "https://bob:***@db.internal/x"
    assert redact_text("https://x.test/cb?code=1&access_token=abc&state=2") == \
        "https://x.test/cb?code=1&access_token=***&state=2"


@pytest.mark.parametrize("text", [
    "refund order 12345678 for customer c-17",
    "550e8400-e29b-41d4-a716-446655440000",
    "d41d8cd98f00b204e9800998ecf8427e",
    "https://example.com/api/v1/Customers/12345/Orders",
    "DE89370400440532013000",
    "The quick brown fox jumps over the lazy dog",
])
def test_ordinary_values_stay(text):
    assert redact(text) == text


def test_nested_and_bounded():
    value = {"a": [{"password": "x", "ok": 1}], "b": "y" * 5000, "c": list(range(300)),
             "d": None, "e": True, "f": 1.5, "g": b"raw"}
    out = redact(value)
    assert out["a"] == [{"password": MASK, "ok": 1}]
    assert out["b"].startswith("y" * 1000) and "5000 characters" in out["b"]
    assert len(out["c"]) == 201 and out["c"][-1] == "… 100 more items"
    assert out["d"] is None and out["e"] is True and out["f"] == 1.5
    assert out["g"] == "<3 bytes>"
    deep: dict = {}
    cur = deep
    for _ in range(50):
        cur["x"] = {}
        cur = cur["x"]
    redact(deep)      # no recursion error
    assert redact({"password": None}) == {"password": None}
