"""Secret redaction for recorded captures: one conservative pass over bytes.

A small, deliberately conservative detector set (few false positives, so a capture
stays useful for replay): AWS access key ids and secret keys written next to their
name, GitHub tokens, JWTs, PEM private key blocks and bearer tokens. The data plane's
detectors replace this module later; callers only use ``redact_bytes`` and
``redact_header``.

A match is replaced by ``[REDACTED:<kind>]``: printable ASCII without quotes or
backslashes, so a redacted JSON document is still valid JSON (the replacement stays
inside the string the secret was in; no pattern matches across a double quote).
"""

from __future__ import annotations

import re

__all__ = ["SECRET_HEADERS", "redact_bytes", "redact_header"]

# Headers whose whole value is a credential, whatever it looks like.
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-fiveplane-token",
})
_AUTH_SCHEMES = frozenset({"basic", "bearer", "digest", "negotiate", "token", "aws4-hmac-sha256"})

_PATTERNS: tuple[tuple[str, bytes], ...] = (
    ("private_key",
     rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[^\"]*?"
     rb"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    ("aws_access_key", rb"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    ("aws_secret_key",
     rb"(?i:aws_?secret_?(?:access_?)?key)[\"']?\s*[:=]\s*[\"']?(?P<aws_secret_value>[A-Za-z0-9/+=]{40})\b"),
    ("github_token", rb"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    ("jwt", rb"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),
    ("bearer", rb"(?i:\bbearer)\s+(?P<bearer_value>[A-Za-z0-9\-._~+/]{16,}=*)"),
)
_COMBINED = re.compile(b"|".join(b"(?P<%s>%s)" % (k.encode(), p) for k, p in _PATTERNS))
# Sub-groups that hold only the secret part of a longer match (the name or scheme stays).
_INNER = {"aws_secret_key": "aws_secret_value", "bearer": "bearer_value"}


def _replace(m: re.Match[bytes]) -> bytes:
    kind = m.lastgroup or "secret"
    mark = b"[REDACTED:" + kind.encode() + b"]"
    inner = _INNER.get(kind)
    if inner is None:
        return mark
    start, end = m.span(inner)
    whole_start = m.start()
    text = m.group(0)
    return text[: start - whole_start] + mark + text[end - whole_start:]


def redact_bytes(data: bytes) -> bytes:
    """``data`` with every detected secret replaced; the same object when nothing matched."""
    if not data:
        return data
    out = _COMBINED.sub(_replace, data)
    return data if out == data else out


def redact_header(name: str, value: str) -> str:
    """A header value as it may be written: credentials headers are replaced entirely
    (an auth scheme name is kept), other values go through the detectors."""
    if name.lower() in SECRET_HEADERS:
        scheme, sep, _ = value.partition(" ")
        if sep and scheme.lower() in _AUTH_SCHEMES:
            return f"{scheme} [REDACTED]"
        return "[REDACTED]"
    raw = value.encode("utf-8", "surrogateescape")
    red = redact_bytes(raw)
    return value if red is raw else red.decode("utf-8", "surrogateescape")
