"""Secret, PII and custom detectors, compiled into one scanner.

Speed comes from how CPython's ``re`` searches. A pattern whose alternatives all begin with
a *literal* character gets a "charset prefix": the engine skips non-candidate characters in
a tight C loop and only enters the matcher (~100 ns per entry) at a candidate. So:

* **Text pass** - one combined alternation over the text. Every branch starts with a rare
  *anchor* character (``A`` of ``AKIA``, ``-`` of ``-----BEGIN``/``sk-``/``glpat-``, ``_`` of
  ``ghp_``, ``J`` of ``eyJ``, ``@`` of an e-mail, ``+`` of an E.164 number, ``k``/``c``/``w``/
  ``z`` inside the keywords token/key, secret/credential, password/pwd, authorization) and
  checks what comes before the anchor with fixed-width look-behinds. Custom regexes join
  the same alternation, one branch per possible first character.
* **Number pass** - digits are far too frequent to be anchors (10-15 % of a JSON corpus).
  Number-shaped PII (cards, IBANs, SSNs, North-American phone numbers) is found on a folded
  copy of the text (``0-9`` and ``A-Z`` → ``0``, one byte per character, so offsets are
  unchanged) with one pattern that starts with the literal ``000``: the engine's
  literal-prefix search visits only runs of three or more digits/capitals.

Validators (Luhn + IIN table, IBAN length table + mod 97, SSN area/group/serial rules,
Shannon entropy, JWT header decoding) run only on candidates that the patterns matched.
No detector rescans the text. A :class:`Finding` carries offsets, the detector name, the
short label used in redaction markers and a *masked* preview, never the matched value.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from re import _parser as sre_parse  # private but stable since 3.11; used for custom regexes
from typing import Any

from .prefilter import Table, coarse_alternative, coarse_pattern

__all__ = [
    "BUILTIN_DETECTORS",
    "GROUPS",
    "Finding",
    "PatternError",
    "Scanner",
    "compile_detectors",
    "expand_selectors",
    "iban_valid",
    "luhn_valid",
    "shannon_entropy",
    "ssn_valid",
]


class PatternError(ValueError):
    """A detector specification that cannot be compiled (bad regex, unknown name, ...).

    ``code`` is a stable policy issue code, ``index`` the position of the offending custom
    detector (or ``None``) and ``field`` the key inside it (``"regex"``, ``"id"``).
    """

    def __init__(self, message: str, *, code: str = "policy_pattern_error",
                 index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class Finding:
    """One detection. ``start``/``end`` index the scanned string (for JSON: the key or value
    string named by ``path``). ``preview`` is masked: it never holds the secret itself."""

    detector: str
    start: int
    end: int
    label: str
    preview: str
    path: tuple[str | int, ...] = ()
    in_key: bool = False
    action: str | None = None
    #: where the detector's match is anchored (may precede ``start``: keyword assignments);
    #: streams use it to know how far back a finding depends on the text
    anchor: int = field(default=-1, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"detector": self.detector, "label": self.label,
                             "preview": self.preview, "start": self.start, "end": self.end}
        if self.path:
            d["path"] = list(self.path)
        if self.in_key:
            d["in_key"] = True
        if self.action is not None:
            d["action"] = self.action
        return d


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Built-in detector names → the short label used in ``[REDACTED:<label>]`` markers.
BUILTIN_DETECTORS: dict[str, str] = {
    "secrets.aws_access_key_id": "aws_access_key_id",
    "secrets.aws_secret_key": "aws_secret_key",
    "secrets.gcp_service_account": "gcp_service_account",
    "secrets.azure_storage_key": "azure_storage_key",
    "secrets.github_token": "github_token",
    "secrets.gitlab_token": "gitlab_token",
    "secrets.slack_token": "slack_token",
    "secrets.slack_webhook": "slack_webhook",
    "secrets.stripe_key": "stripe_key",
    "secrets.openai_api_key": "openai_api_key",
    "secrets.anthropic_api_key": "anthropic_api_key",
    "secrets.private_key": "private_key",
    "secrets.jwt": "jwt",
    "secrets.generic": "secret",
    "pii.email": "email",
    "pii.phone": "phone",
    "pii.credit_card": "credit_card",
    "pii.iban": "iban",
    "pii.ssn": "ssn",
}

#: Selector groups usable in ``detect`` and in action/label maps.
GROUPS: dict[str, tuple[str, ...]] = {
    "secrets": tuple(n for n in BUILTIN_DETECTORS if n.startswith("secrets.")),
    "pii": tuple(n for n in BUILTIN_DETECTORS if n.startswith("pii.")),
}

_KEYWORD_DETECTORS = frozenset({"secrets.aws_secret_key", "secrets.gcp_service_account",
                                "secrets.azure_storage_key", "secrets.generic"})
_NUMBER_DETECTORS = frozenset({"pii.credit_card", "pii.iban", "pii.ssn", "pii.phone"})

#: Longest e-mail local part looked at left of the ``@`` (RFC 5321: 64 octets).
_EMAIL_LOCAL_MAX = 64
#: Custom regexes may match at most this many characters (the stream overlap must cover it).
CUSTOM_MAX_WIDTH = 4096
#: A custom regex may start with at most this many distinct characters.
CUSTOM_MAX_FIRST_CHARS = 128
#: Default Shannon entropy threshold (bits per character) for ``secrets.generic``.
DEFAULT_ENTROPY = 3.0


def expand_selectors(selector: str, available: Iterable[str]) -> list[str]:
    """Detector names matched by a selector: a group (``secrets``, ``pii``, ``custom``), an
    exact name, or a glob with ``*`` (``pii.*``, ``secrets.aws_*``)."""
    names = list(available)
    if selector in GROUPS:
        return [n for n in names if n in GROUPS[selector]]
    if selector == "custom":
        return [n for n in names if n.startswith("custom.")]
    if "*" in selector:
        rx = re.compile("".join(".*" if c == "*" else re.escape(c) for c in selector) + r"\Z")
        return [n for n in names if rx.match(n)]
    return [n for n in names if n == selector]


# --------------------------------------------------------------------------------------------
# Validators (run on candidates only)
# --------------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iin_ok(d: str) -> bool:
    """Issuer prefix + length sanity (ISO/IEC 7812 ranges of the big networks)."""
    n = len(d)
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)                           # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16                                     # Mastercard
    if p2 in (34, 37):
        return n == 15                                     # American Express
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19                               # Diners Club
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:
        return 16 <= n <= 19                               # Discover
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19                               # JCB
    if p2 == 62:
        return 16 <= n <= 19                               # UnionPay
    if p2 == 50 or 56 <= p2 <= 58 or p2 in (63, 67):
        return 13 <= n <= 19                               # Maestro
    return False


def card_valid(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.isdigit() and _iin_ok(digits) and luhn_valid(digits)


#: IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def iban_valid(iban: str) -> bool:
    """Country length table + ISO 7064 mod 97-10 check (compact form, upper case)."""
    if len(iban) < 15 or IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    if not (iban[2:4].isdigit() and iban.isalnum() and iban.isascii()):
        return False
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


_SSN_INVALID = frozenset({"078051120", "219099999"})  # published in advertising


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """US SSN structure rules: area 001-899 except 666, group 01-99, serial 0001-9999."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return area + group + serial not in _SSN_INVALID


