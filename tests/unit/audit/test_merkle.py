"""RFC 6962 Merkle hashing: the CT test vectors, incremental roots, inclusion proofs."""

import hashlib

import pytest

from gateways.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    LeafHasher,
    event_leaf_bytes,
    inclusion_path,
    leaf_hash,
    root_from_leaf_hashes,
    roots_at,
    verify_inclusion,
)

# The leaves and roots of Certificate Transparency's reference tests (merkle_tree_test).
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
CT_PATH_LEAF0_SIZE8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written out independently of the module under test."""
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def leaves(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


def test_the_ct_reference_roots() -> None:
    for size, expected in enumerate(CT_ROOTS, start=1):
        hashes = [leaf_hash(x) for x in CT_LEAVES[:size]]
        assert root_from_leaf_hashes(hashes).hex() == expected
        tree = CompactTree()
        for x in CT_LEAVES[:size]:
            tree.append(x)
        assert tree.root().hex() == expected
        assert mth(CT_LEAVES[:size]).hex() == expected


def test_the_ct_reference_audit_path() -> None:
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    assert [p.hex() for p in inclusion_path(0, hashes)] == CT_PATH_LEAF0_SIZE8


def test_the_empty_tree() -> None:
    assert CompactTree().root() == EMPTY_ROOT == sha(b"")
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@pytest.mark.parametrize("n", range(1, 70))
def test_incremental_roots_match_the_definition_for_every_size(n: int) -> None:
    data = leaves(n)
    tree = CompactTree()
    for x in data:
        tree.append(x)
    assert tree.size == n
    assert tree.root() == mth(data)
    assert len(tree.stack) == bin(n).count("1")
    resumed = CompactTree.from_json(tree.to_json())
    resumed.append(b"next")
    assert resumed.root() == mth([*data, b"next"])


def test_a_stack_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(ValueError):
        CompactTree(3, [(1, b"x" * 32)])


@pytest.mark.parametrize("n", range(1, 18))
def test_inclusion_proofs_of_every_leaf_verify_and_break_when_anything_changes(n: int) -> None:
    hashes = [leaf_hash(x) for x in leaves(n)]
    root = mth(leaves(n))
    for i in range(n):
        path = inclusion_path(i, hashes)
        assert verify_inclusion(i, n, hashes[i], path, root)
        assert not verify_inclusion(i, n, leaf_hash(b"forged"), path, root)
        for j in range(len(path)):
            bad = list(path)
            bad[j] = sha(bad[j])
            assert not verify_inclusion(i, n, hashes[i], bad, root)
        if n > 1:
            assert not verify_inclusion((i + 1) % n, n, hashes[i], path, root)
        assert not verify_inclusion(i, n, hashes[i], [*path, hashes[0]], root)
        if path:
            assert not verify_inclusion(i, n, hashes[i], path[:-1], root)
    with pytest.raises(ValueError):
        inclusion_path(n, hashes)


def test_event_leaf_bytes_are_canonical_and_bind_every_field() -> None:
    base = event_leaf_bytes(5, "a-b", 2, "t", b"{}")
    assert base == event_leaf_bytes(5, "a-b", 2, "t", b"{}")
    assert base.endswith(b"\n{}")
    others = [event_leaf_bytes(6, "a-b", 2, "t", b"{}"), event_leaf_bytes(5, "a-c", 2, "t", b"{}"),
              event_leaf_bytes(5, "a-b", 3, "t", b"{}"), event_leaf_bytes(5, "a-b", 2, "u", b"{}"),
              event_leaf_bytes(5, "a-b", 2, "t", b"{ }")]
    assert base not in others


def test_roots_at_equals_the_rfc_definition_at_every_size() -> None:
    hashes = [leaf_hash(str(i).encode()) for i in range(70)]
    roots = roots_at(hashes, range(71))
    assert all(roots[n] == root_from_leaf_hashes(hashes[:n]) for n in range(71))


def test_the_leaf_hasher_hashes_what_event_leaf_bytes_defines() -> None:
    from types import SimpleNamespace
    from uuid import uuid4

    hasher = LeafHasher()
    for topic, state in (("vm:VirtualMachine.Started", b"{}"), ('q"\\\u00e9\u2603', b"\x00\xff")):
        n = SimpleNamespace(id=12, originator_id=uuid4(), originator_version=3, topic=topic,
                            state=state)
        want = leaf_hash(event_leaf_bytes(12, n.originator_id, 3, topic, state))
        assert hasher(n) == want and hasher(n) == want  # cached topic too
