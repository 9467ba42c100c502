"""Forgery and misuse corpus: every attack is refused with a stable code and a message
that names the block; the verification cache never weakens any of it."""

from __future__ import annotations

import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.identity import IdentityError, Token, Verifier, attenuate, inspect, mint, seal_token
from proxy.identity import verify as verify_module
from proxy.identity.keys import b64e, key_id
from proxy.identity.token import PREFIX, SignedBlock, signing_input
from proxy.testing import mcp_call

T0 = 1_800_000_000
ALICE = [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 500}}},
         {"server": "crm", "tool": "get_*"}]
PLANNER = [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}},
           {"server": "crm", "tool": "get_customer"}]
SUB = [{"server": "crm", "tool": "refund", "args": {"amount": {"le": 100}}}]


def chain3(root_key: Any) -> Token:
    """alice (human, 1 h) → planner-1 (agent, 30 min) → sub-1 (agent, 10 min)."""
    t = mint(root_key, ("alice", "human"), ALICE, 3600, T0)
    t = attenuate(t, ("planner-1", "agent"), PLANNER, 1800, T0)
    return attenuate(t, ("sub-1", "agent"), SUB, 600, T0)


def refused(verifier: Verifier, text: str, code: str, block: int | None = None,
            now: float = T0 + 1) -> IdentityError:
    result = verifier.verify(text, now)
    assert isinstance(result, IdentityError), f"accepted: {result}"
    assert result.code == code, result
    if block is not None:
        assert result.block == block, result
        assert f"block {block}" in result.message, result.message
    return result


def with_blocks(token: Token, blocks: list[SignedBlock], proof: bytes | None = None) -> str:
    return Token(token.root_key_id, tuple(blocks), token.proof_tag,
                 token.proof if proof is None else proof).to_text()


def test_the_genuine_chain_verifies(root_key: Any, verifier: Verifier) -> None:
    chain = verifier.verify(chain3(root_key).to_text(), T0 + 1)
    assert not isinstance(chain, IdentityError)
    assert str(chain.principal) == "alice → planner-1 → sub-1"
    assert chain.depth == 3 and chain.not_after == T0 + 600 and chain.root_name == "corp"


# --- flipped bits ------------------------------------------------------------------------


def _regions(token: Token) -> list[tuple[int, int, str, int | None]]:
    """(start, end, expected code, block) of every byte range of the envelope."""
    out = [(0, 1, "unsupported_version", None), (1, 9, "unknown_root", 0),
           (9, 10, "malformed", None)]
    pos = 10
    for i, block in enumerate(token.blocks):
        out.append((pos, pos + 2, "malformed", None))                      # length
        pos += 2
        out.append((pos, pos + len(block.payload), "bad_signature", i))    # payload
        pos += len(block.payload)
        out.append((pos, pos + 64, "bad_signature", i))                    # signature
        pos += 64
    out.append((pos, pos + 1, "malformed", None))                          # proof tag
    out.append((pos + 1, pos + 1 + len(token.proof), "bad_proof", len(token.blocks) - 1))
    return out


def _flip(raw: bytes, position: int, bit: int) -> str:
    data = bytearray(raw)
    data[position] ^= 1 << bit
    return PREFIX + b64e(bytes(data))


def _expected(token: Token, position: int) -> tuple[str, int | None]:
    for start, end, code, block in _regions(token):
        if start <= position < end:
            return code, block
    raise AssertionError(position)


def small_token(root_key: Any) -> Token:
    t = mint(root_key, ("alice", "human"), [{"server": "crm"}], 3600, T0)
    return attenuate(t, ("bob", "agent"), [{"server": "crm", "tool": "get_*"}], 600, T0)


def test_every_flipped_bit_of_a_small_token_is_refused(root_key: Any, root_pub: Any) -> None:
    token = small_token(root_key)
    raw = token.to_bytes()
    verifier = Verifier({"corp": root_pub})
    checked = 0
    for position in range(len(raw)):
        want, block = _expected(token, position)
        for bit in range(8):
            result = verifier.verify(_flip(raw, position, bit), T0 + 1)
            assert isinstance(result, IdentityError), (position, bit)
            if want == "malformed":
                # A changed length or count shifts the framing: refused either way.
                assert result.code in ("malformed", "bad_signature"), (position, bit, result)
            else:
                assert result.code == want, (position, bit, result)
                if block is not None:
                    assert result.block == block, (position, bit, result)
            checked += 1
    assert checked == len(raw) * 8


