"""`audit verify`: recompute the Merkle tree from the store and hold it against every checkpoint.

Three checks, in order:

1. every checkpoint's Ed25519 signature, with the public key only;
2. the sealed leaf records (leaves.bin) against the checkpoints' roots, so a doctored leaf file
   cannot hide anything;
3. the store: its tree's root at each checkpoint's size must equal the checkpoint's root, and the
   store's events are aligned with the sealed records to name each position that was edited,
   removed or inserted (or renumbered after one), with the first checkpoint that exposes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregates.errors import ValidationError
from gateways.audit.keys import key_id
from gateways.audit.merkle import CompactTree, LeafHasher, roots_at
from gateways.audit.seal import (
    RECORD_SIZE,
    Checkpoint,
    LeafRecord,
    read_checkpoints,
    read_leaf_bytes,
    read_leaf_records,
    read_notifications,
    record_of,
)


@dataclass(frozen=True)
class Finding:
    """One difference between the sealed log and the store."""

    kind: str  # edited | removed | inserted | renumbered
    position: int
    leaf_index: int
    exposed_by: int | None  # the tree size of the first checkpoint covering it

    def describe(self) -> str:
        """One line of the report."""
        by = (f"exposed by checkpoint tree_size={self.exposed_by}" if self.exposed_by
              else "not yet covered by a checkpoint")
        return f"position {self.position} {self.kind} (leaf {self.leaf_index}; {by})"


@dataclass
class Report:
    """What `verify` found; clean when there are no problems and no findings."""

    checkpoints: int = 0
    sealed: int = 0
    store_events: int = 0
    unsealed: int = 0
    problems: list[str] = field(default_factory=list)
    failing_checkpoints: list[int] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when the store matches every checkpoint."""
        return not (self.problems or self.failing_checkpoints or self.findings)

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"clean": self.clean, "checkpoints": self.checkpoints, "sealed": self.sealed,
                "store_events": self.store_events, "unsealed": self.unsealed,
                "problems": self.problems, "failing_checkpoints": self.failing_checkpoints,
                "findings": [vars(f) for f in self.findings]}

    def lines(self) -> list[str]:
        """The report as text."""
        out = [f"{self.checkpoints} checkpoints, {self.sealed} events sealed, "
               f"{self.store_events} events in the store ({self.unsealed} not sealed yet)"]
        out += [f"PROBLEM: {p}" for p in self.problems]
        if self.findings:
            first = self.findings[0]
            out.append(f"TAMPERED: first difference: {first.describe()}")
            out += [f"  {f.describe()}" for f in self.findings[:50]]
            if len(self.findings) > 50:
                out.append(f"  ... and {len(self.findings) - 50} more")
        if self.failing_checkpoints:
            out.append("checkpoints whose root the store no longer matches: tree_size "
                       + ", ".join(map(str, self.failing_checkpoints[:20]))
                       + (" ..." if len(self.failing_checkpoints) > 20 else ""))
        if self.clean:
            out.append("OK: the store matches every checkpoint")
        return out


def verify_store(app: Any, audit_dir: Path, public: Ed25519PublicKey) -> Report:
    """Check the app's log against the checkpoints and leaf records kept in `audit_dir`.

    The common case, an untouched log, is one streaming pass: the sealed leaf file is checked
    against every checkpoint's root once, then each stored event's leaf hash is compared with
    its sealed record (equal leaves make equal roots, so the store's own tree is not built).
    Only when something differs does the full pass run, which aligns the two sequences and
    recomputes the store's roots to name every difference.
    """
    checkpoints = read_checkpoints(audit_dir)
    if not checkpoints:
        raise ValidationError(f"no checkpoints in {audit_dir}: run `cloudkernel audit seal` "
                              "first, or pass --dir")
    report = Report(checkpoints=len(checkpoints))
    _check_signatures(checkpoints, public, report)
    sealed_size = max(cp.tree_size for cp in checkpoints)
    report.sealed = sealed_size
    leaves = read_leaf_bytes(audit_dir, sealed_size)
    if len(leaves) == sealed_size * RECORD_SIZE and not _failing_roots(leaves, checkpoints):
        stored = _count_if_store_matches(app, leaves)
        if stored is not None:
            report.store_events, report.unsealed = stored, stored - sealed_size
            return report
    return _full_pass(app, audit_dir, checkpoints, sealed_size, report)


