"""Delegation token format v1: the envelope, the block payloads and the signing input.

A token is a chain of signed blocks plus a proof (see ``FORMAT.md`` for the byte-level
description and a worked example)::

    text      = "fp1." base64url-without-padding(envelope)
    envelope  = version:u8 (=1) | root_key_id:8 | n_blocks:u8 (1..16)
                | n_blocks * ( payload_len:u16be | payload | signature:64 )
                | proof_tag:u8 | proof          (tag 0: 32-byte Ed25519 secret seed,
                                                 tag 1: 64-byte seal signature)
    payload   = canonical JSON of {capabilities, next_key, not_after, not_before,
                                   principal: {id, kind}}
    signed    = "fiveplane/token/block\\0" | version:u8 | root_key_id:8 | index:u32be
                | prev_sig_len:u8 | prev_sig | payload_len:u32be | payload

Nothing in this module checks a signature; ``verify.py`` does. Decoding is strict: one
byte string has exactly one meaning (canonical base64url, canonical JSON, no trailing
bytes, no duplicate keys, no unknown fields).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import IdentityError
from .keys import b64e

VERSION = 1
PREFIX = f"fp{VERSION}."
DOMAIN_BLOCK = b"fiveplane/token/block\x00"
DOMAIN_SEAL = b"fiveplane/token/seal\x00"
SIGNATURE_BYTES = 64
KEY_BYTES = 32
KEY_ID_BYTES = 8
MAX_BLOCKS = 16
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TOKEN_BYTES = 64 * 1024
MAX_TOKEN_CHARS = len(PREFIX) + (MAX_TOKEN_BYTES * 4 + 2) // 3
PROOF_SECRET = 0
PROOF_SEAL = 1
PROOF_BYTES = {PROOF_SECRET: KEY_BYTES, PROOF_SEAL: SIGNATURE_BYTES}

KINDS = ("human", "agent", "tool")
PRINCIPAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}")
MAX_TIME = 2**53 - 1   # unix seconds; JSON-safe integer range

_TEXT = re.compile(r"[A-Za-z0-9_\-]+")
_VERSIONED = re.compile(r"fp([0-9]{1,4})\.")
_FIELDS = frozenset({"capabilities", "next_key", "not_after", "not_before", "principal"})


def _malformed(message: str, block: int | None = None) -> IdentityError:
    return IdentityError("malformed", message, block)


# --- canonical JSON ---------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of a JSON value: sorted keys, no whitespace, UTF-8, no
    escapes beyond what JSON requires, no NaN/Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key `{key}`")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def parse_canonical_json(data: bytes) -> Any:
    """Parse ``data`` and require that it is the canonical encoding of what it says.
    Raises ``ValueError``."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
        again = canonical_json(value)
    except (UnicodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if again != data:
        raise ValueError("JSON is not in canonical form")
    return value


# --- block payload ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockBody:
    """What one block says (its payload, decoded)."""

    principal_id: str
    kind: str
    capabilities: tuple[Mapping[str, Any], ...]
    not_before: int
    not_after: int
    next_key: bytes          # raw Ed25519 public key, 32 bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "capabilities": [_plain(c) for c in self.capabilities],
            "next_key": b64e(self.next_key),
            "not_after": self.not_after,
            "not_before": self.not_before,
            "principal": {"id": self.principal_id, "kind": self.kind},
        }

    def to_payload(self) -> bytes:
        problem = check_body(self)
        if problem:
            raise ValueError(problem)
        payload = canonical_json(self.to_json())
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"block payload of {len(payload)} bytes exceeds "
                             f"{MAX_PAYLOAD_BYTES} bytes")
        return payload

    @classmethod
    def from_payload(cls, payload: bytes, index: int) -> BlockBody:
        """Decode a payload. Raises ``IdentityError('malformed')`` naming the block.
        The capabilities are checked for shape here and compiled by the verifier."""
        try:
            doc = parse_canonical_json(payload)
        except ValueError as e:
            raise _malformed(f"block {index}: payload {e}", index) from None
        if not isinstance(doc, dict):
            raise _malformed(f"block {index}: payload is not an object", index)
        if doc.keys() != _FIELDS:
            missing = sorted(_FIELDS - doc.keys())
            extra = sorted(doc.keys() - _FIELDS)
            what = "; ".join(filter(None, [
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(extra)}" if extra else "",
            ]))
            raise _malformed(f"block {index}: payload fields: {what}", index)
        principal = doc["principal"]
        if not isinstance(principal, dict) or principal.keys() != {"id", "kind"}:
            raise _malformed(f"block {index}: principal must be {{id, kind}}", index)
        next_key = _b64d(doc["next_key"])
        caps = doc["capabilities"]
        if not isinstance(caps, list):
            raise _malformed(f"block {index}: capabilities must be a list", index)
        body = cls(
            principal_id=principal["id"], kind=principal["kind"],
            capabilities=tuple(caps), not_before=doc["not_before"],
            not_after=doc["not_after"], next_key=next_key if next_key is not None else b"",
        )
        problem = check_body(body)
        if problem:
            raise _malformed(f"block {index}: {problem}", index)
        return body


