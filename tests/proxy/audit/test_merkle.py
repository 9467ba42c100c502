"""RFC 9162 §2.1 tree head, inclusion and consistency proofs against a brute-force oracle."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)


def mth(entries: list[bytes]) -> bytes:
    """The RFC's recursive definition, written independently with list slices."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:])).digest()


def subtree_roots(entries: list[bytes]) -> set[bytes]:
    """Every MTH of a contiguous range: proof nodes must come from this set."""
    return {mth(entries[i:j]) for i in range(len(entries)) for j in range(i + 1,
                                                                         len(entries) + 1)}


# RFC 6962 / certificate-transparency reference vectors (merkle_tree_test.cc)
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_reference_vectors() -> None:
    leaves = [leaf_hash(e) for e in CT_LEAVES]
    tree = CompactTree()
    assert root([]) == tree.root() == EMPTY_ROOT == mth([])
    for n in range(1, 9):
        tree.append(leaves[n - 1])
        assert root(leaves[:n]).hex() == CT_ROOTS[n - 1]
        assert tree.root().hex() == CT_ROOTS[n - 1]


def test_reference_inclusion_and_consistency() -> None:
    leaves = [leaf_hash(e) for e in CT_LEAVES]
    a, b, c, d, e, f, d6 = leaves[:7]
    g, h, i = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, ll = node_hash(g, h), node_hash(i, d6)
    # RFC 9162 §2.1.5: inclusion proofs in the tree of 7 leaves ...
    assert inclusion_proof(leaves, 0, 7) == [b, h, ll]
    assert inclusion_proof(leaves, 3, 7) == [c, g, ll]
    assert inclusion_proof(leaves, 4, 7) == [f, d6, k]
    # ... and consistency proofs from sizes 3, 4 and 6 to 7
    assert consistency_proof(leaves, 3, 7) == [c, d, g, ll]
    assert consistency_proof(leaves, 4, 7) == [ll]
    assert consistency_proof(leaves, 6, 7) == [i, d6, k]


entries = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=300, deadline=None)
@given(entries)
def test_compact_tree_matches_brute_force(data: list[bytes]) -> None:
    tree = CompactTree()
    leaves = []
    for i, e in enumerate(data):
        leaves.append(leaf_hash(e))
        tree.append(leaves[-1])
        assert tree.size == i + 1
        assert tree.root() == root(leaves) == mth(data[:i + 1])
    copy = tree.copy()
    copy.append(leaf_hash(b"x"))
    assert tree.root() == mth(data) and copy.root() == mth([*data, b"x"])


@settings(max_examples=300, deadline=None)
@given(entries, st.data())
def test_inclusion_proofs(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(e) for e in data]
    size = draw.draw(st.integers(1, len(data)))
    index = draw.draw(st.integers(0, size - 1))
    expected = mth(data[:size])
    proof = inclusion_proof(leaves, index, size)
    assert verify_inclusion(leaves[index], index, size, proof, expected)
    assert root_from_inclusion(leaves[index], index, size, proof) == expected
    assert set(proof) <= subtree_roots(data[:size]) or not proof
    assert len(proof) <= max(size - 1, 0).bit_length()
    # anything else fails: another leaf, another index, another size, a changed node
    assert not verify_inclusion(leaf_hash(data[index] + b"!"), index, size, proof, expected)
    if size > 1:
        other = (index + 1) % size
        if leaves[other] != leaves[index]:
            assert not verify_inclusion(leaves[index], other, size, proof, expected)
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = hashlib.sha256(bad[k]).digest()
        assert not verify_inclusion(leaves[index], index, size, bad, expected)
    assert not verify_inclusion(leaves[index], index, size, [*proof, expected], expected)


@settings(max_examples=300, deadline=None)
@given(entries, st.data())
def test_consistency_proofs(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(e) for e in data]
    new = draw.draw(st.integers(1, len(data)))
    old = draw.draw(st.integers(0, new))
    old_root, new_root = mth(data[:old]), mth(data[:new])
    proof = consistency_proof(leaves, old, new)
    assert verify_consistency(old, new, old_root, new_root, proof)
    if 0 < old < new:
        assert set(proof) <= subtree_roots(data[:new])
        other_new = mth([*data[:new - 1], data[new - 1] + b"!"])
        other_old = mth([data[0] + b"!", *data[1:old]])
        assert not verify_consistency(old, new, old_root, other_new, proof)
        assert not verify_consistency(old, new, other_old, new_root, proof)
        for k in range(len(proof)):
            bad = list(proof)
            bad[k] = hashlib.sha256(bad[k]).digest()
            assert not verify_consistency(old, new, old_root, new_root, bad)
        assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not verify_consistency(new, old, new_root, old_root, proof) or old == new


def test_bounds() -> None:
    leaves = [leaf_hash(b"a"), leaf_hash(b"b")]
    for bad in ((leaves, 2, 2), (leaves, 0, 3), (leaves, -1, 2)):
        try:
            inclusion_proof(*bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(bad)
    assert root_from_inclusion(leaves[0], 2, 2, []) is None
    assert not verify_consistency(0, 2, EMPTY_ROOT, root(leaves), [leaves[0]])
    assert verify_consistency(0, 2, EMPTY_ROOT, root(leaves), [])
    assert not verify_consistency(2, 2, root(leaves), root(leaves), [leaves[0]])
