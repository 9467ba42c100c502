"""Fixtures for the audit tests (helpers live in ``audit_kit``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if str(Path(__file__).parent) not in sys.path:  # make `audit_kit` importable in any import mode
    sys.path.insert(0, str(Path(__file__).parent))

from audit_kit import Chain, write_log


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    directory = tmp_path_factory.mktemp("chain")
    log = write_log(directory, "tamper:1", 35, every=10)
    key = serialization.load_pem_private_key(log.keys.key_path.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return Chain(directory, log.path, log.path.read_bytes().splitlines(keepends=True),
                 log.checkpoint_path.read_bytes().splitlines(keepends=True), key)


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Another instance's chain (another key) — the source of foreign records."""
    directory = tmp_path_factory.mktemp("other")
    log = write_log(directory, "other:2", 25, every=10)
    return Chain(directory, log.path, log.path.read_bytes().splitlines(keepends=True),
                 log.checkpoint_path.read_bytes().splitlines(keepends=True),
                 Ed25519PrivateKey.generate())


@pytest.fixture
def tampered(tmp_path: Path, chain: Chain) -> Callable[..., Path]:
    def make(lines: list[bytes] | None = None, **kw: object) -> Path:
        return chain.write(tmp_path / "t", lines, **kw)  # type: ignore[arg-type]

    return make