def _plain(value: Any) -> Any:
    """Mappings/sequences from YAML loaders → plain dict/list (for canonical JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIME


def check_body(body: BlockBody) -> str | None:
    """What is wrong with a block body, or ``None``."""
    if not isinstance(body.principal_id, str) or not PRINCIPAL_ID.fullmatch(body.principal_id):
        return (f"principal id {body.principal_id!r} must be 1-128 characters of "
                "A-Z a-z 0-9 . _ : @ + - (starting with a letter or digit)")
    if body.kind not in KINDS:
        return f"principal kind {body.kind!r} must be one of {', '.join(KINDS)}"
    if not _is_time(body.not_before) or not _is_time(body.not_after):
        return "not_before and not_after must be unix seconds (integers)"
    if body.not_after <= body.not_before:
        return "not_after must be later than not_before"
    if not isinstance(body.next_key, bytes) or len(body.next_key) != KEY_BYTES:
        return "next_key must be a 32-byte Ed25519 public key in base64url"
    return None


def _b64d(value: Any) -> bytes | None:
    if not isinstance(value, str) or not _TEXT.fullmatch(value) or len(value) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64e(raw) == value else None


# --- envelope ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedBlock:
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed (not verified) token. ``str(token)`` is its compact text."""

    root_key_id: bytes
    blocks: tuple[SignedBlock, ...]
    proof_tag: int
    proof: bytes
    version: int = VERSION

    @property
    def sealed(self) -> bool:
        return self.proof_tag == PROOF_SEAL

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def bodies(self) -> list[BlockBody]:
        """Decode every payload (no signature checks). Raises ``IdentityError``."""
        return [BlockBody.from_payload(b.payload, i) for i, b in enumerate(self.blocks)]

    def to_bytes(self) -> bytes:
        out = bytearray([self.version])
        out += self.root_key_id
        out.append(len(self.blocks))
        for block in self.blocks:
            out += struct.pack(">H", len(block.payload))
            out += block.payload
            out += block.signature
        out.append(self.proof_tag)
        out += self.proof
        return bytes(out)

    def to_text(self) -> str:
        return PREFIX + b64e(self.to_bytes())

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:   # never print the proof: it is a secret
        return (f"Token(depth={self.depth}, root={b64e(self.root_key_id)}, "
                f"sealed={self.sealed})")

    @classmethod
    def from_text(cls, text: str) -> Token:
        """Parse compact text. Raises ``IdentityError`` (``malformed`` or
        ``unsupported_version``)."""
        if not isinstance(text, str):
            raise _malformed("a token is text")
        if len(text) > MAX_TOKEN_CHARS:
            raise _malformed(f"token of {len(text)} characters is longer than the "
                             f"{MAX_TOKEN_CHARS} allowed")
        if not text.startswith(PREFIX):
            m = _VERSIONED.match(text)
            if m:
                raise IdentityError("unsupported_version",
                                    f"token format version {int(m.group(1))} is not supported "
                                    f"(this proxy reads version {VERSION})")
            raise _malformed(f"not a fiveplane token (it must start with `{PREFIX}`)")
        raw = _b64d(text[len(PREFIX):])
        if raw is None:
            raise _malformed("token text is not canonical base64url (A-Z a-z 0-9 - _, "
                             "no padding)")
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Token:
        if len(raw) > MAX_TOKEN_BYTES:
            raise _malformed(f"token of {len(raw)} bytes exceeds {MAX_TOKEN_BYTES} bytes")
        if not raw:
            raise _malformed("empty token")
        if raw[0] != VERSION:
            raise IdentityError("unsupported_version",
                                f"token format version {raw[0]} is not supported "
                                f"(this proxy reads version {VERSION})")
        header = 1 + KEY_ID_BYTES + 1
        if len(raw) < header:
            raise _malformed("token is truncated (no header)")
        kid = raw[1:1 + KEY_ID_BYTES]
        count = raw[1 + KEY_ID_BYTES]
        if not 1 <= count <= MAX_BLOCKS:
            raise _malformed(f"token has {count} blocks (1 to {MAX_BLOCKS} allowed)")
        pos = header
        blocks = []
        for i in range(count):
            if pos + 2 > len(raw):
                raise _malformed(f"block {i}: truncated", i)
            (size,) = struct.unpack_from(">H", raw, pos)
            pos += 2
            if size == 0 or size > MAX_PAYLOAD_BYTES:
                raise _malformed(f"block {i}: payload length {size} out of range", i)
            end = pos + size + SIGNATURE_BYTES
            if end > len(raw):
                raise _malformed(f"block {i}: truncated", i)
            blocks.append(SignedBlock(raw[pos:pos + size], raw[pos + size:end]))
            pos = end
        if pos >= len(raw):
            raise _malformed("token has no proof (truncated)")
        tag = raw[pos]
        want = PROOF_BYTES.get(tag)
        if want is None:
            raise _malformed(f"unknown proof type {tag}")
        proof = raw[pos + 1:]
        if len(proof) != want:
            raise _malformed(f"proof is {len(proof)} bytes, expected {want} "
                             "(truncated or trailing bytes)")
        return cls(kid, tuple(blocks), tag, proof)


