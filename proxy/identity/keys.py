"""Ed25519 keys for delegation tokens: generation, PEM loading, key ids.

Root keys live in PEM files: the private key (PKCS#8, unencrypted, mode 0600) with
whoever mints tokens, the public key (SubjectPublicKeyInfo) in the policy. A token names
its root by *key id*: the first 8 bytes of SHA-256 over the raw 32-byte public key, so
the name a policy gives a root is only a label and can differ between policies.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ID_BYTES = 8


def b64e(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def keygen() -> tuple[bytes, bytes]:
    """A fresh root key pair as ``(private_pem, public_pem)``."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, public_pem(private.public_key())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def key_id(key: Ed25519PublicKey | bytes) -> bytes:
    """The 8-byte id under which tokens name a root key."""
    raw = key if isinstance(key, bytes) else key.public_bytes_raw()
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES]


def key_id_text(key: Ed25519PublicKey | bytes) -> str:
    """``key_id`` in base64url, as ``inspect`` and error messages print it."""
    kid = key if isinstance(key, bytes) and len(key) == KEY_ID_BYTES else key_id(key)
    return b64e(kid)


def _pem(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def load_private_key(data: bytes | str | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8, unencrypted). Raises ``ValueError``."""
    if isinstance(data, Ed25519PrivateKey):
        return data
    try:
        key = serialization.load_pem_private_key(_pem(data), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(data: bytes | str | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM. A private key is refused (policies and verifiers
    must only ever hold public keys). Raises ``ValueError``."""
    if isinstance(data, Ed25519PublicKey):
        return data
    pem = _pem(data)
    if b"PRIVATE KEY" in pem:
        raise ValueError("this is a private key; give the public key "
                         "(`fiveplane token keygen` writes it next to the private one)")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key
