"""`audit prove --consistency OLD [NEW]` and `audit check-proof` on consistency proofs: a later
checkpoint proven to extend an earlier one from the sealed leaf file, checked with the public
key alone; an edited log resealed with the real key does not pass as an extension."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Notification

from gateways.audit.keys import generate_keys, load_private_key
from gateways.audit.merkle import consistency_path, root_from_leaf_hashes
from gateways.audit.prove import prove as inclusion_proof
from gateways.audit.seal import CHECKPOINTS_NAME, LEAVES_NAME, Sealer, read_leaf_records
from gateways.audit.verifier import check_consistency
from gateways.audit.verifier import main as verifier_main
from gateways.cli.main import main
from tests.unit.audit.test_seal import app_with

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """An audit folder with a key pair and a log of 12 events sealed every 4 (4, 8, 12)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    audit = tmp_path / "data/audit"
    private, _, _ = generate_keys(audit)
    app = app_with(12)
    Sealer(app, audit, load_private_key(private), every=4).seal_once()
    return audit, app


@pytest.fixture
def folder(sealed: tuple[Path, Any]) -> Path:
    """The sealed audit folder."""
    return sealed[0]


def prove(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "prove", *args])
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys: pytest.CaptureFixture[str], proof: Path, *args: str) -> tuple[int, str]:
    key = proof.parent / "data/audit/signing.pub"
    code = main(["audit", "check-proof", str(proof), "--public-key", str(key), *args])
    return code, capsys.readouterr().out


