"""`audit export --from --to`: the events of a range as JSONL, with what proves them.

Line 1 is a header: the range and the signed checkpoint the proof is against (the latest one).
Then one line per event: its position, its leaf index in the checkpoint's tree and its leaf
bytes (hex: the canonical header and the stored state, as sealed). The last line holds every
leaf hash of the checkpoint's tree, so that a verifier with only the public key recomputes
the root once, checks the signature, and checks each exported event against its leaf.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aggregates.errors import ValidationError
from gateways.audit.merkle import leaf_hash, notification_leaf_bytes
from gateways.audit.prove import sealed


def export_lines(app: Any, audit_dir: Path, first: int, last: int) -> Iterator[str]:
    """The JSONL lines of the export of positions `first`..`last` (inclusive)."""
    if first < 1 or last < first:
        raise ValidationError(f"--from {first} --to {last}: a range of positions from 1 up, "
                              "the first not after the last")
    checkpoint, notes = sealed(app, audit_dir)
    if not notes or last > notes[-1].id:
        raise ValidationError(f"--to {last} is past the latest checkpoint (it seals positions up "
                              f"to {notes[-1].id if notes else 0}): seal first")
    yield json.dumps({"export": "cloudkernel-audit", "from": first, "to": last,
                      "checkpoint": {"tree_size": checkpoint.tree_size,
                                     "root_hash": checkpoint.root_hash,
                                     "timestamp": checkpoint.timestamp,
                                     "signature": checkpoint.signature,
                                     "key_id": checkpoint.key_id}})
    hashes = []
    for index, note in enumerate(notes):
        data = notification_leaf_bytes(note)
        hashes.append(leaf_hash(data).hex())
        if first <= note.id <= last:
            yield json.dumps({"position": note.id, "leaf_index": index,
                              "leaf_bytes": data.hex()})
    yield json.dumps({"leaf_hashes": hashes})
