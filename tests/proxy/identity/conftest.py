"""Shared fixtures for the identity plane tests: one root key pair, a verifier."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.identity import Verifier, keygen, load_private_key, load_public_key

T0 = 1_800_000_000


@pytest.fixture(scope="session")
def root_pem() -> tuple[bytes, bytes]:
    return keygen()


@pytest.fixture(scope="session")
def root_key(root_pem: tuple[bytes, bytes]) -> Ed25519PrivateKey:
    return load_private_key(root_pem[0])


@pytest.fixture(scope="session")
def root_pub(root_pem: tuple[bytes, bytes]) -> Ed25519PublicKey:
    return load_public_key(root_pem[1])


@pytest.fixture
def verifier(root_pub: Ed25519PublicKey) -> Verifier:
    return Verifier({"corp": root_pub})
