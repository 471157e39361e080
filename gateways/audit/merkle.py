"""RFC 6962 (Certificate Transparency) Merkle tree hashing over the platform log.

leaf hash = SHA-256(0x00 || leaf bytes), node hash = SHA-256(0x01 || left || right); the tree
of n leaves splits at k, the largest power of two below n (RFC 6962 section 2.1). The
`CompactTree` keeps only the roots of its complete subtrees (at most log2(n) + 1 hashes), so
sealing n events hashes O(n) and remembers O(log n).

This module imports only hashlib and json, so the standalone verifier can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def event_leaf_bytes(position: int, originator_id: object, originator_version: int,
                     topic: str, state: bytes) -> bytes:
    """The canonical leaf of one stored event: a JSON header line, a newline, the state bytes.

    The header holds the position (notification id), originator id and version, the topic
    and the state's length, with sorted keys and no spaces, so the encoding is unambiguous.
    """
    # json.dumps(..., sort_keys=True, separators=(",", ":")) of those five fields, written out
    # (a third of the sealing time went to the generic encoder); the topic is JSON-escaped
    header = (f'{{"originator_id":"{originator_id}","originator_version":{originator_version},'
              f'"position":{position},"state_length":{len(state)},"topic":{json.dumps(topic)}}}')
    return header.encode() + b"\n" + bytes(state)


class LeafHasher:
    """The leaf hash of `notification_leaf_bytes(n)`, computed in one piece with each topic's
    JSON encoding cached: sealing and verifying spend most of their time here."""

    def __init__(self) -> None:
        """An empty topic cache."""
        self._topics: dict[str, str] = {}

    def __call__(self, n: Any) -> bytes:
        """SHA-256(0x00 || event_leaf_bytes(...)) of notification `n`."""
        topic = self._topics.get(n.topic)
        if topic is None:
            topic = self._topics[n.topic] = json.dumps(n.topic)
        state = n.state
        header = (f'\x00{{"originator_id":"{n.originator_id}","originator_version":'
                  f'{n.originator_version},"position":{n.id},"state_length":{len(state)},'
                  f'"topic":{topic}}}\n')
        return hashlib.sha256(header.encode() + bytes(state)).digest()


def notification_leaf_bytes(notification: Any) -> bytes:
    """The leaf bytes of an eventsourcing Notification (id, originator, version, topic, state)."""
    return event_leaf_bytes(notification.id, notification.originator_id,
                            notification.originator_version, notification.topic,
                            notification.state)


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) by the RFC's recursive definition, from the leaf hashes."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


def inclusion_path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf `index` in the tree of these leaf hashes."""
    n = len(hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_path(index, hashes[:k]), root_from_leaf_hashes(hashes[k:])]
    return [*inclusion_path(index - k, hashes[k:]), root_from_leaf_hashes(hashes[:k])]


def root_from_inclusion_path(index: int, tree_size: int, leaf: bytes,
                             path: Sequence[bytes]) -> bytes:
    """The root an audit path leads to from a leaf hash (RFC 9162 section 2.1.3.2).

    Raises ValueError when the path has the wrong length for (index, tree_size).
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} is outside a tree of size {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("the audit path is longer than the tree is deep")
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the audit path is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes],
                     root: bytes) -> bool:
    """True when the audit path proves leaf hash `leaf` is leaf `index` of the tree `root`."""
    try:
        return root_from_inclusion_path(index, tree_size, leaf, path) == root
    except ValueError:
        return False


def consistency_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 6962 section 2.1.2): the hashes that prove the tree of the first `m`
    of these n leaf hashes is the start of the tree of all of them (empty for m = 0 or n)."""
    n = len(hashes)
    if not 0 <= m <= n:
        raise ValueError(f"tree size {m} is outside 0..{n}")
    return _subproof(m, hashes, True) if 0 < m < n else []


def _subproof(m: int, hashes: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b): `whole` is true while the old tree's root is this subtree's."""
    n = len(hashes)
    if m == n:
        # the verifier knows the old root itself, so it is left out only when it is that root
        return [] if whole else [root_from_leaf_hashes(hashes)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, hashes[:k], whole), root_from_leaf_hashes(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), root_from_leaf_hashes(hashes[:k])]


def verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """True when `proof` shows the tree of size `m` and root `old_root` is the first m leaves
    of the tree of size `n` and root `new_root` (RFC 9162 section 2.1.4.2).

    Equal sizes need an empty proof and equal roots; the empty tree (m = 0) an empty proof.
    """
    if not 0 <= m <= n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if m == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = [old_root, *proof] if m & (m - 1) == 0 else list(proof)  # m a power of two
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def roots_at(hashes: Sequence[bytes], sizes: Sequence[int]) -> dict[int, bytes]:
    """MTH of the first `size` leaves for each size (each at most len(hashes)), from the
    leaf hashes: the tree's levels are hashed once, level by level, and each root folds the
    complete subtrees that make up its size (at most log2(size) + 1 of them)."""
    levels = [list(hashes)]
    sha256 = hashlib.sha256
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([sha256(NODE_PREFIX + a + b).digest()
                       for a, b in zip(below[0::2], below[1::2], strict=False)])
    roots = {}
    for size in sizes:
        if not 0 <= size <= len(hashes):
            raise ValueError(f"tree size {size} is outside 0..{len(hashes)}")
        subtrees, offset = [], 0  # the complete subtrees, largest (leftmost) first
        for height in range(size.bit_length() - 1, -1, -1):
            if size >> height & 1:
                subtrees.append(levels[height][offset >> height])
                offset += 1 << height
        root = subtrees[-1] if subtrees else EMPTY_ROOT
        for left in reversed(subtrees[:-1]):
            root = node_hash(left, root)
        roots[size] = root
    return roots


class CompactTree:
    """An append-only Merkle tree that remembers only its complete subtrees' roots.

    `stack` holds (height, hash) pairs from the largest subtree to the smallest; their
    heights are the set bits of `size`, so there are at most log2(size) + 1 of them.
    """

    def __init__(self, size: int = 0, stack: Sequence[tuple[int, bytes]] = ()) -> None:
        """An empty tree, or one resumed from a saved (size, stack)."""
        if sum(1 << h for h, _ in stack) != size:
            raise ValueError("the subtree stack does not add up to the tree size")
        self.size = size
        self.stack: list[tuple[int, bytes]] = list(stack)

    def append_hash(self, leaf: bytes) -> None:
        """Add one leaf hash, merging equal-height subtrees (amortised O(1) hashing)."""
        height, h = 0, leaf
        while self.stack and self.stack[-1][0] == height:
            _, left = self.stack.pop()
            h = node_hash(left, h)
            height += 1
        self.stack.append((height, h))
        self.size += 1

    def append(self, data: bytes) -> bytes:
        """Add one leaf by its bytes; return its leaf hash."""
        h = leaf_hash(data)
        self.append_hash(h)
        return h

    def root(self) -> bytes:
        """MTH of the leaves so far: the subtree roots folded from the smallest up."""
        if not self.stack:
            return EMPTY_ROOT
        r = self.stack[-1][1]
        for _, h in reversed(self.stack[:-1]):
            r = node_hash(h, r)
        return r

    def to_json(self) -> dict[str, Any]:
        """The size and stack, to resume after a restart."""
        return {"size": self.size, "stack": [[h, v.hex()] for h, v in self.stack]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompactTree:
        """A tree saved by `to_json`."""
        return cls(int(data["size"]), [(int(h), bytes.fromhex(v)) for h, v in data["stack"]])
