"""Session keys: which requests share state.

A session is the **principal chain** (the digest of the delegation token, or
``"anonymous"``) plus a **session id**, picked in this order:

1. the explicit ``X-Fiveplane-Session`` request header: the agent (or its operator)
   names the task, and every channel that sends it — several MCP servers, plain HTTP —
   shares one session;
2. the MCP ``Mcp-Session-Id`` header: one MCP connection is one session;
3. neither: no id, and the session is the principal itself (one token = one session,
   the *principal session*, ``principal_session(digest)``).

The key is a hash, so it is bounded (about 45 ASCII characters), safe as a SQLite value,
a Redis key and a CLI argument, and an id chosen by one principal can never name another
principal's session (the principal is part of the hash)::

    <principal prefix>.<32 hex digits>
    e.g. 3f9a0c1d2e4b.9b1c...   anonymous.77d0...

Security note: ids 1 and 2 are chosen by the client (or by the server it talks to), so a
hostile agent can start a fresh session whenever it likes. State that must not be
escapable — taint labels of a sequence rule, budgets that must hold, a kill — belongs on
the principal as well: mark the principal session too, use ``scope: principal`` budgets,
kill with ``kill_principal``. See ``proxy/state/README.md``.
"""

from __future__ import annotations

import hashlib
import re

ANONYMOUS_DIGEST = "anonymous"
SESSION_HEADER = "x-fiveplane-session"
MCP_SESSION_HEADER = "mcp-session-id"

_HEX = re.compile(r"[0-9a-f]{12,}")
_VERSION = "fiveplane-session-v1"


def pick_session_id(explicit: str | None, mcp_session_id: str | None) -> str | None:
    """The session id a request names: the explicit header first, then the MCP one.

    Empty or blank values count as absent. ``None``: the request names no session.
    """
    for value in (explicit, mcp_session_id):
        if value is not None:
            value = value.strip()
            if value:
                return value
    return None


def session_key(principal_digest: str | None, session_id: str | None = None) -> str:
    """The state key of the session named by ``session_id`` for this principal.

    ``principal_digest``: the token digest (``VerifiedChain.digest``), or ``None`` /
    ``""`` / ``"anonymous"`` for requests without a token. ``session_id``: from
    ``pick_session_id``; ``None`` (or blank) gives the principal session.
    """
    principal = principal_digest or ANONYMOUS_DIGEST
    if not isinstance(principal, str):
        raise ValueError("principal digest must be a string")
    sid = (session_id or "").strip()
    h = hashlib.sha256(f"{_VERSION}\n{principal}\n{sid}".encode("utf-8", "surrogatepass"))
    return f"{_prefix(principal)}.{h.hexdigest()[:32]}"


def principal_session(principal_digest: str | None) -> str:
    """The principal's own session: where state that a new session id must not shed lives."""
    return session_key(principal_digest, None)


def _prefix(principal: str) -> str:
    if principal == ANONYMOUS_DIGEST:
        return ANONYMOUS_DIGEST
    if _HEX.fullmatch(principal):
        return principal[:12]
    # Not a hex digest (a test name, another identity scheme): a digest of it, never raw text.
    return "p" + hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()[:11]
