"""The sealer on an in-memory log: incremental checkpoints, restart, signatures, verification."""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import Notification

from aggregates.errors import ValidationError
from gateways.audit.keys import generate_keys, load_private_key, load_public_key
from gateways.audit.merkle import leaf_hash, notification_leaf_bytes, root_from_leaf_hashes
from gateways.audit.seal import CHECKPOINTS_NAME, LEAVES_NAME, Checkpoint, Sealer
from gateways.audit.verify import verify_store


class FakeRecorder:
    def __init__(self) -> None:
        self.rows: list[Notification] = []

    def add(self, n: int) -> None:
        for _ in range(n):
            nid = len(self.rows) + 1
            self.rows.append(Notification(originator_id=uuid4(), originator_version=1,
                                          topic="t:E", state=f'{{"n":{nid}}}'.encode(), id=nid))

    def select_notifications(self, start: int | None, limit: int, *,
                             inclusive_of_start: bool = True) -> list[Notification]:
        lo = start or 0
        rows = [r for r in self.rows if (r.id >= lo if inclusive_of_start else r.id > lo)]
        return rows[:limit]


def app_with(n: int) -> Any:
    recorder = FakeRecorder()
    recorder.add(n)
    return SimpleNamespace(recorder=recorder)


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    private, _, _ = generate_keys(tmp_path / "keys")
    return load_private_key(private)


def roots_of(app: Any) -> list[bytes]:
    return [leaf_hash(notification_leaf_bytes(r)) for r in app.recorder.rows]


def test_checkpoints_every_k_events_then_resume_after_a_restart(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    app, folder = app_with(12), tmp_path / "audit"
    published: list[Checkpoint] = []
    made = Sealer(app, folder, key, every=5, on_checkpoint=published.append).seal_once()
    assert [c.tree_size for c in made] == [5, 10, 12] and published == made
    assert made[-1].root_hash == root_from_leaf_hashes(roots_of(app)).hex()
    app.recorder.add(9)
    again = Sealer(app, folder, key, every=5).seal_once()  # a new process: resumes at 12
    assert [c.tree_size for c in again] == [17, 21]
    assert again[-1].root_hash == root_from_leaf_hashes(roots_of(app)).hex()
    assert (folder / LEAVES_NAME).stat().st_size == 21 * 72
    assert verify_store(app, folder, key.public_key()).clean


def test_follow_checkpoints_pending_events_after_the_interval(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    now = [0.0]
    sealer = Sealer(app_with(3), tmp_path, key, every=100, interval=10, clock=lambda: now[0])
    assert sealer.seal_available() == []
    now[0] = 11
    assert [c.tree_size for c in sealer.seal_available()] == [3]


def test_leaf_records_past_the_saved_tree_are_cut_off_on_restart(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    app = app_with(4)
    Sealer(app, tmp_path, key).seal_once()
    with (tmp_path / LEAVES_NAME).open("ab") as f:
        f.write(b"x" * 72)  # a crash after writing leaves, before the tree
    Sealer(app, tmp_path, key)
    assert (tmp_path / LEAVES_NAME).stat().st_size == 4 * 72


def test_forged_checkpoints_and_a_doctored_leaf_file_are_problems(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    app = app_with(6)
    Sealer(app, tmp_path, key, every=3).seal_once()
    other = Ed25519PrivateKey.generate().public_key()
    assert verify_store(app, tmp_path, other).problems[0].startswith(
        "checkpoint tree_size=3: bad signature (signed by key")
    lines = (tmp_path / CHECKPOINTS_NAME).read_text().splitlines()
    forged = json.loads(lines[0]) | {"root_hash": "00" * 32}
    (tmp_path / CHECKPOINTS_NAME).write_text("\n".join([json.dumps(forged), lines[1]]) + "\n")
    report = verify_store(app, tmp_path, key.public_key())
    assert "checkpoint tree_size=3: bad signature" in report.problems
    assert report.failing_checkpoints == [3] and not report.clean

    (tmp_path / CHECKPOINTS_NAME).write_text("\n".join(lines) + "\n")
    data = bytearray((tmp_path / LEAVES_NAME).read_bytes())
    data[72 + 20] ^= 1
    (tmp_path / LEAVES_NAME).write_bytes(bytes(data))
    report = verify_store(app, tmp_path, key.public_key())
    assert report.problems == ["the leaf file does not match checkpoint tree_size=3: "
                               "positions are not named, only roots compared"]
    assert report.failing_checkpoints == []


def test_keys_refuse_to_be_overwritten_and_refuse_wrong_files(tmp_path: Path) -> None:
    private, public, kid = generate_keys(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600 and len(kid) == 16
    with pytest.raises(ValidationError, match="exists"):
        generate_keys(tmp_path)
    with pytest.raises(ValidationError, match="not a PEM private key"):
        load_private_key(public)
    with pytest.raises(ValidationError, match="no public key"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(ValidationError, match="at least 1"):
        Sealer(app_with(0), tmp_path / "a", load_private_key(private), every=0)


def test_proofs_of_every_position_check_and_forgeries_fail(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    from gateways.audit.prove import prove
    from gateways.audit.verifier import check_proof

    app = app_with(11)
    Sealer(app, tmp_path, key, every=4).seal_once()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    for size in (4, 8, 11):
        for position in range(1, size + 1):
            assert check_proof(prove(app, tmp_path, position, size), pem) == []
    proof = prove(app, tmp_path, 6)
    assert check_proof(proof | {"position": 5}, pem) == [
        "the leaf is the event at position 6, not 5"]
    forged = proof | {"checkpoint": proof["checkpoint"] | {"root_hash": "11" * 32}}
    assert len(check_proof(forged, pem)) == 2
    assert check_proof(proof | {"leaf_index": 4}, pem) == [
        "the audit path does not lead to the checkpoint's root"]
    with pytest.raises(ValidationError, match="not in the tree"):
        prove(app, tmp_path, 9, 8)


def test_an_untouched_log_is_verified_in_one_streaming_pass(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    from gateways.audit.seal import read_leaf_bytes
    from gateways.audit.verify import _count_if_store_matches

    app = app_with(25)
    app.recorder.rows.append(Notification(originator_id=uuid4(), originator_version=7,
                                          topic='odd:"tøpic"\\', state=b"\x00\xff", id=26))
    Sealer(app, tmp_path, key, every=10).seal_once()
    app.recorder.add(3)  # not sealed yet
    leaves = read_leaf_bytes(tmp_path)
    # the inlined leaf hash is merkle's, so a clean log never needs the full pass
    assert _count_if_store_matches(app, leaves) == 29
    report = verify_store(app, tmp_path, key.public_key())
    assert report.clean and (report.sealed, report.store_events, report.unsealed) == (26, 29, 3)
    app.recorder.rows[11] = Notification(originator_id=app.recorder.rows[11].originator_id,
                                         originator_version=1, topic="t:E", state=b'{"n":0}',
                                         id=12)
    assert _count_if_store_matches(app, leaves) is None
    assert [f.describe() for f in verify_store(app, tmp_path, key.public_key()).findings] == [
        "position 12 edited (leaf 11; exposed by checkpoint tree_size=20)"]
