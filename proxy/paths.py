"""URL path normalization shared by the policy compiler and the request translator.

Rules match the path the upstream will route on, so the path is normalized the way
servers do before matching: percent-encoded unreserved characters decoded, dot
segments removed (RFC 3986 §5.2.4), repeated slashes collapsed. ``%2F`` stays encoded
(servers differ on it, so rules see it literally and cannot be bypassed by it).
"""

from __future__ import annotations

import re
from functools import lru_cache

_UNRESERVED = re.compile(r"%(2[DdEe]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")


def _decode_unreserved(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 16))


@lru_cache(maxsize=8192)
def normalize_path(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        path = _UNRESERVED.sub(_decode_unreserved, path)
    if not path.startswith("/"):
        path = "/" + path
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = "/" if segments[-1] in ("", ".", "..") and out else ""
    return "/" + "/".join(out) + trailing
