"""Token verification: ``Verifier.verify(text, now)`` → ``VerifiedChain`` or
``IdentityError``.

The expensive part (decode, every Ed25519 check, the proof, capability compilation) is
done once per token text and cached in a bounded LRU keyed by the SHA-256 of the text;
a reused token costs a hash and a dict lookup. The validity window is *not* cached: it
is checked against the chain's latest ``not_before`` and earliest ``not_after`` on
every call, so a cached token still expires on time.

Effective authority of a chain at time t is the intersection of its blocks: an action
is admitted iff every block admits it and every block is valid at t. A block whose
grants are wider than its parent's is legal to encode but cannot add anything.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..action import Action
from ..principal import ANONYMOUS, Link, Principal, PrincipalKind
from .capabilities import CapabilitySet, compile_capabilities
from .errors import IdentityError
from .keys import b64e, key_id
from .token import (
    PROOF_SECRET,
    BlockBody,
    Token,
    _b64d,
    canonical_json,
    describe_principal,
    seal_input,
    signing_input,
    time_text,
)

DEFAULT_CACHE_SIZE = 4096


def check_signature(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """One Ed25519 check. Every signature check of the verifier goes through here
    (tests count the calls to prove that the cache skips them)."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True, eq=False)
class VerifiedBlock:
    index: int
    body: BlockBody
    link: Link
    capabilities: CapabilitySet
    refusal: str          # the reason when this block refuses an action

    @property
    def who(self) -> str:
        return describe_principal(self.body)


@dataclass(frozen=True, slots=True)
class ChainPrincipal(Principal):
    """The principal of an action that presented a verified token: ``chain`` lists the
    blocks' principals (root first), ``verified`` is the chain itself."""

    verified: VerifiedChain = field(compare=False, repr=False, hash=False)


@dataclass(frozen=True, slots=True)
class RejectedPrincipal(Principal):
    """The principal of an action whose token was refused: it acts as anonymous and the
    identity plane denies it with the error's reason (never silently downgraded)."""

    error: IdentityError = field(compare=False, repr=False, hash=False)


def rejected(error: IdentityError) -> RejectedPrincipal:
    return RejectedPrincipal(ANONYMOUS.chain, error)