def shannon_entropy(s: str) -> float:
    n = len(s)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _jwt_header_ok(segment: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and ("alg" in header or "typ" in header)


def _mask(value: str, head: int = 0, tail: int = 0) -> str:
    n = len(value)
    head = min(head, n // 2)
    tail = min(tail, max(0, n - head) // 4)
    return f"{value[:head]}…{value[n - tail:] if tail else ''} ({n} chars)"


# --------------------------------------------------------------------------------------------
# Marker passes: branches
# --------------------------------------------------------------------------------------------

# Generic value of a keyword assignment: no whitespace, quotes, brackets or separators.
_VAL = r"""[^\s"'`,;<>\\\[\](){}]"""
_KW_TAIL = (
    r"""(?i:[_.\-]?(?:id|key|value|string|hash|b64))?"""   # private_key_id, password_hash
    r"""["'\\]{0,3}[ \t]{0,4}(?::=|=>|[:=])[ \t]{0,4}["'\\]{0,3}"""
    r"""(?:(?i:bearer|basic|token)[ \t]{1,4})?"""
    rf"""(?P<{{g}}v>{_VAL}{{8,512}})(?!{_VAL})"""
)
_KEY_PREFIXES = ("api", "access", "secret", "private", "account", "storage", "auth",
                 "encryption", "signing", "client", "master", "subscription")


@dataclass(frozen=True)
class _Branch:
    key: str            # handler key
    pattern: str        # starts with a literal anchor; "{g}" is the group-name prefix
    lead: int           # characters of the finding that precede the anchor (max)


def _token_branches(enabled: frozenset[str]) -> list[_Branch]:
    """Pass T: specific secrets. Each branch is anchored on a character whose *next*
    character is specific (``k-`` of ``sk-``, ``gh`` of ``ghp_``, ``-----BEGIN``), so the
    combined alternation rejects most anchor occurrences after one character."""
    b: list[_Branch] = []
    on = enabled.__contains__
    if on("secrets.aws_access_key_id"):
        b.append(_Branch("aws_id", r"A[KSBC3][A-Z0-9]{2}(?<![A-Za-z0-9]....)"
                                   r"(?:(?<=AKIA)|(?<=ASIA)|(?<=ABIA)|(?<=ACCA)|(?<=A3T.))"
                                   r"[A-Z0-9]{16}(?![A-Za-z0-9])", 0))
    if on("secrets.private_key"):
        hdr = r"[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        body = r"[A-Za-z0-9+/=\s:,.\\\-]"    # base64, headers, real or escaped newlines
        # Without an END line (truncated key): base64 lines only, so prose after it is kept.
        lines = r"(?:(?:\\r)?(?:\\n|\r?\n)[A-Za-z0-9+/=]{1,80}){0,80}"
        b.append(_Branch("pem", rf"-----BEGIN{hdr}(?:{body}{{0,8192}}?-----END{hdr}"
                                rf"|{lines})", 0))
    if on("secrets.anthropic_api_key"):
        b.append(_Branch("anthropic", r"k-ant-(?:api(?<![A-Za-z0-9_\-]sk-ant-api)(?<=sk-ant-api)"
                                      r"|admin(?<![A-Za-z0-9_\-]sk-ant-admin)(?<=sk-ant-admin))"
                                      r"[0-9]{2}-[A-Za-z0-9_\-]{80,120}(?![A-Za-z0-9_\-])", 1))
    if on("secrets.openai_api_key"):
        b.append(_Branch("openai", r"k-(?<=sk-)(?<![A-Za-z0-9_\-]sk-)"
                                   r"(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}"
                                   r"|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"
                                   r"|[A-Za-z0-9]{32,64})(?![A-Za-z0-9_\-])", 1))
    if on("secrets.stripe_key"):
        b.append(_Branch("stripe", r"k_(?:live|test)_(?<=[sr]k_live_|[sr]k_test_)"
                                   r"(?<![A-Za-z0-9_][sr]k_live_)(?<![A-Za-z0-9_][sr]k_test_)"
                                   r"[A-Za-z0-9]{10,247}(?![A-Za-z0-9_])", 1))
        b.append(_Branch("whsec", r"whsec_(?<![A-Za-z0-9_]whsec_)"
                                  r"[A-Za-z0-9+/=]{24,128}(?![A-Za-z0-9_+/=])", 0))
    if on("secrets.gitlab_token"):
        b.append(_Branch("gitlab", r"glpat-(?<![A-Za-z0-9_\-]glpat-)"
                                   r"[A-Za-z0-9_\-]{20,64}(?:\.[A-Za-z0-9_\-]{2,40}){0,2}"
                                   r"(?![A-Za-z0-9_\-])", 0))
    if on("secrets.github_token"):
        b.append(_Branch("github", r"gh[pousr]_(?<![A-Za-z0-9_]gh[pousr]_)"
                                   r"[A-Za-z0-9]{36,251}(?![A-Za-z0-9_])", 0))
        b.append(_Branch("github", r"github_pat_(?<![A-Za-z0-9_]github_pat_)"
                                   r"[A-Za-z0-9_]{50,240}(?![A-Za-z0-9_])", 0))
    if on("secrets.slack_token"):
        b.append(_Branch("slack", r"xox[abeoprs]-(?<![A-Za-z0-9_\-]xox[abeoprs]-)"
                                  r"[0-9A-Za-z][0-9A-Za-z\-]{8,250}(?![0-9A-Za-z_\-])", 0))
    if on("secrets.jwt"):
        b.append(_Branch("jwt", r"yJ(?<=eyJ)(?<![A-Za-z0-9_\-]eyJ)(?P<{g}h>[A-Za-z0-9_\-]{4,1024})"
                                r"\.[A-Za-z0-9_\-]{2,6144}\.[A-Za-z0-9_\-]{0,1024}"
                                r"(?![A-Za-z0-9_\-])", 1))
    if on("pii.phone"):
        b.append(_Branch("e164", r"\+[1-9](?<![A-Za-z0-9+]\+.)"
                                 r"(?:[0-9]|[ .\-](?=[0-9(])|\((?=[0-9]{1,4}\))|\)){6,24}"
                                 r"(?<=[0-9])(?![0-9])", 0))
    return b


def _email_branches(enabled: frozenset[str]) -> list[_Branch]:
    """Pass E: e-mail addresses, a literal search for ``@`` (its continuation is too broad
    to share a marker with other anchors)."""
    if "pii.email" not in enabled:
        return []
    return [_Branch("email", r"@[A-Za-z0-9](?<=[A-Za-z0-9._%+\-]@.)[A-Za-z0-9\-]{0,62}\."
                             r"(?:[A-Za-z0-9][A-Za-z0-9\-]{0,62}\.){0,7}"
                             r"[A-Za-z]{2,24}(?![A-Za-z0-9\-])", _EMAIL_LOCAL_MAX)]


def _keyword_branches(enabled: frozenset[str]) -> list[_Branch]:
    """Pass K: keyword assignments (``password=...``, ``"api_key": "..."``), anchored on the
    rarest letter of each keyword and checked right to left."""
    if not enabled & _KEYWORD_DETECTORS:
        return _webhook_branches(enabled)
    keys = "|".join(f"(?<=(?i:{p}{sep}key))" for p in _KEY_PREFIXES for sep in ("", r"[_.\-]"))
    heads = {
        "k": "{a}(?:(?i:en)(?<=(?i:token))|(?i:ey)(?:" + keys + "))",
        "c": "{a}(?:(?i:ret)(?<=(?i:secret))|(?i:redentials?))",
        "w": "{a}(?:(?i:ord)(?<=(?i:password))|(?i:d)(?:(?<=(?i:passwd))|(?<=(?i:pwd))))",
        "z": "{a}(?i:ation)(?<=(?i:authorization))",
    }
    return [_Branch("kw", head.replace("{a}", a) + _KW_TAIL, 0)
            for low, head in heads.items() for a in (low, low.upper())
            ] + _webhook_branches(enabled)


def _webhook_branches(enabled: frozenset[str]) -> list[_Branch]:
    """Slack webhooks share pass K: anchored on the ``k`` of ``slack``."""
    if "secrets.slack_webhook" not in enabled:
        return []
    return [_Branch("slack_webhook", r"k\.com/(?<=https://hooks\.slack\.com/)"
                                     r"(?:services|workflows|triggers)/"
                                     r"[A-Za-z0-9_/+\-]{16,256}(?![A-Za-z0-9_/+\-])", 17)]


# --------------------------------------------------------------------------------------------
# Number pass: shapes on the folded text
# --------------------------------------------------------------------------------------------

# ASCII digits and capitals -> "0", lower case -> "a", everything else -> " " (a boundary).
_NUM_TABLE = bytes(
    ord("0") if chr(c) in string.digits + string.ascii_uppercase
    else ord("a") if chr(c) in string.ascii_lowercase else ord(" ")
    for c in range(256))


def _number_shapes(enabled: frozenset[str]) -> bytes | None:
    """Shapes after the first three characters of a run (each group separator is ' ').
    Every shape starts with a literal and names itself with an empty group at its end, so
    the engine rejects non-matching shapes after one byte."""
    shapes: list[bytes] = []
    if enabled & {"pii.credit_card", "pii.iban"}:
        shapes.append(rb"00{9,30}(?P<run>)")                    # 13..34 alphanumerics
        shapes.append(rb"0(?: 0000){2,7}(?: 0{1,4})?(?P<grp>)")  # 4-4-4-4(-...)
        shapes.append(rb"0 000000 0{4,5}(?P<amx>)")              # 4-6-5 / 4-6-4
    if "pii.ssn" in enabled:
        shapes.append(rb" 00 0000(?P<ssn>)")
    if "pii.phone" in enabled:
        shapes.append(rb" 000 0000(?P<nanp>)")                   # 415-555-2671, (415)555-..
        shapes.append(rb"  000 0000(?P<nanpp>)")                 # (415) 555-2671
    if not shapes:
        return None
    return rb"000(?:" + rb"|".join(shapes) + rb")(?![0a])"


# --------------------------------------------------------------------------------------------
# Custom regexes
# --------------------------------------------------------------------------------------------

_GLOBAL_FLAGS = re.compile(r"\A\(\?([aiLmsux]+)\)")
_CUSTOM_ID = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")


@dataclass(frozen=True)
class _Custom:
    name: str
    label: str
    regex: re.Pattern[str]      # standalone, for documentation and direct use
    embedded: str               # pattern text to embed (scoped flags)
    first: frozenset[str]
    width: int                  # max match width + look-ahead reach
    behind: int                 # look-behind reach


def _first_chars(items: Any, flags: int) -> tuple[set[str] | None, bool]:
    """(possible first characters, nullable) of a parsed pattern sequence; None = unbounded."""
    out: set[str] = set()
    for op, av in items:
        name = str(op)
        if name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue                                     # zero width
        if name == "LITERAL":
            out.add(chr(av))
            return out, False
        if name == "IN":
            chars = _class_chars(av)
            if chars is None:
                return None, False
            out |= chars
            return out, False
        if name == "SUBPATTERN":
            _, add, dele, sub = av
            f, nullable = _first_chars(sub.data, (flags | add) & ~dele)
        elif name == "ATOMIC_GROUP":
            f, nullable = _first_chars(av.data, flags)
        elif name == "BRANCH":
            f, nullable = set(), False
            for alt in av[1]:
                fa, na = _first_chars(alt.data, flags)
                if fa is None:
                    return None, False
                f |= fa
                nullable = nullable or na
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _, sub = av
            f, nullable = _first_chars(sub.data, flags)
            nullable = nullable or lo == 0
        else:                                            # ANY, NOT_LITERAL, GROUPREF, ...
            return None, False
        if f is None:
            return None, False
        out |= f
        if not nullable:
            return out, False
    return out, True


def _class_chars(items: Any) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            chars.add(chr(av))
        elif name == "RANGE":
            lo, hi = av
            if hi - lo >= CUSTOM_MAX_FIRST_CHARS:
                return None
            chars.update(chr(c) for c in range(lo, hi + 1))
        elif name == "CATEGORY":
            cat = str(av)
            if cat == "CATEGORY_DIGIT":
                chars.update(string.digits)
            elif cat == "CATEGORY_WORD":
                chars.update(string.ascii_letters + string.digits + "_")
            elif cat == "CATEGORY_SPACE":
                chars.update(" \t\n\r\f\v")
            else:
                return None
        else:                                            # NEGATE, ...
            return None
    return chars


def _reach(items: Any) -> tuple[int, int]:
    """Extra reach (look-ahead, look-behind) of assertions inside a parsed pattern."""
    ahead = behind = 0
    for op, av in items:
        name = str(op)
        subs: list[Any] = []
        if name in ("ASSERT", "ASSERT_NOT"):
            direction, sub = av
            width = sub.getwidth()[1]
            if direction > 0:
                ahead += width
            else:
                behind += width
            subs = [sub]
        elif name == "SUBPATTERN":
            subs = [av[3]]
        elif name == "ATOMIC_GROUP":
            subs = [av]
        elif name == "BRANCH":
            subs = list(av[1])
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            subs = [av[2]]
        for sub in subs:
            a, b = _reach(sub.data)
            ahead += a
            behind += b
    return ahead, behind


def _has_groupref(items: Any) -> bool:
    for op, av in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return True
        subs: list[Any] = []
        if name in ("ASSERT", "ASSERT_NOT"):
            subs = [av[1]]
        elif name == "SUBPATTERN":
            subs = [av[3]]
        elif name == "ATOMIC_GROUP":
            subs = [av]
        elif name == "BRANCH":
            subs = list(av[1])
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            subs = [av[2]]
        if any(_has_groupref(s.data) for s in subs):
            return True
    return False


def _compile_custom(index: int, spec: Mapping[str, Any]) -> _Custom:
    cid = spec.get("id")
    if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
        raise PatternError(
            f"custom detector id {cid!r} must be lower case letters, digits and `_`, "
            "starting with a letter", code="policy_schema_error", index=index, field="id")
    pattern = spec.get("regex")
    if not isinstance(pattern, str) or not pattern:
        raise PatternError(f"custom detector `{cid}`: `regex` must be a non-empty string",
                           code="policy_schema_error", index=index, field="regex")
    label = spec.get("label")
    if label is not None and not isinstance(label, str):
        raise PatternError(f"custom detector `{cid}`: `label` must be a string",
                           code="policy_schema_error", index=index, field="label")

    def bad(msg: str) -> PatternError:
        return PatternError(f"custom detector `{cid}`: {msg}", index=index, field="regex")

    try:
        standalone = re.compile(pattern, re.ASCII)
        parsed = sre_parse.parse(pattern, re.ASCII)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        raise bad(f"invalid regex{where}: {e.msg}") from None
    if parsed.state.groupdict:
        raise bad("named groups are not supported (use `(?:...)`)")
    if _has_groupref(parsed.data):
        raise bad("backreferences are not supported")
    lo, hi = parsed.getwidth()
    if lo == 0:
        raise bad("the regex can match the empty string")
    ahead, behind = _reach(parsed.data)
    if hi >= sre_parse.MAXWIDTH or ahead >= sre_parse.MAXWIDTH:
        raise bad("the regex can match unboundedly long text (`+`, `*` or `{n,}`); bound it, "
                  "e.g. `{1,64}`, so that streams can be scanned with a finite window")
    if hi + ahead > CUSTOM_MAX_WIDTH:
        raise bad(f"the regex can match up to {hi + ahead} characters; at most "
                  f"{CUSTOM_MAX_WIDTH} are allowed")
    first, nullable = _first_chars(parsed.data, parsed.state.flags)
    if first is not None and parsed.state.flags & re.IGNORECASE:
        first = first | {c.swapcase() for c in first if c.isascii()}
    if first is None or nullable or len(first) > CUSTOM_MAX_FIRST_CHARS:
        raise bad("the regex must start with a bounded set of characters (at most "
                  f"{CUSTOM_MAX_FIRST_CHARS}), e.g. a literal prefix; `.`, `\\S` or `[^...]` "
                  "at the start would make every position of every body a candidate")
    body = pattern
    m = _GLOBAL_FLAGS.match(pattern)
    if m:
        flags = m.group(1).replace("a", "").replace("u", "").replace("L", "")
        rest = pattern[m.end():]
        if "x" in flags:
            rest += "\n"                      # a trailing comment must not eat our ")"
        body = f"(?{flags}:{rest})" if flags else rest
    try:
        re.compile(f"(?<=(?=(?:{body}))[\\s\\S])", re.ASCII)
    except re.error as e:
        raise bad(f"cannot be combined with the other detectors: {e.msg}") from None
    return _Custom(name=f"custom.{cid}", label=cid, regex=standalone, embedded=body,
                   first=frozenset(first), width=hi + ahead, behind=behind)


# --------------------------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------------------------

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}\Z")
_HEX40 = re.compile(r"[0-9a-f]{40}\Z")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}\Z")
_AZURE_KEY = re.compile(r"[A-Za-z0-9/+]{86}==\Z")
_IDENTIFIER = re.compile(r"[a-z]+(?:[_.\-][a-z]+)+\Z")
_PLACEHOLDER = re.compile(r"(?:x{4,}|\*{3,}|\.{3,}|change_?me|example|placeholder|redacted|dummy"
                          r"|sample|null|none|true|false|undefined|your[_\-].*|.*[_\-]here)\Z")
# ${VAR}, $VAR, %(name)s, %s, {{ var }}, <your-key>: a template, not a value
_TEMPLATE = re.compile(r"\$\{|\$[A-Za-z_]|%\(|%[sd](?![A-Za-z0-9])|\{\{|<")
_NOT_SECRET_CTX = ("page", "next", "cursor", "continuation", "csrf", "xsrf")
_PASSWORD_CTX = ("pass", "pwd")
_GLUE = frozenset("-.")


class _MarkerPass:
    """One combined alternation: a coarse prefilter over the translated text, then the
    precise pattern on the original text at each coarse hit."""

    __slots__ = ("coarse", "dispatch", "precise", "table", "width")

    def __init__(self, branches: list[tuple[str, str, Any]], anchors: Iterable[str],
                 *, fold_case: bool = False) -> None:
        self.table = Table(anchors, fold_case=fold_case)
        self.dispatch: dict[str, tuple[str, Any]] = {}
        parts = []
        alts = []
        for i, (key, pattern, arg) in enumerate(branches):
            g = f"g{i}"
            text = pattern.replace("{g}", g)
            parts.append(text + f"(?P<{g}>)")
            self.dispatch[g] = (key, g if arg is None else arg)
            alts.append(coarse_alternative(text, re.ASCII, self.table))
        self.precise = re.compile("|".join(parts), re.ASCII)
        # One anchor character: the precise pattern already starts with a literal.
        self.coarse = coarse_pattern(alts) if len(set(anchors)) > 1 else None
        self.width = sre_parse.parse(self.precise.pattern, re.ASCII).getwidth()[1]


class Scanner:
    """A compiled set of detectors. Immutable after construction (safe to share).

    :meth:`scan` returns the findings of a string ordered by start. Findings of one pass never
    overlap; findings of different passes may (redaction merges overlapping spans).
    """

    def __init__(self, detectors: Iterable[str], custom: Sequence[_Custom] = (),
                 *, entropy: float = DEFAULT_ENTROPY) -> None:
        self.custom = tuple(custom)
        builtin = frozenset(detectors)
        self.builtin = builtin
        self.entropy = entropy
        self.detectors: tuple[str, ...] = tuple(
            [n for n in BUILTIN_DETECTORS if n in builtin] + [c.name for c in self.custom])
        self.labels: dict[str, str] = {n: BUILTIN_DETECTORS[n] for n in BUILTIN_DETECTORS
                                       if n in builtin}
        self.labels.update({c.name: c.label for c in self.custom})

        rare = _token_branches(builtin)
        email = _email_branches(builtin)
        kw = _keyword_branches(builtin)
        self._rare = _MarkerPass([(br.key, br.pattern, None) for br in rare],
                                 {br.pattern.lstrip("\\")[0] for br in rare}) if rare else None
        self._email = _MarkerPass([(br.key, br.pattern, None) for br in email], "@"
                                  ) if email else None
        self._kw = _MarkerPass([(br.key, br.pattern, None) for br in kw], "cCkKwWzZ",
                               fold_case=True) if kw else None
        custom_branches: list[tuple[str, str, Any]] = []
        for j, c in enumerate(self.custom):
            for k, ch in enumerate(sorted(c.first)):
                g = f"c{j}x{k}"
                custom_branches.append(
                    ("custom", f"{re.escape(ch)}(?<=(?=(?P<{g}v>{c.embedded}))[\\s\\S])",
                     (c, g + "v")))
        self._custom = _MarkerPass(custom_branches, set().union(*(c.first for c in self.custom))
                                   ) if custom_branches else None
        shapes = _number_shapes(builtin)
        self._num = re.compile(b" " + shapes) if shapes else None
        self._num0 = re.compile(shapes) if shapes else None

        width = max([0] + [p.width for p in (self._rare, self._email, self._custom)
                           if p is not None]
                    + [c.width for c in self.custom] + ([48] if shapes else []))
        kw_width = self._kw.width if self._kw is not None else 0
        lead = max([1] + [br.lead for br in rare + email + kw])
        #: Characters a stream must hold back: the widest match, counted from where its
        #: finding may start, plus look-aheads, plus the widest keyword assignment (whose
        #: fate depends on findings inside its value).
        self.window = width + kw_width + lead + 64 + 128
        #: Characters of already-emitted text that look-behinds may need to see.
        self.context = max([64] + [c.behind + 1 for c in self.custom]) + lead

    def __repr__(self) -> str:
        return f"Scanner({len(self.detectors)} detectors, window={self.window})"

    # --- public ----------------------------------------------------------------------------

    def scan(self, text: str) -> list[Finding]:
        """All findings in ``text``, ordered by (start, end)."""
        return self.scan_range(text, 0, len(text))

    def scan_range(self, text: str, pos: int, endpos: int) -> list[Finding]:
        """Findings whose match is anchored in ``[pos, endpos)``; the whole of ``text`` is
        context (look-behinds, look-aheads and matches may read outside the range)."""
        if not text:
            return []
        raw = text.encode("ascii", "replace")
        specific: list[Finding] = []
        for p in (self._rare, self._email, self._custom):
            if p is not None:
                self._marker_pass(p, text, raw, pos, endpos, specific)
        if self._num is not None:
            self._number_pass(text, raw, pos, endpos, specific)
        if self._num is not None and self._rare is not None:
            specific = _drop_numbers_inside_secrets(specific)
        if self._kw is None:
            specific.sort(key=_order)
            return specific
        found: list[Finding] = []
        self._marker_pass(self._kw, text, raw, pos, endpos, found)
        if found and specific:
            specific.sort(key=_order)
            starts = [f.start for f in specific]
            found = [f for f in found if not _covered(f, specific, starts, self.window)]
        found.extend(specific)
        found.sort(key=_order)
        return found

    # --- marker passes -----------------------------------------------------------------------

    def _marker_pass(self, p: _MarkerPass, text: str, raw: bytes, pos: int, endpos: int,
                     out: list[Finding]) -> None:
        if p.coarse is None:
            marked: Any = text
            search = p.precise.search
        else:
            marked = raw.translate(p.table.bytes)
            search = p.coarse.search
        match = p.precise.match
        dispatch = p.dispatch
        floor = pos
        while pos < endpos:
            cm = search(marked, pos)
            if cm is None:
                return
            s = cm.start()
            if s >= endpos:
                return
            m = cm if p.coarse is None else match(text, s)
            got = None
            if m is not None:
                key, arg = dispatch[m.lastgroup or ""]
                got = self._handle(key, arg, m, text, floor, out)
            if got is None:
                pos = s + 1                  # rejected: another match may start inside
            else:
                pos = floor = max(got, s + 1)

    def _handle(self, key: str, arg: Any, m: re.Match[str], text: str, floor: int,
                out: list[Finding]) -> int | None:
        """Validate a candidate; append its finding; return where the next search starts."""
        s, e = m.start(), m.end()
        if key == "kw":
            return self._keyword(m, arg, text, out)
        if key == "custom":
            c, g = arg
            gs, ge = m.span(g)
            out.append(Finding(c.name, gs, ge, c.label, _mask(text[gs:ge]), anchor=gs))
            return ge
        if key == "aws_id":
            return self._add(out, "secrets.aws_access_key_id", s, e, text, 4, at=s)
        if key == "pem":
            hdr_end = text.find("-----", s + 10) + 5
            return self._add(out, "secrets.private_key", s, e, text, 0,
                             preview=f"{text[s:hdr_end]}… ({e - s} chars)", at=s)
        if key == "jwt":
            if not _jwt_header_ok("eyJ" + text[m.start(arg + "h"):m.end(arg + "h")]):
                return None
            return self._add(out, "secrets.jwt", s - 1, e, text, 3, at=s)
        if key == "email":
            lm = _EMAIL_LOCAL.search(text, max(floor, s - _EMAIL_LOCAL_MAX), s)
            if lm is None:
                return None
            start = lm.start()
            while start < s and text[start] == ".":
                start += 1
            if start == s:
                return None
            return self._add(out, "pii.email", start, e, text, 0, preview=f"***{text[s:e]}", at=s)
        if key == "e164":
            digits = sum(ch.isdigit() for ch in text[s:e])
            if not 8 <= digits <= 15:
                return None
            return self._add(out, "pii.phone", s, e, text, 0, tail=2, at=s)
        if key == "anthropic":
            return self._add(out, "secrets.anthropic_api_key", s - 1, e, text, 7, at=s)
        if key == "openai":
            head = 8 if text.startswith("proj-", s + 2) else 3
            return self._add(out, "secrets.openai_api_key", s - 1, e, text, head, at=s)
        if key == "gitlab":
            return self._add(out, "secrets.gitlab_token", s, e, text, 6, at=s)
        if key == "slack":
            return self._add(out, "secrets.slack_token", s, e, text, 5, at=s)
        if key == "github":
            return self._add(out, "secrets.github_token", s, e, text,
                             11 if text.startswith("github_pat_", s) else 4, at=s)
        if key == "stripe":
            return self._add(out, "secrets.stripe_key", s - 1, e, text, 8, at=s)
        if key == "whsec":
            return self._add(out, "secrets.stripe_key", s, e, text, 6, at=s)
        if key == "slack_webhook":
            return self._add(out, "secrets.slack_webhook", s - 18, e, text, 33, at=s)
        raise AssertionError(key)  # pragma: no cover

    def _add(self, out: list[Finding], det: str, s: int, e: int, text: str, head: int,
             tail: int = 0, preview: str | None = None, *, at: int) -> int:
        out.append(Finding(det, s, e, self.labels[det],
                           preview if preview is not None else _mask(text[s:e], head, tail),
                           anchor=at))
        return e

    def _keyword(self, m: re.Match[str], g: str, text: str, out: list[Finding]) -> int | None:
        vs, ve = m.span(g + "v")
        value = text[vs:ve]
        ctx = text[max(0, m.start() - 24):vs].lower()
        on = self.builtin.__contains__
        det = None
        if on("secrets.gcp_service_account") and "private_key_id" in ctx \
                and _HEX40.match(value):
            det = "secrets.gcp_service_account"
        elif on("secrets.azure_storage_key") and _AZURE_KEY.match(value) \
                and ("account" in ctx or "storage" in ctx or "azure" in ctx):
            det = "secrets.azure_storage_key"
        elif on("secrets.aws_secret_key") and _AWS_SECRET.match(value) and "secret" in ctx \
                and ("aws" in ctx or "access" in ctx) and shannon_entropy(value) >= 3.5:
            det = "secrets.aws_secret_key"
        elif on("secrets.generic") and self._generic_ok(value, ctx):
            det = "secrets.generic"
        if det is None:
            return None
        return self._add(out, det, vs, ve, text, 0, at=m.start())

    def _generic_ok(self, value: str, ctx: str) -> bool:
        if any(w in ctx for w in _NOT_SECRET_CTX):
            return False
        if value.isdigit() and not any(w in ctx for w in _PASSWORD_CTX):
            return False
        if _TEMPLATE.match(value) or _IDENTIFIER.match(value) \
                or _PLACEHOLDER.match(value.lower()):
            return False
        return shannon_entropy(value) >= self.entropy

    # --- number pass -------------------------------------------------------------------------

    def _number_pass(self, text: str, raw: bytes, pos: int, endpos: int,
                     out: list[Finding]) -> None:
        rx, rx0 = self._num, self._num0
        assert rx is not None and rx0 is not None
        folded = raw.translate(_NUM_TABLE)
        if pos == 0:
            m = rx0.match(folded)
            got = self._number(m.lastgroup or "", text, 0, m.end(), out) if m else None
            pos = got if got is not None else 1
        search = rx.search
        at = pos - 1                       # a candidate starts at the boundary before a run
        while at < endpos - 1:
            m = search(folded, at)
            if m is None or m.start() >= endpos - 1:
                return
            start = m.start() + 1
            got = self._number(m.lastgroup or "", text, start, m.end(), out)
            at = got - 1 if got is not None else start

    def _number(self, kind: str, text: str, s: int, e: int, out: list[Finding]) -> int | None:
        on = self.builtin.__contains__
        if kind == "run":
            first = text[s]
            if first in "23456":        # issuer prefixes; epoch-ms timestamps start with 1
                if on("pii.credit_card") and card_valid(text[s:e]) and not _glued(text, s, e):
                    return self._add(out, "pii.credit_card", s, e, text, 0, 4, at=s)
            elif "A" <= first <= "Z" and on("pii.iban") and iban_valid(text[s:e]):
                return self._add(out, "pii.iban", s, e, text, 2, 2, at=s)
            return None
        v = text[s:e]
        if kind in ("grp", "amx"):
            return self._grouped(text, s, v, out)
        if _glued(text, s, e):
            return None
        if kind == "ssn":
            if v[3] == v[6] == "-" and v[:3].isdigit() and v[4:6].isdigit() \
                    and v[7:].isdigit() and ssn_valid(v[:3], v[4:6], v[7:]):
                return self._add(out, "pii.ssn", s, e, text, 0,
                                 preview="***-**-**** (11 chars)", at=s)
            return None
        # North-American numbers: 415-555-2671, 415.555.2671, (415)555-2671, (415) 555-2671
        if s > 0 and text[s - 1] == "(" and v[3] == ")":
            start, rest = s - 1, v[4:].lstrip(" ")
            ok = len(rest) == 8 and rest[3] in "-. "
        else:
            start, rest = s, v[4:]
            ok = kind == "nanp" and v[3] == rest[3] and v[3] in _GLUE
        digits = v[:3] + rest[:3] + rest[4:]
        if ok and digits.isdigit() and digits[0] in "23456789" and digits[3] in "23456789":
            return self._add(out, "pii.phone", start, e, text, 0, tail=2, at=s)
        return None

    def _grouped(self, text: str, s: int, raw: str, out: list[Finding]) -> int | None:
        """Space- or dash-grouped card or IBAN; trailing groups that do not fit are dropped."""
        on = self.builtin.__contains__
        seps = {ch for ch in raw if not ch.isalnum()}
        if len(seps) != 1 or not seps <= {" ", "-"}:
            return None
        sep = seps.pop()
        groups = raw.split(sep)
        ends, at = [], s
        for grp in groups:
            at += len(grp)
            ends.append(at)
            at += 1
        for n in range(len(groups), 1, -1):
            compact = "".join(groups[:n])
            if compact.isdigit():
                if on("pii.credit_card") and card_valid(compact) \
                        and not _glued(text, s, ends[n - 1]):
                    return self._add(out, "pii.credit_card", s, ends[n - 1], text, 0, 4, at=s)
            elif on("pii.iban") and sep == " " and iban_valid(compact):
                return self._add(out, "pii.iban", s, ends[n - 1], text, 2, 2, at=s)
        return None


def _order(f: Finding) -> tuple[int, int]:
    return (f.start, f.end)


def _covered(kw: Finding, specific: list[Finding], starts: list[int], reach: int) -> bool:
    """A keyword finding whose value holds a specific secret is reported as that secret."""
    i = bisect.bisect_left(starts, kw.end) - 1
    while i >= 0 and starts[i] > kw.start - reach:
        f = specific[i]
        if f.end > kw.start and not f.detector.startswith("pii."):
            return True
        i -= 1
    return False


def _drop_numbers_inside_secrets(found: list[Finding]) -> list[Finding]:
    """A digit group inside a token (``xoxb-…-5744852702388-…``) is not a card or phone."""
    secrets = sorted((f.start, f.end) for f in found if f.detector.startswith("secrets."))
    if not secrets:
        return found
    starts = [s for s, _ in secrets]
    out = []
    for f in found:
        if f.detector.startswith("pii.") and f.detector != "pii.email":
            i = bisect.bisect_right(starts, f.start) - 1
            if i >= 0 and secrets[i][1] >= f.end:
                continue
        out.append(f)
    return out


def _glued(text: str, s: int, e: int) -> bool:
    """Digits continue right before or after with a dash or dot: part of a longer number."""
    before = s >= 2 and text[s - 1] in _GLUE and text[s - 2].isdigit()
    after = e + 1 < len(text) and text[e] in _GLUE and text[e + 1].isdigit()
    return before or after


def compile_detectors(builtin_names: Iterable[str],
                      custom: Sequence[Mapping[str, Any]] = (),
                      *, entropy: float = DEFAULT_ENTROPY) -> Scanner:
    """Build a :class:`Scanner`.

    ``builtin_names`` holds selectors: groups (``secrets``, ``pii``), exact names
    (``pii.iban``) or globs (``pii.*``). ``custom`` holds ``{id, regex, label?}`` mappings;
    each becomes detector ``custom.<id>`` whose marker label is the id (``label`` is a
    session label, used by :func:`proxy.dlp.policy.compile_data`, not by the scanner).
    Custom regexes are compiled with ``re.ASCII``. Raises :class:`PatternError` with a clear message
    on an unknown name, a duplicate id, or a regex that is invalid, unbounded, can match the
    empty string, or does not start with a bounded set of characters.
    """
    names: set[str] = set()
    for sel in builtin_names:
        hit = expand_selectors(sel, BUILTIN_DETECTORS)
        if not hit:
            raise PatternError(f"unknown detector `{sel}` (known: secrets, pii, "
                               + ", ".join(BUILTIN_DETECTORS) + ")",
                               code="policy_reference_error")
        names.update(hit)
    compiled: list[_Custom] = []
    seen: set[str] = set()
    for i, spec in enumerate(custom):
        if not isinstance(spec, Mapping):
            raise PatternError("a custom detector must be a mapping {id, regex, label?}",
                               code="policy_schema_error", index=i)
        c = _compile_custom(i, spec)
        if c.name in seen:
            raise PatternError(f"custom detector id `{c.name[7:]}` is used twice",
                               code="policy_duplicate_id", index=i, field="id")
        seen.add(c.name)
        compiled.append(c)
    return Scanner(names, compiled, entropy=entropy)

