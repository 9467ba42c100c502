"""Offline token tools: mint (root key holder), attenuate (any token holder), seal,
inspect. Nothing here touches the network or the proxy.

``mint`` and ``attenuate`` raise ``ValueError`` for bad input (capabilities that do not
compile, a bad principal id, a non-positive ttl) and ``IdentityError`` for a token that
cannot be extended (malformed, sealed, proof not matching).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..principal import Link
from .capabilities import compile_capabilities, describe, widened
from .errors import IdentityError
from .keys import b64e, key_id, load_private_key
from .token import (
    PROOF_SEAL,
    PROOF_SECRET,
    BlockBody,
    SignedBlock,
    Token,
    normalize_capabilities,
    seal_input,
    signing_input,
    time_text,
)
from .verify import Verifier, token_digest

PrincipalSpec = Link | tuple[str, str]
Capabilities = Sequence[Mapping[str, Any]]


def _principal(principal: PrincipalSpec) -> tuple[str, str]:
    if isinstance(principal, Link):
        return principal.id, str(principal.kind.value)
    ident, kind = principal
    return str(ident), str(kind)


def _window(ttl: float, now: float | None, not_before: float | None) -> tuple[int, int]:
    if now is None:
        now = time.time()
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl < 1:
        raise ValueError(f"ttl must be at least 1 second, got {ttl!r}")
    start = int(now if not_before is None else not_before)
    return start, int(now) + int(ttl)


def _body(principal: PrincipalSpec, capabilities: Capabilities, ttl: float, now: float | None,
          not_before: float | None, next_key: Ed25519PrivateKey) -> BlockBody:
    ident, kind = _principal(principal)
    caps = normalize_capabilities(capabilities)
    compiled, issues = compile_capabilities(list(caps))
    if compiled is None:
        lines = []
        for _, message, path in issues:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
            lines.append(f"capabilities{where}: {message}")
        raise ValueError("; ".join(lines))
    start, stop = _window(ttl, now, not_before)
    return BlockBody(ident, kind, caps, start, stop, next_key.public_key().public_bytes_raw())


def mint(root_private: Ed25519PrivateKey | bytes | str, principal: PrincipalSpec,
         capabilities: Capabilities, ttl: float, now: float | None = None, *,
         not_before: float | None = None, seal: bool = False,
         next_key: Ed25519PrivateKey | None = None) -> Token:
    """A one-block token signed by the root key, with a fresh proof key (``next_key``
    only for reproducible examples and tests: a proof key must never be reused)."""
    root = load_private_key(root_private)
    kid = key_id(root.public_key())
    proof = next_key or Ed25519PrivateKey.generate()
    payload = _body(principal, capabilities, ttl, now, not_before, proof).to_payload()
    signature = root.sign(signing_input(kid, 0, b"", payload))
    token = Token(kid, (SignedBlock(payload, signature),), PROOF_SECRET,
                  proof.private_bytes_raw())
    return seal_token(token) if seal else token


def _holder_key(token: Token) -> Ed25519PrivateKey:
    if token.proof_tag == PROOF_SEAL:
        raise IdentityError("bad_proof", "the token is sealed: it cannot be attenuated")
    key = Ed25519PrivateKey.from_private_bytes(token.proof)
    last = BlockBody.from_payload(token.blocks[-1].payload, token.depth - 1)
    if key.public_key().public_bytes_raw() != last.next_key:
        raise IdentityError("bad_proof", f"the proof does not match the next_key of block "
                            f"{token.depth - 1}", token.depth - 1)
    return key


def attenuate(token: Token | str, principal: PrincipalSpec,
              capabilities: Capabilities | None = None, ttl: float = 3600,
              now: float | None = None, *, not_before: float | None = None,
              seal: bool = False, next_key: Ed25519PrivateKey | None = None) -> Token:
    """Append a block signed with the token's proof; the new token gets a fresh proof.

    ``capabilities=None`` copies the last block's capabilities (a hop that only names a
    new principal or shortens the lifetime). Wider capabilities or a longer ttl are
    encoded as given but never add authority: the chain admits the intersection."""
    if isinstance(token, str):
        token = Token.from_text(token)
    if token.depth >= 16:
        raise ValueError("the token already has the maximum of 16 blocks")
    signer = _holder_key(token)
    if capabilities is None:
        last = BlockBody.from_payload(token.blocks[-1].payload, token.depth - 1)
        capabilities = last.capabilities
    proof = next_key or Ed25519PrivateKey.generate()
    payload = _body(principal, capabilities, ttl, now, not_before, proof).to_payload()
    index = token.depth
    signature = signer.sign(signing_input(token.root_key_id, index,
                                          token.blocks[-1].signature, payload))
    new = Token(token.root_key_id, (*token.blocks, SignedBlock(payload, signature)),
                PROOF_SECRET, proof.private_bytes_raw())
    return seal_token(new) if seal else new


def seal_token(token: Token | str) -> Token:
    """Replace the proof secret by a signature over the last block: the token still
    verifies but can no longer be attenuated (nor can its holder's key leak)."""
    if isinstance(token, str):
        token = Token.from_text(token)
    signer = _holder_key(token)
    sig = signer.sign(seal_input(token.root_key_id, token.blocks[-1].signature))
    return Token(token.root_key_id, token.blocks, PROOF_SEAL, sig)


def inspect(token: Token | str, trusted_roots: Mapping[str, Ed25519PublicKey],
            now: float | None = None) -> dict[str, Any]:
    """Everything a person needs to know about a token, as JSON-able data: the chain,
    each block's capabilities (and grants not provably within the previous block's),
    the effective validity window, and the verification result against
    ``trusted_roots`` (empty: structure only)."""
    if now is None:
        now = time.time()
    text = token if isinstance(token, str) else token.to_text()
    report: dict[str, Any] = {"digest": token_digest(text), "length": len(text)}
    try:
        parsed = Token.from_text(text)
    except IdentityError as e:
        report["verification"] = {"ok": False, **e.to_dict()}
        return report
    report.update(format=parsed.version, root_key_id=b64e(parsed.root_key_id),
                  depth=parsed.depth, sealed=parsed.sealed)
    blocks: list[dict[str, Any]] = []
    previous: Sequence[Mapping[str, Any]] | None = None
    start, stop = 0, None
    for i, signed in enumerate(parsed.blocks):
        try:
            body = BlockBody.from_payload(signed.payload, i)
        except IdentityError as e:
            blocks.append({"index": i, "error": e.message})
            previous = None
            continue
        start = max(start, body.not_before)
        stop = body.not_after if stop is None else min(stop, body.not_after)
        entry: dict[str, Any] = {
            "index": i,
            "principal": {"id": body.principal_id, "kind": body.kind},
            "not_before": body.not_before,
            "not_after": body.not_after,
            "valid": f"{time_text(body.not_before)} .. {time_text(body.not_after)}",
            "capabilities": [dict(c) for c in body.capabilities],
            "summary": [describe(c) if isinstance(c, Mapping) else repr(c)
                        for c in body.capabilities],
            "effective_until": stop,
        }
        if previous is not None and all(isinstance(c, Mapping) for c in body.capabilities):
            wide = widened(body.capabilities, previous)
            if wide:
                entry["not_within_parent"] = wide
        blocks.append(entry)
        previous = body.capabilities
    report["blocks"] = blocks
    if stop is not None:
        report["effective"] = {
            "not_before": start, "not_after": stop,
            "valid_now": start <= now < stop,
            "expires_in": int(stop - now),
            "until": time_text(stop),
        }
    if not trusted_roots:
        report["verification"] = {"ok": False, "code": "unknown_root",
                                  "message": "no trusted root given; signatures not checked"}
        return report
    result = Verifier(trusted_roots, cache_size=1).verify(text, now)
    if isinstance(result, IdentityError):
        report["verification"] = {"ok": False, **result.to_dict()}
    else:
        report["verification"] = {"ok": True, "root": result.root_name,
                                  "principal": str(result.principal)}
    return report