class VerifiedChain:
    """A token whose signatures and proof verified against a trusted root.

    ``admits(action)`` is ``True`` or the reason of the first block that refuses.
    Validity in time is separate: ``validity(now)`` (the verifier checks it on every
    ``verify``; the identity plane again per action)."""

    __slots__ = ("_checks", "_first_start", "_first_stop", "_plan", "blocks", "digest", "not_after",
                 "not_before", "principal", "root_key_id", "root_name", "sealed")

    def __init__(self, digest: str, root_name: str, root_key_id: bytes,
                 blocks: tuple[VerifiedBlock, ...], sealed: bool) -> None:
        self.digest = digest
        self.root_name = root_name
        self.root_key_id = root_key_id
        self.blocks = blocks
        self.sealed = sealed
        self.not_before = max(b.body.not_before for b in blocks)
        self.not_after = min(b.body.not_after for b in blocks)
        self._first_stop = next(b for b in blocks if b.body.not_after == self.not_after)
        self._first_start = next(b for b in blocks if b.body.not_before == self.not_before)
        # Blocks with the same capabilities as an earlier block add no test (compiled
        # capability sets are memoized, so equal grants are the same object).
        seen: set[int] = set()
        checks = []
        for block in blocks:
            if id(block.capabilities) not in seen:
                seen.add(id(block.capabilities))
                checks.append(block)
        self._checks = tuple(checks)
        self._plan = tuple((b.capabilities.grants, b.refusal) for b in checks)
        self.principal = ChainPrincipal(tuple(b.link for b in blocks), self)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def root(self) -> Link:
        return self.blocks[0].link

    @property
    def acting(self) -> Link:
        return self.blocks[-1].link

    def __repr__(self) -> str:
        return (f"VerifiedChain({self.principal}, depth={self.depth}, root={self.root_name!r}, "
                f"digest={self.digest[:16]})")

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    def validity(self, now: float) -> IdentityError | None:
        """``None`` when every block is valid at ``now``; else ``expired`` (wins) or
        ``not_yet_valid`` naming the block."""
        if now >= self.not_after:
            b = self._first_stop
            ago = int(now - self.not_after)
            return IdentityError(
                "expired",
                f"token expired: block {b.index} ({b.who}) was valid until "
                f"{time_text(self.not_after)} ({ago} s ago)", b.index)
        if now < self.not_before:
            b = self._first_start
            wait = int(self.not_before - now + 0.999)
            return IdentityError(
                "not_yet_valid",
                f"token not yet valid: block {b.index} ({b.who}) is valid from "
                f"{time_text(self.not_before)} (in {wait} s)", b.index)
        return None

    def admits(self, action: Action) -> bool | str:
        """``True`` when every block admits ``action``; else the refusing block's reason,
        e.g. "outside the capabilities of block 2 (agent `sub-1`)". Time is not checked
        here (see ``validity``)."""
        for grants, refusal in self._plan:
            for grant in grants:
                if grant.admits(action):
                    break
            else:
                return refusal
        return True

    def may_call(self, action: Action) -> bool:
        """Whether some arguments would make ``action`` admitted (tools/list filter)."""
        return all(b.capabilities.may_call(action) for b in self._checks)

    def reaches(self, action: Action) -> bool:
        """Whether every block grants *something* on the action's destination and MCP
        server (protocol plumbing such as initialize, tools/list, ping)."""
        return all(b.capabilities.reaches(action) for b in self._checks)

    def to_dict(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "root": self.root_name,
            "root_key_id": b64e(self.root_key_id),
            "depth": self.depth,
            "sealed": self.sealed,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "principal": self.principal.to_dict(),
        }


