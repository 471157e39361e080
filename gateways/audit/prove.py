"""`audit prove POSITION`: an inclusion proof of one stored event in a signed checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aggregates.errors import ValidationError
from gateways.audit.merkle import inclusion_path, leaf_hash, notification_leaf_bytes
from gateways.audit.seal import Checkpoint, read_checkpoints, read_notifications


def sealed(app: Any, audit_dir: Path, tree_size: int | None = None
           ) -> tuple[Checkpoint, list[Any]]:
    """A checkpoint (the latest, or the one of `tree_size`) and the stored events its tree
    covers, in order."""
    checkpoints = read_checkpoints(audit_dir)
    if not checkpoints:
        raise ValidationError(f"no checkpoints in {audit_dir}: run `cloudkernel audit seal` "
                              "first, or pass --dir")
    if tree_size is None:
        checkpoint = max(checkpoints, key=lambda cp: cp.tree_size)
    else:
        matching = [cp for cp in checkpoints if cp.tree_size == tree_size]
        if not matching:
            sizes = ", ".join(str(cp.tree_size) for cp in checkpoints[-10:])
            raise ValidationError(f"no checkpoint of tree size {tree_size} (latest: {sizes})")
        checkpoint = matching[-1]
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
        "checkpoint": {"tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash,
                       "timestamp": checkpoint.timestamp, "signature": checkpoint.signature,
                       "key_id": checkpoint.key_id},
    }
