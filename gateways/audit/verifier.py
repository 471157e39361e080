"""The small verifier: checks an `audit prove` proof with the public key alone.

Standalone on purpose (the stdlib, cryptography and gateways/audit/merkle.py only, no other
cloudkernel import), so an auditor can copy the two files:
  python -m gateways.audit.verifier PROOF.json --public-key KEY.pem [--trusted CHECKPOINT]
The proof is an inclusion proof (one event in a signed checkpoint) or a consistency proof (a
signed checkpoint extends an older signed one); --trusted names the checkpoint the auditor
already holds, which the consistency proof must start from.
Exit code 0 when the proof holds, 1 when it does not, 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateways.audit.merkle import verify_consistency


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root the audit path leads to (RFC 9162 2.1.3.2), None for a malformed path."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = _node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def _signature_failures(cp: dict[str, Any], public_pem: bytes,
                        name: str = "the checkpoint") -> list[str]:
    """[the reason] when the checkpoint's signature does not verify with the key, else []."""
    public = serialization.load_pem_public_key(public_pem)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    text = (f"cloudkernel-checkpoint\n{cp['tree_size']}\n{cp['root_hash']}\n"
            f"{cp['timestamp']}").encode()
    try:
        public.verify(bytes.fromhex(cp["signature"]), text)
    except InvalidSignature:
        return [f"{name}'s signature does not verify with this public key"]
    return []


def check_consistency(proof: dict[str, Any], public_pem: bytes,
                      trusted: dict[str, Any] | None = None) -> list[str]:
    """The reasons a consistency proof fails (empty when the new checkpoint extends the old
    one, and the old one is `trusted` when given). Raises ValueError on malformed input."""
    old, new = proof["old_checkpoint"], proof["new_checkpoint"]
    m, n = int(old["tree_size"]), int(new["tree_size"])
    failures = [*_signature_failures(old, public_pem, "the old checkpoint"),
                *_signature_failures(new, public_pem, "the new checkpoint")]
    if trusted is not None and (int(trusted["tree_size"]), trusted["root_hash"]) != (
            m, old["root_hash"]):
        failures.append(f"the proof starts from tree_size={m} root {old['root_hash']}, not "
                        f"the checkpoint you hold (tree_size={trusted['tree_size']} root "
                        f"{trusted['root_hash']})")
    if m > n:
        failures.append(f"the old checkpoint (tree_size={m}) is larger than the new one "
                        f"(tree_size={n})")
    elif not verify_consistency(m, n, bytes.fromhex(old["root_hash"]),
                                bytes.fromhex(new["root_hash"]),
                                [bytes.fromhex(h) for h in proof["consistency_path"]]):
        failures.append(f"the consistency path does not prove that tree_size={n} extends "
                        f"tree_size={m}: the log was not only appended to")
    return failures


