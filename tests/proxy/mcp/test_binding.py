"""Session binding: an Mcp-Session-Id belongs to the principal that created it."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.mcp.binding import HIJACK_RULE, SessionBinding, binding_key, binding_store
from proxy.state import MemoryStore, SqliteStore

SERVER = "https://crm.example.com:443/mcp"
ALICE = "a1" * 32
MALLORY = "b2" * 32


def test_the_creator_may_use_its_session(store: Any) -> None:
    binding = SessionBinding(store)
    assert binding.bind(SERVER, "sid-1", ALICE) is None
    assert binding.check(SERVER, "sid-1", ALICE) is None
    assert binding.check(SERVER, " sid-1 ", ALICE) is None


def test_another_principal_presenting_it_is_refused(store: Any) -> None:
    binding = SessionBinding(store)
    binding.bind(SERVER, "sid-1", ALICE)
    hold = binding.check(SERVER, "sid-1", MALLORY)
    assert hold is not None and hold.rule_id == HIJACK_RULE
    assert MALLORY not in hold.reason and ALICE not in hold.reason   # no principal leaks
    assert binding.check(SERVER, "sid-1", None) is not None           # anonymous is another


def test_anonymous_sessions_bind_to_anonymous(store: Any) -> None:
    binding = SessionBinding(store)
    binding.bind(SERVER, "sid-2", None)
    assert binding.check(SERVER, "sid-2", None) is None
    assert binding.check(SERVER, "sid-2", ALICE) is not None


def test_ids_are_per_server(store: Any) -> None:
    binding = SessionBinding(store)
    binding.bind(SERVER, "sid-1", ALICE)
    assert binding.check("stdio:other", "sid-1", MALLORY) is None


def test_unknown_ids_are_bound_on_first_use_unless_strict(store: Any) -> None:
    binding = SessionBinding(store)
    assert binding.check(SERVER, "never-seen", ALICE) is None
    assert binding.check(SERVER, "never-seen", MALLORY) is not None
    assert binding.check(SERVER, "other", ALICE, bind_unknown=False).rule_id == HIJACK_RULE


def test_a_reissued_id_is_not_rebound(store: Any) -> None:
    binding = SessionBinding(store)
    binding.bind(SERVER, "sid-1", ALICE)
    assert binding.bind(SERVER, "sid-1", MALLORY) is not None
    assert binding.check(SERVER, "sid-1", ALICE) is None


def test_raw_ids_are_never_stored(tmp_path: Any) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(path)
    SessionBinding(store).bind(SERVER, "SECRET-SESSION-ID-123", ALICE)
    store.close()
    assert b"SECRET-SESSION-ID-123" not in path.read_bytes()
    assert binding_key(SERVER, "x").startswith("mcpsid:")


def test_bindings_persist_and_purge(tmp_path: Any) -> None:
    path = tmp_path / "s.sqlite"
    s1 = SqliteStore(path)
    SessionBinding(s1, clock=lambda: 10.0).bind(SERVER, "sid", ALICE)
    s1.close()
    s2 = SqliteStore(path)
    try:
        assert SessionBinding(s2).check(SERVER, "sid", MALLORY) is not None
        assert SessionBinding(s2).purge(20.0) == 1
        assert binding_store(s2).binding_get(binding_key(SERVER, "sid")) is None
    finally:
        s2.close()


def test_bad_ids_are_refused() -> None:
    binding = SessionBinding(MemoryStore())
    with pytest.raises(ValueError):
        binding.check(SERVER, "", ALICE)
    with pytest.raises(ValueError):
        binding.check(SERVER, "x" * 5000, ALICE)
