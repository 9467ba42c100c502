"""Token format v1: text alphabet, proxy-URL safety, strict decoding, the signing input
byte by byte, and the worked example of FORMAT.md rebuilt bit for bit."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.identity import (
    IdentityError,
    Token,
    Verifier,
    attenuate,
    mint,
    proxy_authorization_token,
    seal_token,
)
from proxy.identity.keys import b64e, key_id
from proxy.identity.token import (
    DOMAIN_BLOCK,
    MAX_BLOCKS,
    BlockBody,
    SignedBlock,
    canonical_json,
    parse_canonical_json,
    signing_input,
)
from proxy.testing import mcp_call

T0 = 1_800_000_000
FORMAT_MD = Path(__file__).resolve().parents[3] / "proxy" / "identity" / "FORMAT.md"
REFUND = {"server": "crm", "tool": "refund", "args": {"amount": {"le": 500}}}


def test_text_uses_only_header_and_url_safe_characters(root_key: Any) -> None:
    token = mint(root_key, ("alice@example.com", "human"), [REFUND, {"host": "*.example.com"}],
                 3600, T0)
    for depth in range(1, 9):
        text = token.to_text()
        assert re.fullmatch(r"fp1\.[A-Za-z0-9_\-]+", text)
        assert Token.from_text(text) == token
        token = attenuate(token, (f"agent-{depth}", "agent"), None, 600, T0)


def test_token_is_the_password_of_a_proxy_url(root_key: Any) -> None:
    text = attenuate(mint(root_key, ("alice", "human"), [REFUND], 3600, T0),
                     ("planner", "agent"), None, 600, T0).to_text()
    url = f"http://agent:{text}@127.0.0.1:8080"
    assert urlsplit(url).password == text
    proxy = httpx.Proxy(url)
    assert proxy.raw_auth == (b"agent", text.encode())
    # What clients send for it, and what the proxy reads back.
    basic = base64.b64encode(b"agent:" + text.encode()).decode()
    assert proxy_authorization_token(f"Basic {basic}") == text
    assert proxy_authorization_token(f"Bearer {text}") == text


def test_round_trip_and_repr_hides_the_proof(root_key: Any) -> None:
    token = mint(root_key, ("alice", "human"), [REFUND], 3600, T0)
    assert Token.from_bytes(token.to_bytes()) == token
    assert str(token) == token.to_text()
    assert b64e(token.proof) not in repr(token)
    body = token.bodies()[0]
    assert body.principal_id == "alice"
    assert body.not_after - body.not_before == 3600
    assert body.capabilities == (REFUND,)


def test_signing_input_layout() -> None:
    kid, prev, payload = b"K" * 8, b"S" * 64, b'{"x":1}'
    data = signing_input(kid, 3, prev, payload)
    expected = (b"fiveplane/token/block\x00" + b"\x01" + kid + struct.pack(">I", 3)
                + b"\x40" + prev + struct.pack(">I", len(payload)) + payload)
    assert data == expected
    assert signing_input(kid, 0, b"", payload) == (
        DOMAIN_BLOCK + b"\x01" + kid + b"\x00\x00\x00\x00" + b"\x00" + b"\x00\x00\x00\x07"
        + payload)
    # Index, previous signature, root and version each change the bytes signed.
    variants = {signing_input(kid, 3, prev, payload), signing_input(kid, 4, prev, payload),
                signing_input(kid, 3, b"T" * 64, payload),
                signing_input(b"L" * 8, 3, prev, payload),
                signing_input(kid, 3, prev, payload, version=2)}
    assert len(variants) == 5


def test_worked_example_in_format_md_is_reproducible() -> None:
    root = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    k1 = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    k2 = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
    now = 1767225600
    t1 = mint(root, ("alice", "human"),
              [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 500}}}],
              3600, now, next_key=k1)
    t2 = attenuate(t1, ("planner-1", "agent"),
                   [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}}],
                   600, now, next_key=k2)
    doc = FORMAT_MD.read_text("utf-8")
    m = re.search(r"<!-- example-token -->\s*```\s*(fp1\.[A-Za-z0-9_\-]+)\s*```", doc)
    assert m, "FORMAT.md lost its example token"
    assert t2.to_text() == m.group(1)
    assert key_id(root.public_key()).hex() == "34750f98bd59fcfc"
    assert t2.blocks[0].signature.hex()[:16] in doc.replace("\n", "")
    chain = Verifier({"corp": root.public_key()}).verify(m.group(1), now + 1)
    assert not isinstance(chain, IdentityError)
    assert str(chain.principal) == "alice → planner-1"
    assert chain.admits(mcp_call("refund", amount=50)) is True
    assert chain.admits(mcp_call("refund", amount=300)) == (
        "outside the capabilities of block 1 (agent `planner-1`)")


@pytest.mark.parametrize("text, code", [
    ("", "malformed"),
    ("hello", "malformed"),
    ("Bearer fp1.AAAA", "malformed"),
    ("fp1.", "malformed"),
    ("fp1.AQ==", "malformed"),                 # padding is not canonical
    ("fp1.AQ+/", "malformed"),                 # not the url-safe alphabet
    ("fp1.A", "malformed"),                    # impossible length
    ("fp1.AR", "malformed"),                   # non-canonical trailing bits
    ("fp1.AQ", "malformed"),                   # header truncated
    ("fp2.AQ", "unsupported_version"),
    ("fp17.xyz", "unsupported_version"),
    ("fp1." + b64e(b"\x02" + bytes(20)), "unsupported_version"),
    ("fp1." + b64e(b"\x01" + bytes(8) + b"\x00"), "malformed"),            # 0 blocks
    ("fp1." + b64e(b"\x01" + bytes(8) + bytes([MAX_BLOCKS + 1])), "malformed"),
    ("fp1." + "A" * 100_000, "malformed"),     # too long
])
def test_malformed_text(text: str, code: str, verifier: Verifier) -> None:
    result = verifier.verify(text, T0)
    assert isinstance(result, IdentityError)
    assert result.code == code, result


def test_trailing_bytes_and_truncation_are_malformed(root_key: Any, verifier: Verifier) -> None:
    raw = mint(root_key, ("alice", "human"), [REFUND], 3600, T0).to_bytes()
    for bad in (raw + b"\x00", raw[:-1], raw[:-33], raw[:40]):
        result = verifier.verify("fp1." + b64e(bad), T0)
        assert isinstance(result, IdentityError) and result.code == "malformed", result


def _signed(root: Ed25519PrivateKey, payload: bytes) -> str:
    """A one-block token over an arbitrary payload, correctly signed by ``root``."""
    proof = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    kid = key_id(root.public_key())
    sig = root.sign(signing_input(kid, 0, b"", payload))
    return Token(kid, (SignedBlock(payload, sig),), 0, proof.private_bytes_raw()).to_text()


def _payload(**override: Any) -> dict[str, Any]:
    proof = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    doc: dict[str, Any] = {
        "capabilities": [REFUND], "next_key": b64e(proof.public_key().public_bytes_raw()),
        "not_after": T0 + 60, "not_before": T0, "principal": {"id": "alice", "kind": "human"},
    }
    doc.update(override)
    return doc


@pytest.mark.parametrize("payload, fragment", [
    (canonical_json(_payload()).replace(b'"capabilities"', b' "capabilities"'), "canonical"),
    (b'{"a":1,"a":2}', "duplicate"),
    (b"[1]", "not an object"),
    (b"\xff", "not JSON"),
    (canonical_json(_payload(extra=1)), "unknown extra"),
    (canonical_json({k: v for k, v in _payload().items() if k != "next_key"}), "missing next_key"),
    (canonical_json(_payload(principal={"id": "a b", "kind": "human"})), "principal id"),
    (canonical_json(_payload(principal={"id": "a", "kind": "robot"})), "kind"),
    (canonical_json(_payload(not_after=T0)), "later than"),
    (canonical_json(_payload(not_after=1.5e9)), "integers"),
    (canonical_json(_payload(not_before=True)), "integers"),
    (canonical_json(_payload(next_key="AAAA")), "next_key"),
    (canonical_json(_payload(capabilities={"server": "crm"})), "list"),
    (canonical_json(_payload(capabilities=[{"sever": "crm"}])), "unknown key `sever`"),
    (canonical_json(_payload(capabilities=[{"tool": "x", "prompt": "y"}])), "only one of"),
    (canonical_json(_payload(capabilities=[{"server": "crm",
                                            "args": {"n": {"regex": "("}}}])), "argument `n`"),
    (canonical_json(_payload(capabilities=[{"server": "crm", "args": {"n": {"le": "5"}}}])),
     "finite number"),
    (canonical_json(_payload(capabilities=[{"host": "exa mple.com"}])), "bad host"),
    (canonical_json(_payload(capabilities=[{}])), "non-empty"),
])
def test_signed_but_malformed_payloads(payload: bytes, fragment: str, root_key: Any,
                                       verifier: Verifier) -> None:
    result = verifier.verify(_signed(root_key, payload), T0 + 1)
    assert isinstance(result, IdentityError), result
    assert result.code == "malformed"
    assert result.block == 0
    assert fragment in result.message, result.message
    assert result.message.startswith("block 0")


def test_canonical_json_is_strict() -> None:
    assert parse_canonical_json(b'{"a":1,"b":[true,null,"\xc3\xa9"]}') == {
        "a": 1, "b": [True, None, "é"]}
    for bad in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":NaN}', b'{"a":1e400}', b'{"a":"\\u00e9"}'):
        with pytest.raises(ValueError):
            parse_canonical_json(bad)


def test_block_body_refuses_bad_values_when_minting(root_key: Any) -> None:
    with pytest.raises(ValueError, match="principal id"):
        mint(root_key, ("", "human"), [REFUND], 60, T0)
    with pytest.raises(ValueError, match="kind"):
        mint(root_key, ("alice", "anonymous"), [REFUND], 60, T0)
    with pytest.raises(ValueError, match="ttl"):
        mint(root_key, ("alice", "human"), [REFUND], 0, T0)
    with pytest.raises(ValueError, match=r"capabilities\[0\]\.args\.amount\.le"):
        mint(root_key, ("alice", "human"), [{"tool": "x", "args": {"amount": {"le": "5"}}}],
             60, T0)
    with pytest.raises(ValueError, match="unknown key"):
        mint(root_key, ("alice", "human"), [{"tol": "x"}], 60, T0)


def test_sealed_token_verifies_and_cannot_be_attenuated(root_key: Any,
                                                        verifier: Verifier) -> None:
    token = attenuate(mint(root_key, ("alice", "human"), [REFUND], 3600, T0),
                      ("planner", "agent"), None, 600, T0)
    sealed = seal_token(token)
    assert sealed.sealed and len(sealed.proof) == 64
    chain = verifier.verify(sealed.to_text(), T0 + 1)
    assert not isinstance(chain, IdentityError) and chain.sealed
    with pytest.raises(IdentityError, match="sealed"):
        attenuate(sealed, ("sub", "agent"), None, 60, T0)
    assert BlockBody.from_payload(sealed.blocks[-1].payload, 1).principal_id == "planner"


def test_attenuate_without_capabilities_copies_the_last_block(root_key: Any,
                                                              verifier: Verifier) -> None:
    token = attenuate(mint(root_key, ("alice", "human"), [REFUND], 3600, T0),
                      ("planner", "agent"), None, 600, T0)
    bodies = token.bodies()
    assert bodies[1].capabilities == bodies[0].capabilities
    chain = verifier.verify(token.to_text(), T0 + 1)
    assert not isinstance(chain, IdentityError)
    assert chain.not_after == T0 + 600
