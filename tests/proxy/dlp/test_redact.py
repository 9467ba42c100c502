"""Redaction of text, JSON values and bodies."""

from __future__ import annotations

import copy
import json

import pytest

from proxy.codec import BodyError
from proxy.dlp import (
    compile_detectors,
    marker,
    process_text,
    redact_json,
    redact_json_body,
    redact_text,
    redact_text_body,
)
from proxy.dlp.detectors import Finding

SC = compile_detectors(["secrets", "pii"])
REDACT_ALL = {d: "redact" for d in SC.detectors}
CARD = "4111 1111 1111 1111"
AKIA = "AKIAIOSFODNN7EXAMPLE"
GH = "ghp_" + "a1B2c3D4e5" * 3 + "abcdef"


def test_marker_and_redact_text() -> None:
    text = f"key {AKIA} and card {CARD}."
    out = redact_text(text, SC.scan(text))
    assert out == "key [REDACTED:aws_access_key_id] and card [REDACTED:credit_card]."
    assert marker("x") == "[REDACTED:x]"


def test_overlapping_findings_merge_into_one_marker() -> None:
    f1 = Finding("a", 2, 6, "a", "")
    f2 = Finding("b", 4, 9, "b", "")
    assert redact_text("0123456789", [f2, f1]) == "01[REDACTED:a]9"


def test_process_text_actions() -> None:
    text = f"{AKIA} mail a@b.example.com"
    r = process_text(text, SC, {"secrets.aws_access_key_id": "deny", "pii.email": "redact"})
    assert [f.action for f in r.denied] == ["deny"]
    assert r.value == f"{AKIA} mail [REDACTED:email]"
    r = process_text(text, SC, {})  # missing -> allow
    assert r.value is text and not r.changed and len(r.findings) == 2
    assert {f.action for f in r.findings} == {"allow"}


def test_redacted_text_is_not_redetected() -> None:
    text = f"password=Xk9#mQ2!vL token={GH} {CARD}"
    once = process_text(text, SC, REDACT_ALL).value
    assert process_text(once, SC, REDACT_ALL).findings == ()


# --- JSON -------------------------------------------------------------------------------------


def _message() -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 42,
        "result": {
            "content": [{"type": "text", "text": f"card {CARD}, mail jane@corp.example.com"}],
            "structuredContent": {
                "pan": 4111111111111111,
                "amount": 12.5,
                "ok": True,
                "none": None,
                "password": "Xk9#mQ2!vL",
                "nested": [[[{"deep": f"token {GH}"}]]],
                AKIA: "secret in a key",
                "[REDACTED:aws_access_key_id]": "taken",
            },
        },
    }


def test_redact_json_keeps_valid_json_and_ids() -> None:
    msg = _message()
    before = copy.deepcopy(msg)
    r = redact_json(msg, SC, REDACT_ALL)
    assert msg == before  # input never mutated
    doc = json.loads(json.dumps(r.value))  # still valid JSON
    assert doc["id"] == 42 and doc["jsonrpc"] == "2.0"
    assert (
        doc["result"]["content"][0]["text"] == "card [REDACTED:credit_card], mail [REDACTED:email]"
    )
    sc = doc["result"]["structuredContent"]
    assert sc["pan"] == "[REDACTED:credit_card]"  # a number becomes the marker string
    assert sc["amount"] == 12.5 and sc["ok"] is True and sc["none"] is None
    assert sc["password"] == "[REDACTED:secret]"
    assert sc["nested"] == [[[{"deep": "token [REDACTED:github_token]"}]]]
    # the key was redacted; it collided with an existing key, so it got a suffix
    assert sc["[REDACTED:aws_access_key_id]"] == "taken"
    assert sc["[REDACTED:aws_access_key_id]~2"] == "secret in a key"
    assert AKIA not in json.dumps(doc) and GH not in json.dumps(doc)
    # untouched branches are shared, changed ones copied
    assert r.value["result"] is not msg["result"]
    paths = {f.path for f in r.findings}
    assert ("result", "structuredContent", "pan") in paths
    assert ("result", "structuredContent", "nested", 0, 0, 0, "deep") in paths
    key = next(f for f in r.findings if f.in_key)
    assert key.path == ("result", "structuredContent", AKIA) and (key.start, key.end) == (0, 20)


def test_unchanged_json_is_the_same_object() -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "result": {"text": "nothing to see", "n": 5}}
    r = redact_json(msg, SC, REDACT_ALL)
    assert r.value is msg and r.findings == ()
    r = redact_json(_message(), SC, {})
    assert r.findings and not r.changed


