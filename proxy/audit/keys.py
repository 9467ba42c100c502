"""The instance's audit keys: an Ed25519 signing key and a 32-byte audit secret.

Why two keys: the signing key only proves who wrote a checkpoint, and its public half is
handed to auditors; the secret never leaves the instance's key directory and derives (HKDF)
two independent keys, one for the HMACs of argument values (share it to correlate values
across logs without being able to read them) and one for the AES-GCM envelope that keeps
argument values recoverable for re-adjudication (``audit explain``).

Files, created on first use next to ``key_path`` (default ``<audit dir>/keys/<name>.key``):

- ``<name>.key``     Ed25519 private key, PKCS#8 PEM, mode 0600
- ``<name>.pub``     Ed25519 public key, SubjectPublicKeyInfo PEM (where ``verify`` looks)
- ``<name>.secret``  32 random bytes, hex, mode 0600

Creation is race-free between processes: each file is written to a temporary name and
hard-linked into place, so the first writer wins and everyone loads the same key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AuditError

SECRET_BYTES = 32
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(instance: str) -> str:
    """A file-name-safe, collision-free form of an instance id."""
    safe = _UNSAFE.sub("_", instance)[:64] or "instance"
    if safe != instance:
        safe += "-" + hashlib.sha256(instance.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


def key_id(public: Ed25519PublicKey | bytes) -> str:
    """The fingerprint carried by headers and checkpoints: ``ed25519:<sha256(raw)[:32]>``."""
    raw = public if isinstance(public, bytes) else raw_public(public)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"fiveplane-audit-v1 " + purpose.encode()).derive(secret)


@dataclass(frozen=True)
class InstanceKeys:
    instance: str
    signing: Ed25519PrivateKey
    secret: bytes
    key_path: Path
    _cache: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.signing.public_key()

    @property
    def public_raw(self) -> bytes:
        if "pub" not in self._cache:
            self._cache["pub"] = raw_public(self.public)
        return self._cache["pub"]

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)

    @property
    def public_path(self) -> Path:
        return self.key_path.with_suffix(".pub")

    @property
    def secret_path(self) -> Path:
        return self.key_path.with_suffix(".secret")

    @property
    def hmac_key(self) -> bytes:
        if "hmac" not in self._cache:
            self._cache["hmac"] = derive(self.secret, "argument-hmac")
        return self._cache["hmac"]

    @property
    def seal_key(self) -> bytes:
        if "seal" not in self._cache:
            self._cache["seal"] = derive(self.secret, "argument-seal")
        return self._cache["seal"]

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message)


def _publish(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` unless it exists (first writer wins, never a torn file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create(key_path: str | Path, instance: str) -> InstanceKeys:
    """Load the instance's keys, generating any that are missing."""
    key_path = Path(key_path)
    try:
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not key_path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            _publish(key_path, pem, 0o600)
        signing = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(signing, Ed25519PrivateKey):
            raise AuditError(f"{key_path} is not an Ed25519 private key")
        secret_path = key_path.with_suffix(".secret")
        if not secret_path.exists():
            _publish(secret_path, os.urandom(SECRET_BYTES).hex().encode() + b"\n", 0o600)
        secret = load_secret(secret_path)
        public_path = key_path.with_suffix(".pub")
        pem_pub = _public_pem(signing.public_key())
        if not public_path.exists():
            _publish(public_path, pem_pub, 0o644)
        elif public_path.read_bytes() != pem_pub:
            raise AuditError(f"{public_path} does not match the private key {key_path}")
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot load or create audit keys at {key_path}: {e}") from e
    return InstanceKeys(instance, signing, secret, key_path)


def load_secret(path: str | Path) -> bytes:
    try:
        text = Path(path).read_text("ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot read audit secret {path}: {e}") from e
    if len(secret) != SECRET_BYTES:
        raise AuditError(f"audit secret {path} must hold {SECRET_BYTES} bytes")
    return secret


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file, PEM bytes, or raw/base64 32 bytes."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise AuditError("not an Ed25519 public key")
        return key
    if len(data) != 32:
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except binascii.Error as e:
            raise AuditError(f"not an Ed25519 public key: {e}") from e
    if len(data) != 32:
        raise AuditError("not an Ed25519 public key (expected 32 raw bytes)")
    return Ed25519PublicKey.from_public_bytes(data)


def verify_signature(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    with contextlib.suppress(InvalidSignature):
        public.verify(signature, message)
        return True
    return False
