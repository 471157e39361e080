"""`audit export`: a range of events with its proof material, checked by the standalone
verifier with the public key alone; any change to the file is caught."""

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregates.errors import ValidationError
from gateways.audit.export import export_lines
from gateways.audit.keys import generate_keys, load_private_key
from gateways.audit.seal import Sealer
from gateways.audit.verifier import check_export, run_export

from .test_seal import app_with


def test_an_export_checks_with_the_public_key_and_any_edit_fails(tmp_path: Path) -> None:
    private, public, _ = generate_keys(tmp_path / "keys")
    key: Ed25519PrivateKey = load_private_key(private)
    app, folder = app_with(23), tmp_path / "audit"
    Sealer(app, folder, key, every=10).seal_once()
    lines = list(export_lines(app, folder, 5, 12))
    assert [json.loads(line).get("position") for line in lines[1:-1]] == list(range(5, 13))
    pem = public.read_bytes()
    assert check_export(lines, pem) == []
    exported = tmp_path / "export.jsonl"
    exported.write_text("\n".join(lines) + "\n")
    assert run_export(str(exported), str(public)) == 0

    # an event's bytes changed after the export
    event = json.loads(lines[3])
    data = bytearray(bytes.fromhex(event["leaf_bytes"]))
    data[-2] ^= 1
    forged = [*lines[:3], json.dumps({**event, "leaf_bytes": data.hex()}), *lines[4:]]
    assert any("is not the sealed one" in f for f in check_export(forged, pem))
    # an event left out, or the checkpoint's root replaced
    assert any("exactly positions" in f for f in check_export([*lines[:3], *lines[4:]], pem))
    head = json.loads(lines[0])
    head["checkpoint"]["root_hash"] = "00" * 32
    assert check_export([json.dumps(head), *lines[1:]], pem)
    # another key does not vouch for it
    _, other, _ = generate_keys(tmp_path / "other")
    assert any("signature" in f for f in check_export(lines, other.read_bytes()))


def test_exports_past_the_checkpoint_or_backwards_are_refused(tmp_path: Path) -> None:
    private, _, _ = generate_keys(tmp_path / "keys")
    app, folder = app_with(8), tmp_path / "audit"
    with pytest.raises(ValidationError, match="no checkpoints"):
        list(export_lines(app, folder, 1, 2))
    Sealer(app, folder, load_private_key(private), every=100).seal_once()
    with pytest.raises(ValidationError, match="past the latest checkpoint"):
        list(export_lines(app, folder, 1, 9))
    with pytest.raises(ValidationError, match="not after the last"):
        list(export_lines(app, folder, 5, 4))