@pytest.mark.parametrize("where", ["version", "root_key_id", "count", "length 0", "payload 0",
                                   "signature 0", "payload 1", "signature 1", "proof tag",
                                   "proof"])
def test_flipped_bit_by_region(where: str, root_key: Any, verifier: Verifier) -> None:
    token = small_token(root_key)
    starts = {}
    pos = 10
    for i, block in enumerate(token.blocks):
        starts[f"length {i}"] = pos
        starts[f"payload {i}"] = pos + 2 + len(block.payload) // 2
        starts[f"signature {i}"] = pos + 2 + len(block.payload) + 7
        pos += 2 + len(block.payload) + 64
    starts.update({"version": 0, "root_key_id": 4, "count": 9, "proof tag": pos,
                   "proof": pos + 5})
    position = starts[where]
    want, block = _expected(token, position)
    result = verifier.verify(_flip(token.to_bytes(), position, 1), T0 + 1)
    assert isinstance(result, IdentityError)
    assert result.code in ((want,) if want != "malformed" else ("malformed", "bad_signature"))
    if block is not None:
        assert f"block {block}" in result.message
    assert result.message and str(result).endswith(f"[{result.code}]")


# --- structural attacks ------------------------------------------------------------------


def test_reordered_blocks(root_key: Any, verifier: Verifier) -> None:
    token = chain3(root_key)
    b0, b1, b2 = token.blocks
    refused(verifier, with_blocks(token, [b0, b2, b1]), "bad_signature", 1)
    refused(verifier, with_blocks(token, [b1, b0, b2]), "bad_signature", 0)


def test_middle_block_removed(root_key: Any, verifier: Verifier) -> None:
    token = chain3(root_key)
    b0, _, b2 = token.blocks
    error = refused(verifier, with_blocks(token, [b0, b2]), "bad_signature", 1)
    assert "next_key of block 0 (human `alice`)" in error.message


def test_last_block_removed_is_caught_by_the_proof(root_key: Any, verifier: Verifier) -> None:
    """sub-1 strips its own block to act with planner-1's wider authority: it holds only
    its own proof, which does not match planner-1's next_key."""
    token = chain3(root_key)
    error = refused(verifier, with_blocks(token, list(token.blocks[:2])), "bad_proof", 1)
    assert "truncated" in error.message and "agent `planner-1`" in error.message
    # Down to block 0 as well.
    refused(verifier, with_blocks(token, list(token.blocks[:1])), "bad_proof", 0)


def test_wrong_proof(root_key: Any, verifier: Verifier) -> None:
    token = chain3(root_key)
    refused(verifier, with_blocks(token, list(token.blocks),
                                  Ed25519PrivateKey.generate().private_bytes_raw()),
            "bad_proof", 2)
    other = chain3(root_key)   # the proof of another token with the same shape
    refused(verifier, with_blocks(token, list(token.blocks), other.proof), "bad_proof", 2)


def test_block_re_signed_by_the_wrong_key(root_key: Any, verifier: Verifier) -> None:
    """sub-1 rewrites planner-1's block to refund up to 10,000 and signs it with the only
    key it holds (its own proof): the signature does not verify with alice's next_key."""
    token = chain3(root_key)
    b0, b1, b2 = token.blocks
    wide = b1.payload.replace(b'"le":100', b'"le":10000')
    assert wide != b1.payload
    own = Ed25519PrivateKey.from_private_bytes(token.proof)
    forged = SignedBlock(wide, own.sign(signing_input(token.root_key_id, 1, b0.signature, wide)))
    refused(verifier, with_blocks(token, [b0, forged, b2]), "bad_signature", 1)
    # Re-signing block 0 with an attacker's root while keeping the trusted root key id.
    attacker = Ed25519PrivateKey.generate()
    fake0 = SignedBlock(b0.payload, attacker.sign(signing_input(token.root_key_id, 0, b"",
                                                               b0.payload)))
    error = refused(verifier, with_blocks(token, [fake0, b1, b2]), "bad_signature", 0)
    assert "root key `corp`" in error.message


def test_block_spliced_from_another_chain(root_key: Any, verifier: Verifier) -> None:
    token, other = chain3(root_key), chain3(root_key)
    refused(verifier, with_blocks(token, [token.blocks[0], other.blocks[1], token.blocks[2]]),
            "bad_signature", 1)


