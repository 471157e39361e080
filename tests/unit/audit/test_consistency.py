"""RFC 6962 consistency proofs: Certificate Transparency's reference vectors, and every pair of
tree sizes up to 40 proven, with any altered hash or root refused."""

import hashlib

import pytest

from gateways.audit.merkle import (
    EMPTY_ROOT,
    consistency_path,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
)

from .test_merkle import CT_LEAVES, CT_ROOTS, mth

# CT's reference consistency proofs over the same eight leaves (merkle_tree_test's kProofs, as
# kept in transparency-dev/merkle's tests): (old size, new size, proof)
CT_PROOFS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_HASHES = [leaf_hash(x) for x in CT_LEAVES]
MAX = 40
HASHES = [leaf_hash(f"leaf-{i}".encode()) for i in range(MAX)]
ROOTS = [root_from_leaf_hashes(HASHES[:n]) for n in range(MAX + 1)]


def root(size: int) -> bytes:
    return bytes.fromhex(CT_ROOTS[size - 1])


def flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


@pytest.mark.parametrize(("m", "n", "expected"), CT_PROOFS)
def test_the_ct_reference_consistency_proofs(m: int, n: int, expected: list[str]) -> None:
    proof = consistency_path(m, CT_HASHES[:n])
    assert [p.hex() for p in proof] == expected
    assert verify_consistency(m, n, root(m), root(n), proof)
    assert root(n) == mth(CT_LEAVES[:n])  # the roots are the reference ones, not ours
    if proof:
        assert not verify_consistency(m, n, root(m), root(n), proof[:-1])
        assert not verify_consistency(m, n, root(m - 1 or 2), root(n), proof)


@pytest.mark.parametrize("n", range(1, MAX + 1))
def test_every_old_size_is_proven_and_any_alteration_fails(n: int) -> None:
    new = ROOTS[n]
    for m in range(1, n + 1):
        old, proof = ROOTS[m], consistency_path(m, HASHES[:n])
        assert verify_consistency(m, n, old, new, proof), (m, n)
        assert len(proof) <= 2 * n.bit_length()
        assert not verify_consistency(m, n, flip(old), new, proof)
        assert not verify_consistency(m, n, old, flip(new), proof)
        for i in range(len(proof)):
            assert not verify_consistency(m, n, old, new, [*proof[:i], flip(proof[i]),
                                                           *proof[i + 1:]]), (m, n, i)
        assert not verify_consistency(m, n, old, new, [*proof, HASHES[0]])
        if proof:
            assert not verify_consistency(m, n, old, new, proof[:-1])
            assert not verify_consistency(m, n, old, new, proof[1:])
        if m < n and n & (n - 1) == 0:  # the new tree claimed larger than the proof covers
            assert not verify_consistency(m, 2 * n, old, new, proof)
        if m < n:  # another old tree of the same size
            other = root_from_leaf_hashes([leaf_hash(b"other"), *HASHES[1:m]])
            assert not verify_consistency(m, n, other, new, proof)


def test_a_history_that_differs_before_the_old_size_has_no_proof() -> None:
    """Leaf 5 replaced: no proof from the real tree of 8 to the edited tree of 12 verifies."""
    edited = [*HASHES[:5], leaf_hash(b"edited"), *HASHES[6:12]]
    edited_root = root_from_leaf_hashes(edited)
    for m in range(1, 13):
        proof = consistency_path(m, edited)
        assert verify_consistency(m, 12, root_from_leaf_hashes(edited[:m]), edited_root, proof)
        # the real old root of the same size is not extended by the edited tree
        assert verify_consistency(m, 12, ROOTS[m], edited_root, proof) == (m <= 5)
        assert not verify_consistency(m, 12, ROOTS[m], edited_root,
                                      consistency_path(m, HASHES[:12]))


def test_the_empty_tree_and_equal_sizes() -> None:
    assert consistency_path(0, HASHES[:5]) == [] == consistency_path(5, HASHES[:5])
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [ROOTS[5]])
    assert verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    assert not verify_consistency(5, 5, ROOTS[5], ROOTS[4], [])
    assert not verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])
    assert not verify_consistency(3, 5, ROOTS[3], ROOTS[5], [])
    assert not verify_consistency(6, 5, ROOTS[6], ROOTS[5], consistency_path(5, HASHES[:6]))
    assert not verify_consistency(-1, 5, ROOTS[0], ROOTS[5], [])
    with pytest.raises(ValueError):
        consistency_path(6, HASHES[:5])
    with pytest.raises(ValueError):
        consistency_path(-1, HASHES[:5])
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