def signing_input(root_key_id: bytes, index: int, previous_signature: bytes,
                  payload: bytes, version: int = VERSION) -> bytes:
    """The exact bytes signed for block ``index`` (``previous_signature`` is empty for
    block 0). Domain-separated and length-prefixed: no two different
    (version, root, index, previous, payload) tuples give the same bytes."""
    return b"".join((
        DOMAIN_BLOCK,
        bytes([version]),
        root_key_id,
        struct.pack(">I", index),
        bytes([len(previous_signature)]),
        previous_signature,
        struct.pack(">I", len(payload)),
        payload,
    ))


def seal_input(root_key_id: bytes, last_signature: bytes, version: int = VERSION) -> bytes:
    """The bytes a seal signs: it binds the proof to the last block's signature."""
    return b"".join((DOMAIN_SEAL, bytes([version]), root_key_id,
                     bytes([len(last_signature)]), last_signature))


def time_text(value: float) -> str:
    """Unix seconds → ``2026-01-01T00:00:00Z`` (for messages)."""
    if not math.isfinite(value):
        return str(value)
    try:
        moment = datetime.datetime.fromtimestamp(int(value), datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{int(value)}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_principal(body: BlockBody) -> str:
    return f"{body.kind} `{body.principal_id}`"


def normalize_capabilities(capabilities: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any],
                                                                              ...]:
    return tuple(_plain(c) for c in capabilities)
