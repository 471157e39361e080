"""The sealing follower: reads the platform log in order, keeps an RFC 6962 Merkle tree over
the events, and writes signed checkpoints, outside the database.

Files, in the audit folder (default `<data_dir>/audit`):

* `checkpoints.jsonl`: every checkpoint, one JSON object a line: tree_size, root_hash (hex),
  timestamp, signature (hex Ed25519 over `checkpoint_text`) and key_id;
* `leaves.bin`: one 72-byte record per sealed event, append-only: its position (8 bytes, big
  endian), its leaf hash and its content hash (the event without its position), so `verify`
  can name the exact position that was edited, removed or inserted;
* `tree.json`: the tree's complete-subtree roots at the last checkpoint and the last sealed
  position, to continue incrementally after a restart.

Synchronous: the caller publishes checkpoints (NATS is an async edge) through `on_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregates.errors import ValidationError
from gateways.audit.keys import key_id
from gateways.audit.merkle import CompactTree, LeafHasher

SUBJECT = "cloudkernel.audit.checkpoints"
CHECKPOINTS_NAME = "checkpoints.jsonl"
LEAVES_NAME = "leaves.bin"
TREE_NAME = "tree.json"
RECORD_SIZE = 72
PAGE = 10_000  # log positions read per query (the raw read rate's page)


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the log's first `tree_size` events have Merkle root `root_hash`."""

    tree_size: int
    root_hash: str
    timestamp: str
    signature: str
    key_id: str

    def text(self) -> bytes:
        """The bytes the signature covers."""
        return checkpoint_text(self.tree_size, self.root_hash, self.timestamp)

    def to_json(self) -> str:
        """One line of checkpoints.jsonl."""
        return json.dumps(asdict(self), sort_keys=True)


def checkpoint_text(tree_size: int, root_hex: str, timestamp: str) -> bytes:
    """The canonical signed text of a checkpoint."""
    return f"cloudkernel-checkpoint\n{tree_size}\n{root_hex}\n{timestamp}".encode()


@dataclass(frozen=True)
class LeafRecord:
    """One sealed event: its position, leaf hash and content hash."""

    position: int
    leaf: bytes
    content: bytes

    def pack(self) -> bytes:
        """The 72-byte record of leaves.bin."""
        return self.position.to_bytes(8, "big") + self.leaf + self.content


_topics: dict[str, str] = {}  # each topic's JSON text, made once


def content_hash(notification: Any) -> bytes:
    """The hash of an event without its position: finds it again after a renumbering."""
    topic = _topics.get(notification.topic)
    if topic is None:
        topic = _topics[notification.topic] = json.dumps(notification.topic)
    head = f'["{notification.originator_id}",{notification.originator_version},{topic}]\n'
    return hashlib.sha256(head.encode() + bytes(notification.state)).digest()


_leaf_hash = LeafHasher()


def record_of(notification: Any) -> LeafRecord:
    """The leaf record of a stored notification."""
    return LeafRecord(notification.id, _leaf_hash(notification),
                      content_hash(notification))


def read_notifications(app: Any, after: int = 0) -> Iterator[Any]:
    """Every notification of the app's log with a position above `after`, in order."""
    start = after
    while True:
        page = app.recorder.select_notifications(start, PAGE, inclusive_of_start=False)
        if not page:
            return
        yield from page
        start = page[-1].id


def read_checkpoints(audit_dir: Path) -> list[Checkpoint]:
    """Every checkpoint kept in the folder, oldest first (none when there is no file)."""
    path = audit_dir / CHECKPOINTS_NAME
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Checkpoint(**json.loads(line)))
        except (ValueError, TypeError) as e:
            raise ValidationError(f"{path} line {n} is not a checkpoint: {e}") from e
    return out


def read_leaf_bytes(audit_dir: Path, limit: int | None = None) -> bytes:
    """The sealed leaf records' bytes (the first `limit` records, whole records only)."""
    path = audit_dir / LEAVES_NAME
    if not path.is_file():
        return b""
    with path.open("rb") as f:
        data = f.read(-1 if limit is None else limit * RECORD_SIZE)
    return data[:len(data) - len(data) % RECORD_SIZE]