def token_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Verifier:
    """Verifies tokens against the trusted root keys (name → Ed25519 public key)."""

    def __init__(self, trusted_roots: Mapping[str, Ed25519PublicKey], *,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._roots: dict[bytes, tuple[str, Ed25519PublicKey]] = {}
        for name, key in trusted_roots.items():
            kid = key_id(key)
            if kid in self._roots:
                raise ValueError(f"trusted roots `{self._roots[kid][0]}` and `{name}` are "
                                 "the same key")
            self._roots[kid] = (name, key)
        self._cache: OrderedDict[bytes, VerifiedChain | IdentityError] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self.hits = 0
        self.misses = 0

    @property
    def root_names(self) -> list[str]:
        return [name for name, _ in self._roots.values()]

    def verify(self, token_text: str, now: float) -> VerifiedChain | IdentityError:
        if not isinstance(token_text, str):
            return IdentityError("malformed", "a token is text")
        digest = hashlib.sha256(token_text.encode("utf-8", "surrogatepass")).digest()
        cache = self._cache
        entry = cache.get(digest)
        if entry is None:
            self.misses += 1
            entry = self._verify_cold(token_text, digest.hex())
            cache[digest] = entry
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        else:
            self.hits += 1
            cache.move_to_end(digest)
        if type(entry) is VerifiedChain and entry.not_before <= now < entry.not_after:
            return entry
        if isinstance(entry, IdentityError):
            return entry
        error = entry.validity(now)
        assert error is not None
        return error

    def cache_info(self) -> dict[str, int]:
        return {"size": len(self._cache), "max": self._cache_size, "hits": self.hits,
                "misses": self.misses}

    def clear(self) -> None:
        self._cache.clear()

    def _verify_cold(self, text: str, digest: str) -> VerifiedChain | IdentityError:
        try:
            return self._verify_token(Token.from_text(text), digest)
        except IdentityError as e:
            return e

    def _verify_token(self, token: Token, digest: str) -> VerifiedChain:
        kid = token.root_key_id
        root = self._roots.get(kid)
        if root is None:
            trusted = ", ".join(f"`{n}` ({b64e(k)})" for k, (n, _) in self._roots.items())
            raise IdentityError(
                "unknown_root",
                f"block 0 is signed by root key id {b64e(kid)}, which is not trusted "
                f"(trusted: {trusted or 'none'})", 0)
        root_name, key = root
        signer = f"the root key `{root_name}`"
        previous = b""
        blocks: list[VerifiedBlock] = []
        for i, signed in enumerate(token.blocks):
            data = signing_input(kid, i, previous, signed.payload, token.version)
            if not check_signature(key, signed.signature, data):
                raise IdentityError(
                    "bad_signature",
                    f"block {i}: the signature does not verify with {signer}; the block "
                    "was altered, reordered, removed or signed by another key", i)
            body = BlockBody.from_payload(signed.payload, i)
            caps, issues = compile_capabilities(list(body.capabilities), ())
            if caps is None:
                _, message, path = issues[0]
                where = "capabilities" + "".join(
                    f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
                raise IdentityError("malformed", f"block {i}: {where}: {message}", i)
            try:
                key = Ed25519PublicKey.from_public_bytes(body.next_key)
            except ValueError:
                raise IdentityError("malformed", f"block {i}: next_key is not an Ed25519 "
                                    "public key", i) from None
            link = Link(body.principal_id, PrincipalKind(body.kind))
            blocks.append(VerifiedBlock(
                i, body, link, caps,
                f"outside the capabilities of block {i} ({describe_principal(body)})"))
            signer = f"the next_key of block {i} ({describe_principal(body)})"
            previous = signed.signature
        last = len(blocks) - 1
        if token.proof_tag == PROOF_SECRET:
            try:
                derived = Ed25519PrivateKey.from_private_bytes(token.proof).public_key()
            except ValueError:
                derived = None
            if derived is None or derived.public_bytes_raw() != blocks[-1].body.next_key:
                raise IdentityError(
                    "bad_proof",
                    f"the proof does not match the next_key of block {last} "
                    f"({blocks[-1].who}): the token was truncated or its proof replaced", last)
        elif not check_signature(key, token.proof, seal_input(kid, previous, token.version)):
            raise IdentityError(
                "bad_proof",
                f"the seal does not verify with the next_key of block {last} "
                f"({blocks[-1].who}): the token was truncated or its seal replaced", last)
        return VerifiedChain(digest, root_name, kid, tuple(blocks), token.sealed)


# --- evidence: a verified chain as data, and back -------------------------------------------


def chain_to_data(chain: VerifiedChain) -> dict[str, Any]:
    """What re-deciding needs of a verified chain: the block bodies (principals,
    capabilities, validity, next keys). No signature and no proof: the data cannot be
    presented as a token again."""
    return {
        "digest": chain.digest,
        "root": chain.root_name,
        "root_key_id": b64e(chain.root_key_id),
        "sealed": chain.sealed,
        "blocks": [b.body.to_json() for b in chain.blocks],
    }


def chain_from_data(data: Mapping[str, Any]) -> VerifiedChain:
    """Rebuild a chain recorded by ``chain_to_data`` (its signatures were verified when
    it was recorded; the record itself is covered by the signed evidence chain)."""
    blocks = []
    for i, raw in enumerate(data["blocks"]):
        body = BlockBody.from_payload(canonical_json(raw), i)
        caps, issues = compile_capabilities(list(body.capabilities), ())
        if caps is None:
            raise IdentityError("malformed", f"recorded block {i}: {issues[0][1]}", i)
        link = Link(body.principal_id, PrincipalKind(body.kind))
        blocks.append(VerifiedBlock(
            i, body, link, caps,
            f"outside the capabilities of block {i} ({describe_principal(body)})"))
    key_id = _b64d(data["root_key_id"])
    if key_id is None:
        raise IdentityError("malformed", "recorded root key id is not base64url")
    return VerifiedChain(str(data["digest"]), str(data["root"]), key_id, tuple(blocks),
                         bool(data["sealed"]))
