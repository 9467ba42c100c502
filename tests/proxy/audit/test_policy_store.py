"""The policy store: content-addressed, idempotent, and it notices edited entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import testing
from proxy.audit import PolicyStore
from proxy.errors import AuditError
from proxy.policy import policy_version

TEXT = "version: 1\nname: s\ndefaults: {effect: deny}\nrules: []\n# é ünïcode\n"


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "p")
    version = store.put(TEXT)
    assert version == policy_version(TEXT) == testing.policy(TEXT).version
    assert store.get(version) == TEXT
    assert store.put(TEXT) == version  # idempotent
    assert version in store and "sha256:" + "0" * 64 not in store
    assert store.versions() == [version]
    other = store.put(TEXT + "\n")
    assert sorted(store.versions()) == sorted([version, other])


def test_crlf_and_bytes_are_kept_exactly(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    text = TEXT.replace("\n", "\r\n")
    assert store.get(store.put(text)) == text


def test_edited_entry_is_reported_and_put_repairs_it(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    version = store.put(TEXT)
    path = next(tmp_path.glob("*.yaml"))
    path.write_text(TEXT.replace("deny", "allow"))
    with pytest.raises(AuditError, match="altered"):
        store.get(version)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(AuditError, match="altered"):
        store.get(version)
    store.put(TEXT)
    assert store.get(version) == TEXT


def test_missing_and_malformed_versions(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    with pytest.raises(AuditError, match="not in the store"):
        store.get("sha256:" + "a" * 64)
    for bad in ("md5:abc", "sha256:../../etc/passwd", "sha256:" + "A" * 64):
        with pytest.raises(AuditError, match="not a policy version"):
            store.get(bad)
    assert PolicyStore(tmp_path / "none").versions() == []