def held_checkpoint(data: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint an auditor holds, from a checkpoint (a checkpoints.jsonl line or NATS
    message) or from an earlier proof (its newest checkpoint)."""
    for key in ("new_checkpoint", "checkpoint"):
        if key in data:
            return dict(data[key])
    if "tree_size" in data and "root_hash" in data:
        return data
    raise ValueError("the trusted file holds no checkpoint (tree_size and root_hash)")


def check_proof(proof: dict[str, Any], public_pem: bytes) -> list[str]:
    """The reasons the proof fails; empty when it holds. Raises ValueError on malformed input."""
    cp = proof["checkpoint"]
    failures = _signature_failures(cp, public_pem)
    data = bytes.fromhex(proof["leaf_bytes"])
    leaf = hashlib.sha256(b"\x00" + data).digest()
    if leaf.hex() != proof.get("leaf_hash", leaf.hex()):
        failures.append("the leaf hash is not the hash of the leaf bytes")
    header = json.loads(data.split(b"\n", 1)[0])
    if header.get("position") != proof["position"]:
        failures.append(f"the leaf is the event at position {header.get('position')}, "
                        f"not {proof['position']}")
    if proof["tree_size"] != cp["tree_size"]:
        failures.append("the proof's tree size is not the checkpoint's")
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    root = _root(int(proof["leaf_index"]), int(cp["tree_size"]), leaf, path)
    if root is None or root.hex() != cp["root_hash"]:
        failures.append("the audit path does not lead to the checkpoint's root")
    return failures


def _tree_root(hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return _node(_tree_root(hashes[:k]), _tree_root(hashes[k:]))


def check_export(lines: Sequence[str], public_pem: bytes) -> list[str]:
    """The reasons an `audit export` file fails; empty when every event in it is proven by
    its signed checkpoint. Raises ValueError on malformed input."""
    header, *events, tail = (json.loads(line) for line in lines if line.strip())
    cp = header["checkpoint"]
    failures = _signature_failures(cp, public_pem)
    hashes = [bytes.fromhex(h) for h in tail["leaf_hashes"]]
    if len(hashes) != cp["tree_size"] or _tree_root(hashes).hex() != cp["root_hash"]:
        failures.append("the leaf hashes do not make the checkpoint's root")
    positions = []
    for event in events:
        data = bytes.fromhex(event["leaf_bytes"])
        index = int(event["leaf_index"])
        if not 0 <= index < len(hashes) or \
                hashlib.sha256(b"\x00" + data).digest() != hashes[index]:
            failures.append(f"the event at position {event['position']} is not the sealed one")
        elif json.loads(data.split(b"\n", 1)[0]).get("position") != event["position"]:
            failures.append(f"the leaf of position {event['position']} names another position")
        positions.append(event["position"])
    if positions != list(range(header["from"], header["to"] + 1)):
        failures.append(f"the export does not hold exactly positions {header['from']}.."
                        f"{header['to']}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Check a proof file; print OK or the failures."""
    parser = argparse.ArgumentParser(prog="verifier", description=__doc__)
    parser.add_argument("proof", help="the JSON printed by `cloudkernel audit prove`, or "
                        "(with --export) a file written by `cloudkernel audit export`")
    parser.add_argument("--public-key", required=True, help="the PEM public key (signing.pub)")
    parser.add_argument("--export", action="store_true", help="the file is an export")
    parser.add_argument("--trusted", default=None, metavar="CHECKPOINT",
                        help="a consistency proof must start from this checkpoint, which you "
                        "hold (a checkpoints.jsonl line, or an earlier proof file)")
    args = parser.parse_args(argv)
    if args.export:
        return run_export(args.proof, args.public_key)
    return run(args.proof, args.public_key, args.trusted)


def run_export(export_path: str, key_path: str) -> int:
    """Check the export at `export_path`; print and return the exit code."""
    def check(key: bytes) -> tuple[list[str], str]:
        with open(export_path, encoding="utf-8") as f:
            failures = check_export(f.read().splitlines(), key)
        return failures, "OK: every event of the export is in the signed checkpoint it names"

    return _report("export", key_path, check)


def run(proof_path: str, key_path: str, trusted_path: str | None = None) -> int:
    """Check the proof at `proof_path` with the key at `key_path` (a consistency proof against
    the checkpoint at `trusted_path` too, when given); print and return the exit code."""
    def check(key: bytes) -> tuple[list[str], str]:
        with open(proof_path, "rb") as f:
            proof = json.load(f)
        trusted = None
        if trusted_path is not None:
            with open(trusted_path, "rb") as f:
                trusted = held_checkpoint(json.load(f))
        if "consistency_path" in proof:
            old, new = proof["old_checkpoint"], proof["new_checkpoint"]
            return check_consistency(proof, key, trusted), (
                f"OK: the signed checkpoint tree_size={new['tree_size']} root "
                f"{new['root_hash']} extends tree_size={old['tree_size']} root "
                f"{old['root_hash']}")
        if trusted is not None:
            raise ValueError("--trusted is for consistency proofs, not inclusion proofs")
        return check_proof(proof, key), (
            f"OK: the event at position {proof['position']} is leaf {proof['leaf_index']} of "
            f"the signed checkpoint tree_size={proof['tree_size']} root "
            f"{proof['checkpoint']['root_hash']}")

    return _report("proof", key_path, check)


def _report(what: str, key_path: str,
            check: Callable[[bytes], tuple[list[str], str]]) -> int:
    """Run `check` with the key's bytes; print OK or each failure; 0, 1, or 2 (unreadable)."""
    try:
        with open(key_path, "rb") as f:
            failures, ok = check(f.read())
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"verifier: cannot check the {what}: {e!r}", file=sys.stderr)
        return 2
    for reason in failures:
        print(f"FAIL: {reason}")
    if failures:
        return 1
    print(ok)
    return 0

if __name__ == "__main__":
    sys.exit(main())
