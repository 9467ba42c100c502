"""RFC 9162 §2.1 Merkle trees: tree head, inclusion and consistency proofs.

Why a Merkle tree next to the hash chain: the chain proves order but an auditor must read
every record to check it; a signed tree head lets them check that one record is in the log
(inclusion) or that today's log extends last month's (consistency) from O(log n) hashes,
exactly as Certificate Transparency does. Leaves here are already hashed
(``leaf_hash(record-bytes)`` = SHA-256(0x00 || bytes)); interior nodes are
SHA-256(0x01 || left || right); the empty tree hashes to SHA-256("").

``CompactTree`` keeps only the O(log n) roots of the perfect subtrees ("frontier"), so the
writer and the verifier can compute the tree head after every record in amortized O(1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes."""
    return _mth(leaves, 0, len(leaves))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]): the audit path of leaf ``index`` in the tree of the first
    ``size`` leaves (default: all)."""
    size = len(leaves) if size is None else size
    if not 0 <= index < size <= len(leaves):
        raise ValueError(f"no leaf {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()  # RFC order: from the leaf up
    return path


def consistency_proof(leaves: Sequence[bytes], old_size: int,
                      new_size: int | None = None) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1."""
    new_size = len(leaves) if new_size is None else new_size
    if not 0 <= old_size <= new_size <= len(leaves):
        raise ValueError(f"no consistency proof from {old_size} to {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[bytes] = []
    _subproof(leaves, old_size, 0, new_size, True, out)
    return out


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, complete: bool,
              out: list[bytes]) -> None:
    n = hi - lo
    if m == n:
        if not complete:
            out.append(_mth(leaves, lo, hi))
        return
    k = _split(n)
    if m <= k:
        _subproof(leaves, m, lo, lo + k, complete, out)
        out.append(_mth(leaves, lo + k, hi))
    else:
        _subproof(leaves, m - k, lo + k, hi, False, out)
        out.append(_mth(leaves, lo, lo + k))


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root implied by an inclusion proof, or None if malformed."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     expected_root: bytes) -> bool:
    return root_from_inclusion(leaf, index, size, proof) == expected_root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2."""
    if old_size < 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a subtree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class CompactTree:
    """An append-only tree that remembers only the roots of its perfect subtrees."""

    __slots__ = ("_hashes", "_heights", "size")

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._heights: list[int] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        hashes, heights = self._hashes, self._heights
        h, height = leaf, 0
        while heights and heights[-1] == height:
            h = node_hash(hashes.pop(), h)
            heights.pop()
            height += 1
        hashes.append(h)
        heights.append(height)
        self.size += 1

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactTree:
        other = CompactTree()
        other._hashes = list(self._hashes)
        other._heights = list(self._heights)
        other.size = self.size
        return other
