"""ImportKeyPair's public keys: an OpenSSH public key line read and checked, and the
fingerprint EC2 shows for it.

`PublicKeyMaterial` is the key line (`<type> <base64 blob> [comment]`), base64-encoded as the
Query API carries blobs (a line sent as is is taken too). The blob is read in SSH's wire
format (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4): its type string must be the line's, each
field whole and nothing after the last; the key itself is then loaded by `cryptography`,
which checks that an ECDSA point lies on its curve. Accepted: ssh-rsa (1024 to 16384 bits),
ssh-ed25519 and ecdsa-sha2-nistp256/384/521; anything else is `InvalidKey.Format`.

Fingerprints as EC2 shows imported keys: RSA, the MD5 of the DER SubjectPublicKeyInfo, in
colon-separated hex (`openssl rsa -pubout -outform DER | openssl md5 -c`); ed25519, the
base64 SHA-256 of the blob (OpenSSH's). EC2 itself refuses ECDSA keys; they are taken here
(the brief asked for them), shown with keyType `ecdsa` and OpenSSH's SHA-256 fingerprint.
"""

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.ec2.protocol import Ec2Error

MAX_MATERIAL = 16 * 1024
RSA_BITS = (1024, 16384)
_ECDSA = {"ecdsa-sha2-nistp256": ("nistp256", 256), "ecdsa-sha2-nistp384": ("nistp384", 384),
          "ecdsa-sha2-nistp521": ("nistp521", 521)}
KEY_TYPES = {"ssh-rsa": "rsa", "ssh-ed25519": "ed25519",
             **{name: "ecdsa" for name in _ECDSA}}


@dataclass(frozen=True)
class PublicKey:
    """A checked public key: EC2's key type, its OpenSSH line (no comment), fingerprint."""

    key_type: str
    openssh: str
    fingerprint: str


def _bad(why: str) -> Ec2Error:
    return Ec2Error("InvalidKey.Format", f"Key is not in valid OpenSSH public key format: {why}")


def _fields(blob: bytes) -> list[bytes]:
    """The length-prefixed strings of a wire-format blob (all of it, nothing left over)."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise _bad("a field's length is cut short")
        (size,) = struct.unpack(">I", blob[at:at + 4])
        at += 4
        if at + size > len(blob):
            raise _bad("a field is longer than the key")
        out.append(blob[at:at + size])
        at += size
    return out


def _line(material: str) -> str:
    text = material.strip()
    if text.startswith(tuple(KEY_TYPES)):
        return text  # sent as is rather than base64-encoded
    try:
        return base64.b64decode(text, validate=True).decode("ascii").strip()
    except (binascii.Error, ValueError):
        raise _bad("PublicKeyMaterial is not the base64 of a public key line") from None


def _check_wire(kind: str, fields: list[bytes]) -> None:
    if not fields or fields[0] != kind.encode():
        raise _bad(f"the key's own type is not {kind}")
    if kind == "ssh-rsa":
        if len(fields) != 3:
            raise _bad("an ssh-rsa key has an exponent and a modulus")
    elif kind == "ssh-ed25519":
        if len(fields) != 2 or len(fields[1]) != 32:
            raise _bad("an ssh-ed25519 key is 32 bytes")
    elif len(fields) != 3 or fields[1] != _ECDSA[kind][0].encode():
        raise _bad(f"an {kind} key names its curve {_ECDSA[kind][0]} and a point")


def read_public_key(material: str) -> PublicKey:
    """The key PublicKeyMaterial holds; InvalidKey.Format if it is none of those accepted."""
    if len(material) > MAX_MATERIAL:
        raise _bad(f"longer than {MAX_MATERIAL} characters")
    parts = _line(material).split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise _bad(f"expected one of {', '.join(KEY_TYPES)} followed by the key")
    kind = parts[0]
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the key is not base64") from None
    _check_wire(kind, _fields(blob))
    openssh = f"{kind} {parts[1]}"
    try:
        key = serialization.load_ssh_public_key(openssh.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise _bad(str(e)[:200]) from None
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_BITS[0] <= key.key_size <= RSA_BITS[1]:
            raise _bad(f"an RSA key of {key.key_size} bits (from {RSA_BITS[0]} to "
                       f"{RSA_BITS[1]} are taken)")
        der = key.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
        fingerprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    elif isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        fingerprint = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    else:
        raise _bad(f"{kind} keys are not taken")
    return PublicKey(KEY_TYPES[kind], openssh, fingerprint)
