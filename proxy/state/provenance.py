"""Provenance values: normalizing and extracting the values an untrusted output carried.

A value an untrusted tool output showed the agent (an IBAN in a transaction note, an
e-mail address, a URL) is *remembered* for the session; a later call whose designated
argument carries the same value — however the agent re-spelled it — is *seen* and gets
the policy's effect. Both sides go through ``normalize_value``, so matching is equality of
normalized forms (a hash lookup in the store):

=================  ==========================================================================
kind               normalized form
=================  ==========================================================================
``url``            ``scheme://host[:port]/path``: scheme and host lowercase, default port,
                   user info, query and fragment dropped, trailing ``/`` and punctuation of
                   the path stripped (the path keeps its case)
``email``          lowercase, ``mailto:`` dropped
``iban``           spaces removed, uppercase, and only if the mod-97 check holds
``number``         8 or more digits written with separators (space ``-`` ``.`` ``/`` ``(``
                   ``)``): the digits alone (account, card, phone numbers)
``text``           anything else of 12 characters or more: NFKC, casefolded, whitespace
                   collapsed, punctuation around stripped
=================  ==========================================================================

Shorter strings are not remembered (``None``): "yes", "EUR", "completed" would taint
everything. ``normalize_value`` is idempotent, so normalized values can be normalized again.

``extract_values`` walks a tool output (JSON: every string value, integers of 8+ digits,
strings that are themselves JSON documents) and returns the normalized whole strings plus
the identifiers found *inside* longer texts (an IBAN in a sentence). The number of values
is bounded; identifiers are kept before plain text when it is reached.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

MIN_TEXT_CHARS = 12          # plain text shorter than this is not remembered
MIN_DIGITS = 8               # digit runs shorter than this are not account numbers
MAX_VALUE_CHARS = 1_000_000  # longer strings are not values (nobody passes them back whole)
MAX_JSON_TEXT = 4_000_000    # a string that parses as JSON is walked up to this size
DEFAULT_MAX_VALUES = 10_000
_CACHED_CHARS = 256          # shorter strings' normal forms and digests are cached (LRU)
_SCALARS = (str, bytes)

STRONG_KINDS = frozenset({"url", "email", "iban", "number"})

_AROUND = re.compile(r"^[\W_]+|[\W_]+$")
_URL_START = re.compile(r"(?i:https?|wss?|ftp)://")
_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_NUMBER = re.compile(r"[0-9][0-9 ()./\-]*")
_NUMBER_SEPARATORS = str.maketrans("", "", " ()./-")
_IBAN_DIGITS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}

# Candidates inside longer texts (run on the NFKC text, before casefolding).
_IBAN_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]{4}){2,7}"
                           r"(?: ?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])")
# Possessive quantifiers and a start-of-word lookbehind keep these linear on long texts.
_EMAIL_IN_TEXT = re.compile(r"(?<![\w.%+\-])[\w.%+\-]++@[\w\-]++(?:\.[\w\-]++)++")
# A lookahead, so a URL inside another URL's query (?next=https://…) is found too.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z])(?=((?i:https?|wss?|ftp)://[^\s<>\"'`]++))")
_NUMBER_IN_TEXT = re.compile(r"(?<!\w)\d(?>(?:[ \-./]?\d){7,})(?!\w)")
_HAS_DIGIT = re.compile(r"\d").search


def normalize_value(value: object) -> str | None:
    """The normalized form of a value (see the module docstring), or ``None`` when the value
    is too short or too common to remember, or not a string / integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        digits = str(abs(value))
        return digits if len(digits) >= MIN_DIGITS else None
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        return None
    if len(value) <= _CACHED_CHARS:
        return _normalize_cached(value)
    return _normalize_fixpoint(value)


def _normalize_fixpoint(value: str) -> str | None:
    result = _normalize(value)
    if value.isascii():
        return result           # one round is a fixpoint for ASCII (the property test)
    # Unicode folding is not always a fixpoint in one round (NFKC after casefold can
    # expose more); iterate so normalize(normalize(x)) == normalize(x).
    for _ in range(3):
        if result is None:
            return None
        again = _normalize(result)
        if again == result:
            return result
        result = again
    return result


_normalize_cached = lru_cache(maxsize=8192)(_normalize_fixpoint)


def _normalize(value: str) -> str | None:
    ascii_only = value.isascii()
    if not ascii_only:
        value = unicodedata.normalize("NFKC", value)
    text = _AROUND.sub("", " ".join(value.split()))
    if not text:
        return None
    if _URL_START.match(text):
        url = _url(text)
        if url is not None:
            return url
    if ascii_only:
        folded = text.lower()
    else:
        folded = unicodedata.normalize("NFKC", text.casefold())
        folded = _AROUND.sub("", " ".join(folded.split()))
    if folded.startswith("mailto:"):
        folded = folded[7:]
    if _EMAIL.fullmatch(folded):
        return folded
    compact = folded.replace(" ", "").upper()
    if _IBAN.fullmatch(compact) and iban_valid(compact):
        return compact
    if _NUMBER.fullmatch(folded):
        digits = folded.translate(_NUMBER_SEPARATORS)
        if digits.isdigit() and len(digits) >= MIN_DIGITS:
            return digits
    if len(folded) >= MIN_TEXT_CHARS:
        return folded
    return None