def _full_pass(app: Any, audit_dir: Path, checkpoints: list[Checkpoint], sealed_size: int,
               report: Report) -> Report:
    """Every stored event against every sealed record: names what differs, and where."""
    sealed = read_leaf_records(audit_dir, sealed_size)
    if not _leaf_file_matches(sealed, checkpoints, report):
        sealed = []  # untrustworthy: only the roots are compared
    store = [record_of(n) for n in read_notifications(app)]
    report.store_events = len(store)
    report.failing_checkpoints = _failing_checkpoints(store, checkpoints)
    if sealed:
        report.findings = align(sealed, store, checkpoints)
        last = sealed[-1].position
        report.unsealed = sum(1 for r in store if r.position > last)
    else:
        report.unsealed = max(0, len(store) - sealed_size)
    return report


def _failing_roots(leaves: bytes, checkpoints: list[Checkpoint]) -> list[int]:
    """The checkpoints whose root the sealed leaf hashes (in leaves.bin bytes) don't give."""
    hashes = [leaves[o + 8:o + 40] for o in range(0, len(leaves), RECORD_SIZE)]
    roots = roots_at(hashes, sorted({cp.tree_size for cp in checkpoints}))
    return [cp.tree_size for cp in checkpoints if roots[cp.tree_size].hex() != cp.root_hash]


def _count_if_store_matches(app: Any, leaves: bytes) -> int | None:
    """How many events the store holds, if its first ones are exactly the sealed records;
    None at the first event that differs (or when the store holds fewer)."""
    sealed = len(leaves) // RECORD_SIZE
    view = memoryview(leaves)
    hasher = LeafHasher()
    count = 0
    for note in read_notifications(app):
        if count < sealed and hasher(note) != view[count * RECORD_SIZE + 8:
                                                   count * RECORD_SIZE + 40]:
            return None
        count += 1
    return count if count >= sealed else None


def _check_signatures(checkpoints: list[Checkpoint], public: Ed25519PublicKey,
                      report: Report) -> None:
    kid = key_id(public)
    for cp in checkpoints:
        try:
            public.verify(bytes.fromhex(cp.signature), cp.text())
        except (InvalidSignature, ValueError):
            note = "" if cp.key_id == kid else f" (signed by key {cp.key_id}, not {kid})"
            report.problems.append(f"checkpoint tree_size={cp.tree_size}: bad signature{note}")


def _leaf_file_matches(sealed: list[LeafRecord], checkpoints: list[Checkpoint],
                       report: Report) -> bool:
    sizes = {cp.tree_size: cp.root_hash for cp in checkpoints}
    if len(sealed) < max(sizes):
        report.problems.append(f"the leaf file holds {len(sealed)} records, the checkpoints "
                               f"{max(sizes)}: positions are not named, only roots compared")
        return False
    tree = CompactTree()
    for record in sealed:
        tree.append_hash(record.leaf)
        if tree.size in sizes and tree.root().hex() != sizes[tree.size]:
            report.problems.append(f"the leaf file does not match checkpoint tree_size="
                                   f"{tree.size}: positions are not named, only roots compared")
            return False
    return True


def _failing_checkpoints(store: list[LeafRecord], checkpoints: list[Checkpoint]) -> list[int]:
    """The tree sizes of the checkpoints whose root the store's tree does not reproduce."""
    roots: dict[int, str] = {}
    wanted = {cp.tree_size for cp in checkpoints}
    tree = CompactTree()
    if 0 in wanted:
        roots[0] = tree.root().hex()
    for record in store:
        tree.append_hash(record.leaf)
        if tree.size in wanted:
            roots[tree.size] = tree.root().hex()
        if tree.size >= max(wanted):
            break
    return sorted({cp.tree_size for cp in checkpoints if roots.get(cp.tree_size) != cp.root_hash})


def align(sealed: list[LeafRecord], store: list[LeafRecord],
          checkpoints: list[Checkpoint]) -> list[Finding]:
    """Walk both sequences; name each sealed position edited, removed, inserted or renumbered."""
    sizes = sorted(cp.tree_size for cp in checkpoints)

    def exposed(index: int) -> int | None:
        return next((s for s in sizes if s > index), None)

    def found(kind: str, position: int, index: int) -> Finding:
        return Finding(kind, position, index, exposed(index))

    findings: list[Finding] = []
    i = j = 0
    while i < len(sealed):
        s = sealed[i]
        if j >= len(store):
            findings.append(found("removed", s.position, i))
            i += 1
            continue
        t = store[j]
        if s.leaf == t.leaf:
            i, j = i + 1, j + 1
        elif s.content == t.content:
            findings.append(found("renumbered", t.position, i))
            i, j = i + 1, j + 1
        elif j + 1 < len(store) and store[j + 1].content == s.content:
            findings.append(found("inserted", t.position, i))
            j += 1
        elif i + 1 < len(sealed) and sealed[i + 1].content == t.content:
            findings.append(found("removed", s.position, i))
            i += 1
        else:
            findings.append(found("edited", s.position, i))
            i, j = i + 1, j + 1
    return findings