def save(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_later_checkpoint_is_proven_to_extend_an_older_one(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = prove(capsys, "--consistency", "4")  # to the latest, 12
    assert code == 0
    proof = json.loads(out)
    assert (proof["old_checkpoint"]["tree_size"], proof["new_checkpoint"]["tree_size"]) == (4, 12)
    hashes = [r.leaf for r in read_leaf_records(folder)]
    assert proof["consistency_path"] == [h.hex() for h in consistency_path(4, hashes)]
    written = [json.loads(line) for line in (folder / CHECKPOINTS_NAME).read_text().splitlines()]
    assert proof["old_checkpoint"] == written[0] and proof["new_checkpoint"] == written[2]
    path = save(tmp_path, "p.json", out)
    code, text = check(capsys, path)
    assert code == 0 and text.startswith("OK: the signed checkpoint tree_size=12 root")
    pub = str(folder / "signing.pub")
    assert verifier_main([str(path), "--public-key", pub]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    for sizes in (["4", "8"], ["8", "12"], ["8", "8"], ["12"]):
        code, out, _ = prove(capsys, "--consistency", *sizes, "--dir", str(folder))
        assert code == 0 and check(capsys, save(tmp_path, "q.json", out))[0] == 0, sizes

    # the auditor holds checkpoint 4 (a checkpoints.jsonl line): the proof must start there
    held = save(tmp_path, "held.json", json.dumps(written[0]))
    assert check(capsys, path, "--trusted", str(held))[0] == 0
    held8 = save(tmp_path, "held8.json", json.dumps(written[1]))
    code, text = check(capsys, path, "--trusted", str(held8))
    assert code == 1 and "not the checkpoint you hold (tree_size=8" in text

    # any change to the file fails, with a one-line reason
    bad = proof | {"consistency_path": [*proof["consistency_path"][:-1], "00" * 32]}
    code, text = check(capsys, save(tmp_path, "bad.json", json.dumps(bad)))
    assert code == 1 and text == ("FAIL: the consistency path does not prove that tree_size=12 "
                                  "extends tree_size=4: the log was not only appended to\n")
    stamp = proof["new_checkpoint"] | {"timestamp": "2020-01-01T00:00:00+00:00"}
    code, text = check(capsys, save(tmp_path, "bad.json", json.dumps(proof | {
        "new_checkpoint": stamp})))
    assert code == 1 and text == ("FAIL: the new checkpoint's signature does not verify with "
                                  "this public key\n")
    swapped = proof | {"old_checkpoint": proof["new_checkpoint"],
                       "new_checkpoint": proof["old_checkpoint"]}
    assert "is larger than the new one" in check_consistency(
        swapped, (folder / "signing.pub").read_bytes())[0]
    save(tmp_path, "bad.json", "{not json")
    assert check(capsys, tmp_path / "bad.json")[0] == 2


def test_bad_input_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert prove(capsys, "--consistency", "1")[2].count("no checkpoints in") == 1
    private, _, _ = generate_keys(tmp_path / "data/audit")
    app = app_with(6)
    Sealer(app, tmp_path / "data/audit", load_private_key(private), every=3).seal_once()
    for args, message in (
            (["--consistency", "5"], "no checkpoint of tree size 5"),
            (["--consistency", "3", "4"], "no checkpoint of tree size 4"),
            (["--consistency", "6", "3"], "is larger than the new one"),
            (["--consistency", "3", "6", "6"], "at most one NEW_SIZE"),
            (["4", "--consistency", "3"], "takes no POSITION"),
            (["--consistency", "3", "--checkpoint", "6"], "takes no POSITION"),
            ([], "give the POSITION")):
        code, _, err = prove(capsys, *args)
        assert code == 2 and message in err, (args, err)
    pub_dir = tmp_path / "data/audit"
    pub = str(pub_dir / "signing.pub")
    assert main(["audit", "check-proof", pub, "--public-key", pub, "--export",
                 "--trusted", pub]) == 2
    assert "not exports" in capsys.readouterr().err
    path = save(tmp_path, "inclusion.json", json.dumps(inclusion_proof(app, pub_dir, 2)))
    assert main(["audit", "check-proof", str(path), "--public-key", pub]) == 0
    assert main(["audit", "check-proof", str(path), "--public-key", pub,
                 "--trusted", str(path)]) == 2
    assert "not inclusion proofs" in capsys.readouterr().err
    leaves = tmp_path / "data/audit" / LEAVES_NAME
    leaves.write_bytes(leaves.read_bytes()[:72 * 5])
    code, _, err = prove(capsys, "--consistency", "3")
    assert code == 2 and "holds 5 sealed leaves, fewer than" in err


def test_a_log_edited_and_resealed_with_the_real_key_is_not_an_extension(
        sealed: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, app = sealed
    pub = (folder / "signing.pub").read_bytes()
    genuine = [r.leaf for r in read_leaf_records(folder)]
    # Before the tampering the auditor checks 8 -> 12 and keeps the proof (it holds 12).
    code, before, _ = prove(capsys, "--consistency", "8")
    held = save(tmp_path, "held.json", before)
    assert code == 0 and check(capsys, held)[0] == 0

    # Someone with the real key edits event 6, the log grows by 4, and the leaf file is
    # rewritten and checkpoint 16 forged from the edited log (sealed afresh elsewhere).
    rows = app.recorder.rows
    rows[5] = Notification(originator_id=rows[5].originator_id, originator_version=1,
                           topic="t:E", state=b'{"n":666}', id=6)
    app.recorder.add(4)
    forged_dir = tmp_path / "forged"
    Sealer(app, forged_dir, load_private_key(folder / "signing.key"), every=4).seal_once()
    shutil.copy(forged_dir / LEAVES_NAME, folder / LEAVES_NAME)
    forged = (forged_dir / CHECKPOINTS_NAME).read_text().splitlines()
    with (folder / CHECKPOINTS_NAME).open("a") as f:
        f.write(forged[-1] + "\n")
    forged16 = json.loads(forged[-1])
    assert forged16["tree_size"] == 16

    # The proof the log now gives from the genuine 8 or 12 to the forged 16 does not hold.
    for old in ("8", "12"):
        code, out, _ = prove(capsys, "--consistency", old)
        proof = json.loads(out)
        assert code == 0 and proof["new_checkpoint"] == forged16
        code, text = check(capsys, save(tmp_path, "after.json", out))
        assert code == 1 and text == (f"FAIL: the consistency path does not prove that "
                                      f"tree_size=16 extends tree_size={old}: the log was not "
                                      "only appended to\n")
    # Nor does the earlier proof's path, nor one from the genuine leaves and the 4 new ones.
    earlier = json.loads(before)
    assert check_consistency(earlier | {"new_checkpoint": forged16}, pub)
    new_leaves = [r.leaf for r in read_leaf_records(folder)][12:]
    honest = consistency_path(12, [*genuine, *new_leaves])
    assert check_consistency({"old_checkpoint": earlier["new_checkpoint"],
                              "new_checkpoint": forged16,
                              "consistency_path": [h.hex() for h in honest]}, pub)

    # With every old checkpoint re-signed too, the forged chain is consistent in itself, but
    # it does not start from the checkpoint the auditor holds.
    shutil.copy(forged_dir / CHECKPOINTS_NAME, folder / CHECKPOINTS_NAME)
    code, out, _ = prove(capsys, "--consistency", "12")
    assert code == 0 and check(capsys, save(tmp_path, "self.json", out))[0] == 0
    code, text = check(capsys, tmp_path / "self.json", "--trusted", str(held))
    assert code == 1 and "not the checkpoint you hold (tree_size=12" in text
    assert root_from_leaf_hashes(genuine).hex() == earlier["new_checkpoint"]["root_hash"]


def test_the_verifier_imports_only_the_stdlib_cryptography_and_merkle() -> None:
    code = ("import sys, gateways.audit.verifier; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in {'gateways', 'kernel', 'aggregates', 'projections', "
            "'subsystems'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == str(["gateways", "gateways.audit", "gateways.audit.merkle",
                               "gateways.audit.verifier"])
