"""Detectors: true positives, near misses, custom regexes, the coarse prefilter."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.dlp import BUILTIN_DETECTORS, GROUPS, PatternError, compile_detectors
from proxy.dlp.detectors import iban_valid, luhn_valid, shannon_entropy, ssn_valid

ALL = compile_detectors(["secrets", "pii"])

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9"
    "lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6"
    "ffAt0gunVTLw7onLRnrq0\n/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPL"
    "\n-----END RSA PRIVATE KEY-----"
)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" + "k1L2m3N4o5P6q7R8"
AZURE = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# (detector, text, the exact matched value)
POSITIVES = [
    ("secrets.aws_access_key_id", "key AKIAIOSFODNN7EXAMPLE in", "AKIAIOSFODNN7EXAMPLE"),
    ("secrets.aws_access_key_id", '"AccessKeyId": "ASIAJEXAMPLEXEG2JICE"', "ASIAJEXAMPLEXEG2JICE"),
    ("secrets.aws_secret_key", f"aws_secret_access_key = {AWS_SECRET}\n", AWS_SECRET),
    ("secrets.aws_secret_key", f'{{"SecretAccessKey": "{AWS_SECRET}"}}', AWS_SECRET),
    ("secrets.aws_secret_key", f"AWS_SECRET_KEY={AWS_SECRET}", AWS_SECRET),
    ("secrets.gcp_service_account", '"private_key_id": "' + "3f9a" * 10 + '",', "3f9a" * 10),
    (
        "secrets.azure_storage_key",
        f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={AZURE};",
        AZURE,
    ),
    ("secrets.github_token", f"token {GH} ok", GH),
    ("secrets.github_token", "gho_" + "Z" * 36, "gho_" + "Z" * 36),
    (
        "secrets.github_token",
        "x github_pat_" + "11ABCDEFG0" * 6 + "_abc y",
        "github_pat_" + "11ABCDEFG0" * 6 + "_abc",
    ),
    ("secrets.gitlab_token", "glpat-xxxxxxxxxxxxxxxxxxxx", "glpat-xxxxxxxxxxxxxxxxxxxx"),
    (
        "secrets.slack_token",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx.",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    ),
    ("secrets.slack_token", "xoxp-1234-5678-abcdef", "xoxp-1234-5678-abcdef"),
    (
        "secrets.slack_webhook",
        "post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ),
    (
        "secrets.stripe_key",
        "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    ),
    ("secrets.stripe_key", "rk_test_" + "a" * 24, "rk_test_" + "a" * 24),
    ("secrets.stripe_key", "whsec_" + "Ab1" * 11, "whsec_" + "Ab1" * 11),
    ("secrets.openai_api_key", "sk-proj-" + "Ab3_x-" * 10, "sk-proj-" + "Ab3_x-" * 10),
    (
        "secrets.openai_api_key",
        "sk-" + "A" * 20 + "T3BlbkFJ" + "b" * 20,
        "sk-" + "A" * 20 + "T3BlbkFJ" + "b" * 20,
    ),
    (
        "secrets.anthropic_api_key",
        "sk-ant-api03-" + "x9Y_" * 23 + "AA",
        "sk-ant-api03-" + "x9Y_" * 23 + "AA",
    ),
    ("secrets.private_key", f"key:\n{PEM}\nend", PEM),
    ("secrets.private_key", PEM.replace("\n", "\\n"), PEM.replace("\n", "\\n")),
    (
        "secrets.private_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n (cut)",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=",
    ),
    ("secrets.jwt", f"Authorization: Bearer {JWT}", JWT),
    ("secrets.generic", "password=Tr0ub4dor&3x", "Tr0ub4dor&3x"),
    ("secrets.generic", '"client_secret": "9f8Kq2LmZx71Pw"', "9f8Kq2LmZx71Pw"),
    ("secrets.generic", "DB_PASSWD: 'hK8#2mQz!x'", "hK8#2mQz!x"),
    ("secrets.generic", "x-api-key: Zq81kLmP0aX7", "Zq81kLmP0aX7"),
    ("secrets.generic", "Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    (
        "pii.email",
        "mail john.doe+tag@mail.example.co.uk, thanks",
        "john.doe+tag@mail.example.co.uk",
    ),
    ("pii.phone", "call +1 415 555 2671 now", "+1 415 555 2671"),
    ("pii.phone", "call +44 20 7946 0958.", "+44 20 7946 0958"),
    ("pii.phone", "call +4915112345678", "+4915112345678"),
    ("pii.phone", "tel (415) 555-2671", "(415) 555-2671"),
    ("pii.phone", "tel 415-555-2671.", "415-555-2671"),
    ("pii.phone", "tel 415.555.2671", "415.555.2671"),
    ("pii.credit_card", "card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
    ("pii.credit_card", "card 4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("pii.credit_card", '{"pan": 5500000000000004}', "5500000000000004"),
    ("pii.credit_card", "amex 3782 822463 10005", "3782 822463 10005"),
    ("pii.credit_card", "visa13 4222222222222", "4222222222222"),
    ("pii.credit_card", "discover 6011000990139424", "6011000990139424"),
    ("pii.credit_card", "card 4111 1111 1111 1111 2024", "4111 1111 1111 1111"),
    ("pii.iban", "IBAN DE89 3704 0044 0532 0130 00 EUR", "DE89 3704 0044 0532 0130 00"),
    ("pii.iban", "to GB82WEST12345698765432.", "GB82WEST12345698765432"),
    ("pii.iban", "NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("pii.ssn", "ssn: 123-45-6789", "123-45-6789"),
    ("pii.ssn", "SSN 899-99-9998.", "899-99-9998"),
]


@pytest.mark.parametrize(
    ("detector", "text", "value"),
    POSITIVES,
    ids=[f"{d}-{i}" for i, (d, _, _) in enumerate(POSITIVES)],
)
def test_true_positive(detector: str, text: str, value: str) -> None:
    found = [f for f in ALL.scan(text) if f.detector == detector]
    assert [text[f.start : f.end] for f in found] == [value]
    f = found[0]
    assert f.label == BUILTIN_DETECTORS[detector]
    # never more than a masked preview of the value
    assert value not in f.preview and value not in repr(f) and value not in str(f.to_dict())
    # the single-detector scanner finds it too (no dependence on other detectors)
    alone = compile_detectors([detector]).scan(text)
    assert [text[g.start : g.end] for g in alone] == [value]


NEGATIVES = [
    ("pii.credit_card", "card 4111 1111 1111 1112"),  # Luhn fails
    ("pii.credit_card", "card 4111111111111112"),
    ("pii.credit_card", "ts 1718000000000 and 1700000000005"),  # epoch ms, bad IIN
    ("pii.credit_card", "id 9111111111111119"),  # no such issuer
    ("pii.credit_card", "card 4111 1111-1111 1111"),  # mixed separators
    ("pii.credit_card", "x4111111111111111"),  # glued to a word
    ("pii.iban", "IBAN DE89 3704 0044 0532 0130 01"),  # checksum fails
    ("pii.iban", "DE89370400440532013001"),
    ("pii.iban", "DE8937040044053201300"),  # wrong length for DE
    ("pii.iban", "QQ89370400440532013000"),  # no such country
    ("pii.ssn", "000-12-3456 666-12-3456 900-12-3456 999-99-9999"),
    ("pii.ssn", "123-00-4567 123-45-0000"),
    ("pii.ssn", "078-05-1120"),  # the Woolworth wallet SSN
    ("pii.ssn", "1-123-45-6789-1 123 45 6789"),
    ("pii.phone", "date 2024-01-15 and 10:22:00, ip 192.168.100.200"),
    ("pii.phone", "tel 415-555.2671 and 123-555-2671"),  # mixed seps, area code 1xx
    ("pii.phone", "+1 2 3"),  # too few digits
    ("pii.phone", "x+14155552671"),  # glued to a word
    ("pii.email", "user@localhost and @decorator and a@b"),
    ("secrets.generic", "password=aaaaaaaa"),  # low entropy
    ("secrets.generic", "password=changeme password: ${DB_PASSWORD} password=$PW"),
    ("secrets.generic", "token: my_secret_value_here"),
    ("secrets.generic", '"next_page_token": "CAUQAA8x9LmZ"'),  # pagination cursor
    ("secrets.generic", '"tokenizer": "bert-base-uncased-x1"'),
    ("secrets.generic", '"max_tokens": 4096, "total_tokens": 12345678'),
    ("secrets.generic", "password=[REDACTED:secret]"),  # our own marker
    ("secrets.aws_access_key_id", "xAKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLEX"),
    ("secrets.aws_secret_key", f"sha1 {'ab' * 20} value {AWS_SECRET}"),  # no keyword
    ("secrets.github_token", "ghp_short123 and xghp_" + "a" * 36),
    ("secrets.jwt", "eyJub3QganNvbg.eyJzdWIiOjF9.sig"),  # header is not JSON
    ("secrets.private_key", "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----"),
    ("secrets.openai_api_key", "risk-free task-management sk-short"),
    ("secrets.stripe_key", "pk_live_" + "a" * 24),  # publishable, not secret
]


@pytest.mark.parametrize(
    ("detector", "text"), NEGATIVES, ids=[f"{d}-{i}" for i, (d, _) in enumerate(NEGATIVES)]
)
def test_near_miss(detector: str, text: str) -> None:
    assert [f for f in ALL.scan(text) if f.detector == detector] == []


def test_every_builtin_detector_has_positive_and_negative_tests() -> None:
    assert {d for d, _, _ in POSITIVES} == set(BUILTIN_DETECTORS)
    assert {d for d, _ in NEGATIVES} >= set(BUILTIN_DETECTORS) - {
        "secrets.gcp_service_account",
        "secrets.azure_storage_key",
        "secrets.slack_token",
        "secrets.slack_webhook",
        "secrets.gitlab_token",
        "secrets.anthropic_api_key",
    }


def test_validators() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")
    assert ssn_valid("123", "45", "6789")
    for area, group, serial in [
        ("000", "12", "3456"),
        ("666", "12", "3456"),
        ("912", "12", "3456"),
        ("123", "00", "4567"),
        ("123", "45", "0000"),
    ]:
        assert not ssn_valid(area, group, serial)
    assert shannon_entropy("aaaaaaaa") == 0 and shannon_entropy("abcd") == 2


def test_keyword_value_holding_a_specific_secret_reports_the_specific_one() -> None:
    text = f'{{"token": "{GH}", "id_token": "{JWT}"}}'
    assert [f.detector for f in ALL.scan(text)] == ["secrets.github_token", "secrets.jwt"]


def test_offsets_with_non_ascii_and_surrogate_escapes() -> None:
    text = "héllo \udcff€ AKIAIOSFODNN7EXAMPLE ✓ a@b.example.org"
    found = ALL.scan(text)
    assert [text[f.start : f.end] for f in found] == ["AKIAIOSFODNN7EXAMPLE", "a@b.example.org"]


def test_empty_and_detectorless() -> None:
    assert ALL.scan("") == []
    assert compile_detectors([]).scan("AKIAIOSFODNN7EXAMPLE") == []


def test_groups_and_globs() -> None:
    assert compile_detectors(["pii.*"]).detectors == GROUPS["pii"]
    assert compile_detectors(["secrets.aws_*"]).detectors == (
        "secrets.aws_access_key_id",
        "secrets.aws_secret_key",
    )
    with pytest.raises(PatternError, match=r"unknown detector `pii\.cc`"):
        compile_detectors(["pii.cc"])


def test_findings_of_a_long_text_are_ordered_and_complete() -> None:
    text = "\n".join(t for _, t, _ in POSITIVES)
    found = ALL.scan(text)
    assert found == sorted(found, key=lambda f: (f.start, f.end))
    values = {text[f.start : f.end] for f in found}
    assert all(v in values for _, _, v in POSITIVES)


# --- custom detectors -----------------------------------------------------------------------


def test_custom_detector() -> None:
    sc = compile_detectors(
        [], [{"id": "employee_id", "regex": r"EMP-[0-9]{6}", "label": "read:hr"}]
    )
    text = "ids EMP-123456, EMP-12345 and xEMP-654321"
    found = sc.scan(text)
    assert [text[f.start : f.end] for f in found] == ["EMP-123456", "EMP-654321"]
    assert found[0].detector == "custom.employee_id" and found[0].label == "employee_id"


def test_custom_detector_flags_and_classes() -> None:
    sc = compile_detectors(
        ["secrets"],
        [
            {"id": "project", "regex": r"(?i)proj-[a-z]{3}-\d{4}"},
            {"id": "ticket", "regex": r"\b[A-Z]{2,4}-\d{1,6}\b"},
            {"id": "hex", "regex": r"(?x) deadbeef [0-9a-f]{8}  # a comment"},
        ],
    )
    text = "PROJ-ABC-1234 and JIRA-42 and deadbeef0123abcd, AKIAIOSFODNN7EXAMPLE"
    got = sorted((f.detector, text[f.start : f.end]) for f in sc.scan(text))
    assert got == [
        ("custom.hex", "deadbeef0123abcd"),
        ("custom.project", "PROJ-ABC-1234"),
        ("custom.ticket", "JIRA-42"),
        ("secrets.aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
    ]


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(unclosed", "invalid regex at position 0"),
        ("[a-z]+@corp", "unboundedly long"),
        ("x{0,3}", "empty string"),
        (".{8}secret", "bounded set of characters"),
        ("[^x]{3}", "bounded set of characters"),
        (r"(a)\1", "backreferences"),
        ("(?P<n>ab)", "named groups"),
        ("a{5000}", "at most 4096"),
    ],
)
def test_custom_regex_errors_are_clear(regex: str, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)) as info:
        compile_detectors([], [{"id": "bad", "regex": regex}])
    assert info.value.code == "policy_pattern_error"
    assert info.value.index == 0 and info.value.field == "regex"
    assert "custom detector `bad`" in str(info.value)


def test_custom_spec_errors() -> None:
    with pytest.raises(PatternError) as info:
        compile_detectors([], [{"id": "Bad Id", "regex": "x"}])
    assert info.value.code == "policy_schema_error" and info.value.field == "id"
    with pytest.raises(PatternError) as info:
        compile_detectors([], [{"id": "a", "regex": "ab"}, {"id": "a", "regex": "cd"}])
    assert info.value.code == "policy_duplicate_id" and info.value.index == 1


# --- the coarse prefilter never loses a match -------------------------------------------------


def _reference(scanner):  # type: ignore[no-untyped-def]
    """The same scanner, but every pass searches the precise pattern directly."""
    import copy

    ref = copy.copy(scanner)
    for name in ("_rare", "_kw", "_custom", "_email"):
        p = getattr(scanner, name)
        if p is not None:
            q = copy.copy(p)
            q.coarse = None
            setattr(ref, name, q)
    return ref


_ALPHABET = (
    "AKIASBC3J-_@+.:=\"' \n0123456789abcdefghijklmnopqrstuvwxyzEXMPLQRTUVWXYZkKcCwWzZeyghlpostxr/"
)
_PIECES = [
    "AKIA",
    "IOSFODNN7EXAMPLE",
    "sk-",
    "ant-api03-",
    "proj-",
    "glpat-",
    "ghp_",
    "github_pat_",
    "xoxb-",
    "whsec_",
    "sk_live_",
    "eyJhbGciOiJIUzI1NiJ9",
    ".",
    "-----BEGIN",
    " PRIVATE KEY-----",
    "password",
    "secret",
    "token",
    "api_key",
    "Authorization",
    "credentials",
    ": ",
    "=",
    '"',
    "x" * 20,
    "Zq81kLmP0aX7wQ",
    "@example.com",
    "john",
    "+1 415 555 2671",
    "4111 1111 1111 1111",
    "DE89370400440532013000",
    "123-45-6789",
    "EMP-123456",
    "https://hooks.slack.com/services/",
    "T000/B000/XXXXXXXXXXXXXXXXXX",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(_ALPHABET, max_size=12)), max_size=30))
def test_prefilter_is_a_superset(pieces: list[str]) -> None:
    text = "".join(pieces)
    sc = compile_detectors(["secrets", "pii"], [{"id": "emp", "regex": r"EMP-[0-9]{6}"}])
    assert sc.scan(text) == _reference(sc).scan(text)


def test_passes_begin_with_a_literal_marker() -> None:
    # The speed of the scanner rests on this: see proxy/dlp/prefilter.py.
    for p in (ALL._rare, ALL._kw):
        assert p.coarse.pattern.startswith(b"\\x01")
    assert ALL._num.pattern.startswith(b" 000")
    assert ALL._email.coarse is None and ALL._email.precise.pattern.startswith("@")


def test_window_covers_every_match() -> None:
    assert ALL.window > 8192 + 512  # PEM bodies and JWTs
    assert compile_detectors(["pii"]).window < 2048
    sc = compile_detectors([], [{"id": "x", "regex": "a{1000}(?=b{100})"}])
    assert sc.window >= 1100


def test_regressions_found_by_the_benchmark_corpus() -> None:
    # a hex request id whose first 13 characters are a Luhn-valid Visa number
    assert ALL.scan("req=4314425865541fb3 ip=10.1.2.3") == []
    # a Luhn-valid group inside a Slack token is part of the token, not a card
    text = "xoxb-970846724934-5744852702388-57d07PBOaAbCdEfGhIjKl"
    assert [f.detector for f in ALL.scan(text)] == ["secrets.slack_token"]
    # a password that merely starts with % is not a template placeholder
    assert [f.detector for f in ALL.scan("DB_PASSWORD=%o8tIijc7qyciO")] == ["secrets.generic"]
    assert ALL.scan("password=%(db_password)s and password=<your-password>") == []