def test_jsonrpc_protocol_fields_are_never_rewritten() -> None:
    msg = {"jsonrpc": "2.0", "id": AKIA, "method": "tools/call", "params": {"a": AKIA}}
    r = redact_json(msg, SC, REDACT_ALL)
    assert r.value["id"] == AKIA  # id untouched ...
    assert [f.path for f in r.denied] == [("id",)]  # ... so the message is denied
    assert r.value["params"]["a"] == "[REDACTED:aws_access_key_id]"
    batch = [msg, {"jsonrpc": "2.0", "id": 2, "result": {"t": CARD}}]
    r = redact_json(batch, SC, REDACT_ALL)
    assert [f.path for f in r.denied] == [(0, "id")]
    assert r.value[1]["result"]["t"] == "[REDACTED:credit_card]" and r.value[1]["id"] == 2
    # not JSON-RPC: an "id" member is ordinary data
    r = redact_json({"id": AKIA}, SC, REDACT_ALL)
    assert r.value == {"id": "[REDACTED:aws_access_key_id]"} and not r.denied


def test_scalar_roots() -> None:
    assert redact_json(f"x {AKIA}", SC, REDACT_ALL).value == "x [REDACTED:aws_access_key_id]"
    assert redact_json(4111111111111111, SC, REDACT_ALL).value == "[REDACTED:credit_card]"
    assert redact_json(3.5, SC, REDACT_ALL).value == 3.5
    assert redact_json(True, SC, REDACT_ALL).value is True


def test_key_context_is_used_for_keyword_detectors() -> None:
    r = redact_json({"db": {"password": "Xk9#mQ2!vL", "note": "Xk9#mQ2!vL"}}, SC, REDACT_ALL)
    assert r.value == {"db": {"password": "[REDACTED:secret]", "note": "Xk9#mQ2!vL"}}
    f = r.findings[0]
    assert f.path == ("db", "password") and (f.start, f.end) == (0, 10) and not f.in_key


def test_segments_do_not_bleed_into_each_other() -> None:
    # a PEM header at the end of one string and base64 at the start of the next
    doc = ["-----BEGIN PRIVATE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"]
    r = redact_json(doc, SC, REDACT_ALL)
    assert r.value == ["[REDACTED:private_key]", doc[1]]


def test_deeply_nested_value_without_recursion_error() -> None:
    deep: object = f"card {CARD}"
    for _ in range(10_000):
        deep = [deep]
    r = redact_json(deep, SC, REDACT_ALL)
    inner = r.value
    for _ in range(10_000):
        assert isinstance(inner, list)
        inner = inner[0]
    assert inner == "card [REDACTED:credit_card]"
    assert len(r.findings[0].path) == 10_000


def test_deeply_nested_body_is_refused_by_the_depth_guard() -> None:
    body = b"[" * 10_000 + b"1" + b"]" * 10_000
    with pytest.raises(BodyError) as info:
        redact_json_body(body, SC, REDACT_ALL)
    assert info.value.code == "json_too_deep"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "invalid_json"),
        (b'{"a": 1', "invalid_json"),
        (b'{"a": "\xff"}', "invalid_utf8"),
        (b'{"a": 1, "a": 2}', "duplicate_key"),
    ],
)
def test_bad_json_bodies_are_refused(body: bytes, code: str) -> None:
    with pytest.raises(BodyError) as info:
        redact_json_body(body, SC, REDACT_ALL)
    assert info.value.code == code


def test_json_body() -> None:
    body = json.dumps(_message()).encode()
    r = redact_json_body(body, SC, REDACT_ALL)
    doc = json.loads(r.value)
    assert doc["result"]["structuredContent"]["pan"] == "[REDACTED:credit_card]"
    clean = b'{"jsonrpc":"2.0","id":1,"result":{"t":"fine"}}'
    assert redact_json_body(clean, SC, REDACT_ALL).value is clean


def test_text_body_with_invalid_utf8_passes_bytes_through() -> None:
    body = b"\xff\xfe binary \x80 " + AKIA.encode() + b" \xc3\xa9t\xc3\xa9 \xed\xa0\x80 end"
    r = redact_text_body(body, SC, REDACT_ALL)
    assert r.value == body.replace(AKIA.encode(), b"[REDACTED:aws_access_key_id]")
    clean = b"\xff\xfe nothing"
    assert redact_text_body(clean, SC, REDACT_ALL).value is clean