def test_unknown_root(root_key: Any, verifier: Verifier) -> None:
    stranger = Ed25519PrivateKey.generate()
    token = mint(stranger, ("mallory", "human"), ALICE, 3600, T0)
    error = refused(verifier, token.to_text(), "unknown_root", 0)
    assert b64e(key_id(stranger.public_key())) in error.message
    assert "`corp`" in error.message


def test_expired_and_not_yet_valid(root_key: Any, verifier: Verifier) -> None:
    text = chain3(root_key).to_text()
    error = refused(verifier, text, "expired", 2, now=T0 + 600)
    assert "agent `sub-1`" in error.message and "valid until" in error.message
    error = refused(verifier, text, "not_yet_valid", now=T0 - 5)
    assert "in 5 s" in error.message
    # A block that starts later than the others decides not_before.
    late = attenuate(mint(root_key, ("alice", "human"), ALICE, 3600, T0),
                     ("night", "agent"), None, 600, T0, not_before=T0 + 100)
    refused(verifier, late.to_text(), "not_yet_valid", 1, now=T0 + 50)
    assert not isinstance(verifier.verify(late.to_text(), T0 + 100), IdentityError)


def test_expiry_wins_over_not_yet_valid(root_key: Any, verifier: Verifier) -> None:
    t = mint(root_key, ("alice", "human"), ALICE, 100, T0)
    t = attenuate(t, ("late", "agent"), None, 300, T0, not_before=T0 + 200)  # never valid
    for now in (T0 + 50, T0 + 150, T0 + 250):
        result = verifier.verify(t.to_text(), now)
        assert isinstance(result, IdentityError)
        assert result.code == ("not_yet_valid" if now < T0 + 100 else "expired")


def test_widened_block_still_yields_only_the_intersection(root_key: Any, root_pub: Any,
                                                         verifier: Verifier) -> None:
    """The holder of planner-1's token appends a block that claims every tool and
    refunds up to 10,000: legal to encode, but it adds nothing."""
    planner = attenuate(mint(root_key, ("alice", "human"), ALICE, 3600, T0),
                        ("planner-1", "agent"), PLANNER, 1800, T0)
    wide = attenuate(planner, ("sub-1", "agent"),
                     [{"server": "*", "tool": "*"},
                      {"server": "crm", "tool": "refund", "args": {"amount": {"le": 10_000}}}],
                     7200, T0)
    chain = verifier.verify(wide.to_text(), T0 + 1)
    assert not isinstance(chain, IdentityError)
    assert chain.admits(mcp_call("refund", amount=50)) is True
    assert chain.admits(mcp_call("get_customer")) is True
    assert chain.admits(mcp_call("refund", amount=300)) == (
        "outside the capabilities of block 1 (agent `planner-1`)")
    assert chain.admits(mcp_call("delete_customer")) == (
        "outside the capabilities of block 0 (human `alice`)")
    assert chain.admits(mcp_call("get_invoice")) == (
        "outside the capabilities of block 1 (agent `planner-1`)")
    assert chain.admits(mcp_call("refund", server="billing", amount=1)) == (
        "outside the capabilities of block 0 (human `alice`)")
    # A longer ttl does not outlive the parent.
    assert chain.not_after == T0 + 1800
    refused(verifier, wide.to_text(), "expired", 1, now=T0 + 1800)
    # inspect shows which grants are not provably within the parent.
    report = inspect(wide, {"corp": root_pub}, T0 + 1)
    assert report["blocks"][2]["not_within_parent"] == [0, 1]
    assert "not_within_parent" not in report["blocks"][1]


def test_token_replayed_after_expiry(root_key: Any, verifier: Verifier) -> None:
    """Another session's token, captured while valid, replayed later: refused although
    its verification is cached."""
    text = chain3(root_key).to_text()
    assert not isinstance(verifier.verify(text, T0 + 10), IdentityError)
    error = refused(verifier, text, "expired", 2, now=T0 + 3600 * 24)
    assert "ago" in error.message
    assert verifier.cache_info()["hits"] >= 1


def test_sealed_token_attacks(root_key: Any, verifier: Verifier) -> None:
    sealed = seal_token(chain3(root_key))
    assert not isinstance(verifier.verify(sealed.to_text(), T0 + 1), IdentityError)
    refused(verifier, with_blocks(sealed, list(sealed.blocks[:2])), "bad_proof", 1)
    bad_seal = bytes([sealed.proof[0] ^ 1]) + sealed.proof[1:]
    refused(verifier, with_blocks(sealed, list(sealed.blocks), bad_seal), "bad_proof", 2)


