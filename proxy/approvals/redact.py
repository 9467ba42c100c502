"""A small secret masker for what approvers see (``***`` in place of secrets).

Display only: the approval digest is computed over the raw arguments, never over this
output. The data plane's detectors will replace this module; callers only use
``redact(value)``.

Masked:

* the value of any key whose name says it holds a secret (``password``, ``token``,
  ``secret``, ``authorization``, ``api_key``, ``private_key``, ``cookie``, ...), whatever
  the value's type;
* strings that look like keys: well-known prefixes (``sk-``, ``ghp_``, ``AKIA``, ``xoxb-``,
  JWTs, PEM private keys, ``Bearer ...``), and long unbroken strings mixing upper case,
  lower case and digits with high entropy; inside free text only the key-like part is
  masked;
* the password of ``scheme://user:password@host`` URLs and secret-named query parameters.

The output is bounded: strings longer than ``max_string`` characters are cut, containers
deeper than ``max_depth`` or longer than ``max_items`` are summarized.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

MASK = "***"

_SECRET_KEY = re.compile(
    r"(password|passwd|passphrase|^pass$|^pwd$|secret|token|authori[sz]ation|^auth$|"
    r"^authheader$|apikey|accesskey|privatekey|credential|cookie|^signature$|^sig$|"
    r"sessionkey|^otp$|^pin$|^cvv$|^cvc$)"
)
_KEY_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    r"\b[Bb]earer\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\b[Bb]asic\s+[A-Za-z0-9+/=]{8,}",
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",      # JWT
    r"\b(?:sk|pk|rk)[-_](?:live|test|proj|ant)?[-_]?[A-Za-z0-9_-]{16,}",  # OpenAI, Stripe...
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bglpat-[A-Za-z0-9_-]{16,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z_-]{30,}",
    r"\bfp[0-9]{1,4}\.[A-Za-z0-9._~-]{16,}",                         # fiveplane tokens
]
_KEY_LIKE = re.compile("|".join(f"(?:{p})" for p in _KEY_PATTERNS))
_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)")
_QUERY_SECRET = re.compile(
    r"([?&;](?:[A-Za-z0-9_.-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|"
    r"signature|sig|auth|credential)[A-Za-z0-9_.-]*)=)([^&;#\s]+)", re.IGNORECASE)
_WORD = re.compile(r"(?<![A-Za-z0-9+_=-])[A-Za-z0-9+_=-]{32,}")


def is_secret_key(name: str) -> bool:
    """True when a mapping key names a secret (``X-Api-Key``, ``client_secret``, ...)."""
    return bool(_SECRET_KEY.search(re.sub(r"[^a-z0-9]", "", name.lower())))


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _random_looking(word: str) -> bool:
    return (any(c.isupper() for c in word) and any(c.islower() for c in word)
            and any(c.isdigit() for c in word) and _entropy(word) >= 4.0)


def redact_text(text: str) -> str:
    """Mask the key-like parts of a string (the whole string when it is one key)."""
    out = _KEY_LIKE.sub(MASK, text)
    out = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), out)
    out = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, out)
    return _WORD.sub(lambda m: MASK if _random_looking(m.group(0)) else m.group(0), out)


def redact(value: Any, *, max_string: int = 1000, max_items: int = 200,
           max_depth: int = 20) -> Any:
    """A redacted, bounded copy of a JSON-like value (mappings, sequences, scalars)."""

    def walk(v: Any, depth: int) -> Any:
        if isinstance(v, str):
            v = redact_text(v)
            if len(v) > max_string:
                return f"{v[:max_string]}… ({len(v)} characters)"
            return v
        if v is None or isinstance(v, bool | int | float):
            return v
        if depth >= max_depth:
            return "…"
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for i, (k, item) in enumerate(v.items()):
                if i >= max_items:
                    out["…"] = f"{len(v) - max_items} more keys"
                    break
                key = str(k)
                out[key] = MASK if is_secret_key(key) and item not in (None, "") \
                    else walk(item, depth + 1)
            return out
        if isinstance(v, list | tuple):
            items = [walk(item, depth + 1) for item in v[:max_items]]
            if len(v) > max_items:
                items.append(f"… {len(v) - max_items} more items")
            return items
        if isinstance(v, bytes | bytearray):
            return f"<{len(v)} bytes>"
        return walk(str(v), depth)

    return walk(value, 0)
