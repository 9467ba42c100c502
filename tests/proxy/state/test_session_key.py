"""Session keys: principal chain + session id (explicit header, MCP session, or none)."""

from __future__ import annotations

import re

import pytest

from proxy.state import pick_session_id, principal_session, session_key

TOKEN_A = "3f9a0c1d2e4b" + "0" * 52          # token digests are SHA-256 hex
TOKEN_B = "77d0aa11bb22" + "1" * 52


def test_a_key_is_bounded_safe_text() -> None:
    key = session_key(TOKEN_A, "mcp-session-0f3c")
    assert re.fullmatch(r"3f9a0c1d2e4b\.[0-9a-f]{32}", key)
    assert re.fullmatch(r"anonymous\.[0-9a-f]{32}", session_key(None, "x"))
    huge = session_key(TOKEN_A, "x" * 100_000 + "\n\x00 ünïcode")
    assert len(huge) == len(key)
    assert re.fullmatch(r"p[0-9a-f]{11}\.[0-9a-f]{32}", session_key("not-a-digest", "x"))


def test_the_same_inputs_give_the_same_key() -> None:
    assert session_key(TOKEN_A, "s1") == session_key(TOKEN_A, "s1")
    assert session_key(TOKEN_A, " s1 ") == session_key(TOKEN_A, "s1")


def test_principal_and_session_id_both_matter() -> None:
    keys = {session_key(TOKEN_A, "s1"), session_key(TOKEN_A, "s2"),
            session_key(TOKEN_B, "s1"), session_key(None, "s1"),
            session_key(TOKEN_A, None), session_key(TOKEN_B, None), session_key(None, None)}
    assert len(keys) == 7


def test_one_principal_cannot_name_another_principals_session() -> None:
    # Whatever id B's agent sends, it lands in B's keyspace.
    victim = session_key(TOKEN_A, "s1")
    for forged in ("s1", victim, TOKEN_A, f"{TOKEN_A}\ns1"):
        assert session_key(TOKEN_B, forged) != victim
        assert session_key(None, forged) != victim


@pytest.mark.parametrize("sid", [None, "", "   "])
def test_no_session_id_means_the_principal_session(sid: str | None) -> None:
    assert session_key(TOKEN_A, sid) == principal_session(TOKEN_A)


@pytest.mark.parametrize("principal", [None, "", "anonymous"])
def test_no_token_means_anonymous(principal: str | None) -> None:
    assert session_key(principal, "s") == session_key("anonymous", "s")
    assert principal_session(principal).startswith("anonymous.")


@pytest.mark.parametrize(("explicit", "mcp", "expected"), [
    ("task-42", "mcp-abc", "task-42"),       # the explicit header wins: it spans channels
    (None, "mcp-abc", "mcp-abc"),
    ("", "mcp-abc", "mcp-abc"),
    ("  ", " mcp-abc ", "mcp-abc"),
    (None, None, None),
    ("", "", None),
])
def test_pick_session_id(explicit: str | None, mcp: str | None, expected: str | None) -> None:
    assert pick_session_id(explicit, mcp) == expected
