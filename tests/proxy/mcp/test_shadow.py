"""Shadowing: one tool name offered by two servers in a session."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.action import Action, Kind, StopPoint
from proxy.mcp.shadow import SHADOW_RULE, ShadowBook, shadow_scope, shadow_store
from proxy.principal import ANONYMOUS
from proxy.state import MemoryStore, SqliteStore, principal_session

A = "https://mail-a.example.com:443/mcp"
B = "stdio:mail-b"
SCOPE = principal_session(None)


def book(store: Any) -> ShadowBook:
    return ShadowBook(store, clock=lambda: 100.0)


def test_the_second_server_offering_a_name_is_reported(store: Any) -> None:
    shadows = book(store)
    assert shadows.offer(SCOPE, A, ["send_email", "list_mail"]) == []
    found = shadows.offer(SCOPE, B, ["send_email", "add"])
    assert [(f.name, f.servers) for f in found] == [("send_email", tuple(sorted((A, B))))]
    assert found[0].to_dict() == {"name": "send_email", "servers": sorted([A, B])}
    assert shadows.servers(SCOPE, "send_email") == tuple(sorted((A, B)))
    assert shadows.servers(SCOPE, "add") == (B,)
    assert shadows.foreign_names(SCOPE, B) == {"send_email", "list_mail"}


def test_offers_are_per_scope(store: Any) -> None:
    shadows = book(store)
    shadows.offer("anonymous.aaaa", A, ["send_email"])
    assert shadows.offer("anonymous.bbbb", B, ["send_email"]) == []


def test_the_same_server_listing_again_is_not_shadowing(store: Any) -> None:
    shadows = book(store)
    shadows.offer(SCOPE, A, ["send_email"])
    assert shadows.offer(SCOPE, A, ["send_email"]) == []
    assert ShadowBook(store).offer(SCOPE, A, ["send_email", "x"]) == []   # another process


def test_hold_for_deny_mode(store: Any) -> None:
    shadows = book(store)
    shadows.offer(SCOPE, A, ["send_email"])
    assert shadows.hold(SCOPE, A, "send_email") is None
    shadows.offer(SCOPE, B, ["send_email"])
    hold = shadows.hold(SCOPE, A, "send_email")
    assert hold is not None and hold.rule_id == SHADOW_RULE
    assert A in hold.reason and B in hold.reason
    assert shadows.hold(SCOPE, "https://other:443/mcp", "send_email") is None


def test_purge_forgets_old_offers(store: Any) -> None:
    adapter = shadow_store(store)
    adapter.shadow_offer(SCOPE, A, ["x"], 10.0)
    adapter.shadow_offer(SCOPE, B, ["x"], 50.0)
    assert adapter.shadow_purge(20.0) == 1
    assert adapter.shadow_servers(SCOPE, "x") == (B,)


def test_scope_is_the_principal_session() -> None:
    action = Action(Kind.MCP, StopPoint.REQUEST_BODY, "https", "h", 443, principal=ANONYMOUS,
                    session="abc")
    assert shadow_scope(action) == principal_session(None)


def test_processes_sharing_a_file_see_each_others_offers(tmp_path: Any) -> None:
    a = SqliteStore(tmp_path / "s.sqlite", shared=True)
    b = SqliteStore(tmp_path / "s.sqlite", shared=True)
    try:
        book(a).offer(SCOPE, A, ["send_email"])
        found = book(b).offer(SCOPE, B, ["send_email"])
        assert [f.name for f in found] == ["send_email"]
    finally:
        a.close()
        b.close()


def test_arguments_are_checked() -> None:
    adapter = shadow_store(MemoryStore())
    with pytest.raises(ValueError):
        adapter.shadow_offer("", A, ["x"], 1.0)
    with pytest.raises(ValueError):
        adapter.shadow_offer(SCOPE, A, [""], 1.0)
    assert book(MemoryStore()).offer(SCOPE, A, ["", 3]) == []   # junk names are skipped