def _url(text: str) -> str | None:
    if any(c.isspace() for c in text):
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    scheme = parts.scheme.lower()
    host = host.rstrip(".").lower()
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = _AROUND.sub("", parts.path)
    path = f"/{path}" if path else ""
    return f"{scheme}://{netloc}{path}"


def iban_valid(compact: str) -> bool:
    """The ISO 13616 mod-97 check of an uppercase IBAN without spaces."""
    if not _IBAN.fullmatch(compact):
        return False
    return int((compact[4:] + compact[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def classify(normalized: str) -> str:
    """The kind of a normalized value: ``url``, ``email``, ``iban``, ``number`` or ``text``."""
    if _URL_START.match(normalized) and "://" in normalized and " " not in normalized:
        return "url"
    if _EMAIL.fullmatch(normalized):
        return "email"
    if normalized.isdigit():
        return "number"
    if _IBAN.fullmatch(normalized):
        return "iban"
    return "text"


def is_strong(normalized: str) -> bool:
    """Identifiers (URL, e-mail, IBAN, number) are kept longer than plain text."""
    return classify(normalized) != "text"


def value_digest(normalized: str) -> bytes:
    """What a store keeps instead of the value: 16 bytes, so entries are bounded and the
    state database holds no IBANs or addresses in clear."""
    if len(normalized) <= _CACHED_CHARS:
        return _digest_cached(normalized)
    return _digest(normalized)


def _digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).digest()


_digest_cached = lru_cache(maxsize=8192)(_digest)


def normalized_digests(values: Iterable[object], *,
                       kinds: bool = True) -> dict[str, tuple[bytes, bool]]:
    """normalized value -> (digest, strong) for the values that normalize, in order
    (``kinds=False``: ``strong`` is not computed, for lookups)."""
    if isinstance(values, _SCALARS):
        raise ValueError("values must be an iterable of strings, not one string")
    out: dict[str, tuple[bytes, bool]] = {}
    for v in values:
        n = normalize_value(v)
        if n is not None and n not in out:
            out[n] = (value_digest(n), is_strong(n) if kinds else False)
    return out


def candidates_in_text(text: str) -> Iterator[str]:
    """Normalized identifiers (IBAN, e-mail, URL, number) found inside a longer text."""
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS]
    text = unicodedata.normalize("NFKC", text)
    if "://" in text:
        for m in _URL_IN_TEXT.finditer(text):
            v = normalize_value(m.group(1))
            if v is not None and classify(v) == "url":
                yield v
    if "@" in text:
        for m in _EMAIL_IN_TEXT.finditer(text):
            v = normalize_value(m.group())
            if v is not None and classify(v) == "email":
                yield v
    if _HAS_DIGIT(text):
        for m in _IBAN_IN_TEXT.finditer(text):
            compact = m.group().replace(" ", "").upper()
            # A greedy match may have taken a word after the IBAN: try shorter prefixes.
            for end in range(len(compact), 14, -1):
                if iban_valid(compact[:end]):
                    yield compact[:end]
                    break
        for m in _NUMBER_IN_TEXT.finditer(text):
            v = normalize_value(m.group())
            if v is not None and v.isdigit():
                yield v


def extract_values(value: Any, *, max_values: int = DEFAULT_MAX_VALUES) -> set[str]:
    """Normalized candidate values of a tool output (a decoded JSON value, or a string).

    Walks iteratively (any depth); at most ``max_values`` results, identifiers first.
    """
    strong: set[str] = set()
    text: set[str] = set()
    stack: list[Any] = [value]
    budget_json = MAX_JSON_TEXT * 4   # total characters parsed from embedded JSON strings

    def add(v: str | None) -> None:
        if v is None:
            return
        if classify(v) == "text":
            if len(text) < max_values:
                text.add(v)
        elif len(strong) < max_values:
            strong.add(v)

    while stack:
        item = stack.pop()
        if isinstance(item, str):
            head = item.lstrip()[:1]
            if head in ("{", "[") and len(item) <= min(MAX_JSON_TEXT, budget_json):
                try:
                    parsed = json.loads(item)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict | list):
                    # A JSON document in a string (MCP text content): its values count,
                    # not the document text as a whole.
                    budget_json -= len(item)
                    stack.append(parsed)
                    continue
            whole = normalize_value(item)
            add(whole)
            if (whole is not None and len(item) > MIN_TEXT_CHARS
                    and classify(whole) in ("text", "url")):
                for v in candidates_in_text(item):   # identifiers inside a longer text
                    add(v)                            # (or a URL's query: ?next=https://…)
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and len(k) >= MIN_TEXT_CHARS:
                    for c in candidates_in_text(k):
                        add(c)
                stack.append(v)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            add(normalize_value(item))
        if len(strong) >= max_values and len(text) >= max_values:
            break
    if len(strong) >= max_values:
        return set(sorted(strong)[:max_values])
    room = max_values - len(strong)
    if len(text) > room:
        text = set(sorted(text)[:room])
    return strong | text