def test_every_code_has_a_distinct_clear_message(root_key: Any, verifier: Verifier) -> None:
    token = chain3(root_key)
    b0, b1, b2 = token.blocks
    cases = {
        "malformed": "garbage",
        "unsupported_version": "fp9.AAAA",
        "unknown_root": mint(Ed25519PrivateKey.generate(), ("x", "human"), ALICE, 60,
                             T0).to_text(),
        "bad_signature": with_blocks(token, [b0, b2, b1]),
        "bad_proof": with_blocks(token, [b0, b1]),
        "expired": token.to_text(),
    }
    messages = set()
    for code, text in cases.items():
        result = verifier.verify(text, T0 + 700 if code == "expired" else T0 + 1)
        assert isinstance(result, IdentityError) and result.code == code
        assert len(result.message) > 20
        messages.add(result.message)
    assert len(messages) == len(cases)


# --- the cache -----------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = verify_module.check_signature

    def counting(key: Any, signature: bytes, data: bytes) -> bool:
        calls[0] += 1
        return real(key, signature, data)
    monkeypatch.setattr(verify_module, "check_signature", counting)
    return calls


def test_second_verify_skips_signature_checks_but_enforces_expiry(
        root_key: Any, root_pub: Any, counted: list[int]) -> None:
    verifier = Verifier({"corp": root_pub})
    text = chain3(root_key).to_text()
    first = verifier.verify(text, T0 + 1)
    assert counted[0] == 3 and not isinstance(first, IdentityError)
    second = verifier.verify(text, T0 + 2)
    assert second is first and counted[0] == 3
    assert verifier.cache_info() == {"size": 1, "max": 4096, "hits": 1, "misses": 1}
    expired = verifier.verify(text, T0 + 600)
    assert isinstance(expired, IdentityError) and expired.code == "expired"
    early = verifier.verify(text, T0 - 1)
    assert isinstance(early, IdentityError) and early.code == "not_yet_valid"
    assert counted[0] == 3
    assert first.digest == verify_module.token_digest(text)


def test_refusals_are_cached_too(root_key: Any, root_pub: Any, counted: list[int]) -> None:
    verifier = Verifier({"corp": root_pub})
    token = chain3(root_key)
    text = with_blocks(token, [token.blocks[0], token.blocks[2], token.blocks[1]])
    a = verifier.verify(text, T0 + 1)
    b = verifier.verify(text, T0 + 1)
    assert isinstance(a, IdentityError) and a is b and counted[0] == 2


def test_cache_is_a_bounded_lru(root_key: Any, root_pub: Any, counted: list[int]) -> None:
    verifier = Verifier({"corp": root_pub}, cache_size=2)
    texts = [mint(root_key, (f"u{i}", "human"), ALICE, 3600, T0).to_text() for i in range(3)]
    for text in texts:
        verifier.verify(text, T0 + 1)
    assert counted[0] == 3 and verifier.cache_info()["size"] == 2
    verifier.verify(texts[2], T0 + 1)            # cached
    verifier.verify(texts[1], T0 + 1)            # cached, now most recent
    assert counted[0] == 3
    verifier.verify(texts[0], T0 + 1)            # evicted earlier: cold again
    assert counted[0] == 4
    verifier.verify(texts[1], T0 + 1)            # still cached (texts[2] was evicted)
    assert counted[0] == 4


def test_cached_chain_is_not_shared_across_verifiers_with_other_roots(
        root_key: Any, root_pub: Any) -> None:
    text = chain3(root_key).to_text()
    assert not isinstance(Verifier({"corp": root_pub}).verify(text, T0 + 1), IdentityError)
    other = Verifier({"other": Ed25519PrivateKey.generate().public_key()})
    refused(other, text, "unknown_root", 0)


def test_duplicate_trusted_keys_are_refused(root_pub: Any) -> None:
    with pytest.raises(ValueError, match="same key"):
        Verifier({"a": root_pub, "b": root_pub})


def test_random_garbage_never_verifies(verifier: Verifier) -> None:
    rng = random.Random(7)
    for _ in range(300):
        raw = bytes([1]) + rng.randbytes(rng.randint(0, 400))
        result = verifier.verify(PREFIX + b64e(raw), T0)
        assert isinstance(result, IdentityError)
