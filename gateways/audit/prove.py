"""`audit prove`: an inclusion proof of one stored event in a signed checkpoint, or a
consistency proof that a later checkpoint extends an earlier one (RFC 6962 section 2.1.2)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from aggregates.errors import ValidationError
from gateways.audit.merkle import (
    consistency_path,
    inclusion_path,
    leaf_hash,
    notification_leaf_bytes,
)
from gateways.audit.seal import (
    LEAVES_NAME,
    RECORD_SIZE,
    Checkpoint,
    read_checkpoints,
    read_leaf_bytes,
    read_notifications,
)


def sealed(app: Any, audit_dir: Path, tree_size: int | None = None
           ) -> tuple[Checkpoint, list[Any]]:
    """A checkpoint (the latest, or the one of `tree_size`) and the stored events its tree
    covers, in order."""
    checkpoint = _checkpoint(_all_checkpoints(audit_dir), tree_size)
    notes: list[Any] = []
    for note in read_notifications(app):
        if len(notes) == checkpoint.tree_size:
            break
        notes.append(note)
    return checkpoint, notes


def prove(app: Any, audit_dir: Path, position: int, tree_size: int | None = None) -> dict[str, Any]:
    """The proof, as JSON-ready data, that the event at `position` is in a checkpoint's tree.

    The checkpoint is the latest one, or the one of `tree_size`. The leaves are read from the
    store, so a proof of a tampered event does not verify.
    """
    checkpoint, notes = sealed(app, audit_dir, tree_size)
    index = next((k for k, n in enumerate(notes) if n.id == position), None)
    if index is None:
        raise ValidationError(f"position {position} is not in the tree of checkpoint "
                              f"tree_size={checkpoint.tree_size} (positions "
                              f"{notes[0].id if notes else '-'}..{notes[-1].id if notes else '-'})")
    leaves = [leaf_hash(notification_leaf_bytes(n)) for n in notes]
    data = notification_leaf_bytes(notes[index])
    return {
        "position": position,
        "leaf_index": index,
        "tree_size": checkpoint.tree_size,
        "leaf_bytes": data.hex(),
        "leaf_hash": leaves[index].hex(),
        "audit_path": [h.hex() for h in inclusion_path(index, leaves)],
        "checkpoint": asdict(checkpoint),
    }


def prove_consistency(audit_dir: Path, old_size: int, new_size: int | None = None
                      ) -> dict[str, Any]:
    """The proof, as JSON-ready data, that the checkpoint of `new_size` (default: the latest)
    extends the checkpoint of `old_size`: both checkpoints as signed and the RFC 6962
    consistency path between their trees.

    The leaf hashes are the sealed ones (leaves.bin), so a proof over a rewritten leaf file
    whose first `old_size` leaves differ from those the old checkpoint signed does not verify.
    """
    checkpoints = _all_checkpoints(audit_dir)
    old = _checkpoint(checkpoints, old_size)
    new = _checkpoint(checkpoints, new_size)
    if old.tree_size > new.tree_size:
        raise ValidationError(f"the old checkpoint (tree size {old.tree_size}) is larger than "
                              f"the new one (tree size {new.tree_size}): give the older first")
    data = read_leaf_bytes(audit_dir, new.tree_size)
    count = len(data) // RECORD_SIZE
    if count < new.tree_size:
        raise ValidationError(f"{audit_dir / LEAVES_NAME} holds {count} sealed leaves, fewer "
                              f"than the checkpoint of tree size {new.tree_size} covers")
    hashes = [data[o + 8:o + 40] for o in range(0, count * RECORD_SIZE, RECORD_SIZE)]
    return {
        "proof": "consistency",
        "old_checkpoint": asdict(old),
        "new_checkpoint": asdict(new),
        "consistency_path": [h.hex() for h in consistency_path(old.tree_size, hashes)],
    }


def _all_checkpoints(audit_dir: Path) -> list[Checkpoint]:
    """Every checkpoint in the folder; refuses a folder without any."""
    checkpoints = read_checkpoints(audit_dir)
    if not checkpoints:
        raise ValidationError(f"no checkpoints in {audit_dir}: run `cloudkernel audit seal` "
                              "first, or pass --dir")
    return checkpoints


def _checkpoint(checkpoints: list[Checkpoint], tree_size: int | None) -> Checkpoint:
    """The latest checkpoint, or the (last written) one of `tree_size`."""
    if tree_size is None:
        return max(checkpoints, key=lambda cp: cp.tree_size)
    matching = [cp for cp in checkpoints if cp.tree_size == tree_size]
    if not matching:
        sizes = ", ".join(str(cp.tree_size) for cp in checkpoints[-10:])
        raise ValidationError(f"no checkpoint of tree size {tree_size} (latest: {sizes})")
    return matching[-1]