def read_leaf_records(audit_dir: Path, limit: int | None = None) -> list[LeafRecord]:
    """The sealed leaf records (the first `limit` of them)."""
    data = read_leaf_bytes(audit_dir, limit)
    count = len(data) // RECORD_SIZE
    return [LeafRecord(int.from_bytes(data[o:o + 8], "big"), data[o + 8:o + 40],
                       data[o + 40:o + 72])
            for o in range(0, count * RECORD_SIZE, RECORD_SIZE)]


class Sealer:
    """Follows the log from its last checkpoint; checkpoints every `every` events or
    `interval` seconds (when events are pending), and at the end of `seal_once`."""

    def __init__(self, app: Any, audit_dir: Path, key: Ed25519PrivateKey, *, every: int = 1000,
                 interval: float = 60.0,
                 on_checkpoint: Callable[[Checkpoint], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Resume from `audit_dir` (created when missing); `key` signs the checkpoints."""
        if every < 1:
            raise ValidationError("--every must be at least 1")
        self.app, self.dir, self.key = app, audit_dir, key
        self.key_id = key_id(key.public_key())
        self.every, self.interval = every, interval
        self.on_checkpoint, self.clock = on_checkpoint, clock
        audit_dir.mkdir(parents=True, exist_ok=True)
        self.tree, self.last_position = self._resume()
        self.pending: list[LeafRecord] = []
        self.last_checkpoint_at = clock()

    def _resume(self) -> tuple[CompactTree, int]:
        """The saved tree; leaf records past it (a crash between two writes) are cut off."""
        path = self.dir / TREE_NAME
        if not path.is_file():
            tree, last = CompactTree(), 0
        else:
            saved = json.loads(path.read_text())
            tree, last = CompactTree.from_json(saved["tree"]), int(saved["last_position"])
        leaves = self.dir / LEAVES_NAME
        if leaves.is_file() and leaves.stat().st_size > tree.size * RECORD_SIZE:
            with leaves.open("r+b") as f:
                f.truncate(tree.size * RECORD_SIZE)
        return tree, last

    def seal_available(self) -> list[Checkpoint]:
        """Seal what the log holds now; checkpoint when due. Returns the new checkpoints."""
        made = []
        for note in read_notifications(self.app, self.last_position):
            record = record_of(note)
            self.tree.append_hash(record.leaf)
            self.pending.append(record)
            self.last_position = note.id
            if len(self.pending) >= self.every:
                made.append(self.checkpoint())
        if self.pending and self.clock() - self.last_checkpoint_at >= self.interval:
            made.append(self.checkpoint())
        return made

    def seal_once(self) -> list[Checkpoint]:
        """Seal everything in the log and end with a checkpoint of all of it."""
        made = self.seal_available()
        if self.pending or not read_checkpoints(self.dir):
            made.append(self.checkpoint())
        return made

    def checkpoint(self) -> Checkpoint:
        """Write the pending leaf records, the tree, then a signed checkpoint; publish it."""
        with (self.dir / LEAVES_NAME).open("ab") as f:
            f.write(b"".join(r.pack() for r in self.pending))
            f.flush()
            os.fsync(f.fileno())
        self.pending.clear()
        tmp = self.dir / (TREE_NAME + ".tmp")
        tmp.write_text(json.dumps({"tree": self.tree.to_json(),
                                   "last_position": self.last_position}))
        os.replace(tmp, self.dir / TREE_NAME)
        root = self.tree.root().hex()
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        signature = self.key.sign(checkpoint_text(self.tree.size, root, stamp)).hex()
        cp = Checkpoint(self.tree.size, root, stamp, signature, self.key_id)
        with (self.dir / CHECKPOINTS_NAME).open("a") as f:
            f.write(cp.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.last_checkpoint_at = self.clock()
        if self.on_checkpoint is not None:
            self.on_checkpoint(cp)
        return cp
