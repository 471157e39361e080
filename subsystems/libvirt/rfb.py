"""The security handshake of RFB (VNC), for a graphics console reached over TCP.

Locally, libvirt hands the console desk a socket its qemu already authenticated
(`openGraphicsFD` with SKIPAUTH), and the VNC server offers the security type None. A remote
host's (qemu+ssh, qemu+tls) cannot pass a file descriptor, so the desk connects to the
graphics port itself and answers "VNC authentication" (type 2) with the VM's derived password:
DES-ECB of the server's 16-byte challenge, keyed by the password with each byte's bits
reversed (RFC 6143, 7.2.2; the DES comes from `cryptography`, as single-key TripleDES). To
the console service the connection must look like a local one, so the desk then plays the
server's part of the handshake with security None (`offer_none`), and relays from there on
(the client's ClientInit onwards is the same for both).
"""

from __future__ import annotations

import socket
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

__all__ = ["RfbError", "login", "offer_none", "vnc_auth_response"]

_NONE, _VNC_AUTH = 1, 2


class RfbError(OSError):
    """The VNC server refused the handshake, or spoke something else than RFB."""


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC authentication challenge: DES of it under the bit-reversed
    password (at most 8 characters, zero-padded)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K1=K2=K3: DES
    return encryptor.update(challenge) + encryptor.finalize()


def login(sock: socket.socket, password: str | None) -> int:
    """Do the client's part of the handshake up to (not including) ClientInit, with security
    None if offered, else VNC authentication; return the RFB minor version agreed (3, 7, 8)."""
    minor = _read_version(sock)
    minor = 8 if minor >= 8 else 7 if minor == 7 else 3
    sock.sendall(b"RFB 003.%03d\n" % minor)
    if minor == 3:
        (kind,) = struct.unpack(">I", _read(sock, 4))
        if kind == 0:
            raise RfbError(f"VNC server refused: {_reason(sock)}")
        offered = [kind]
    else:
        count = _read(sock, 1)[0]
        if count == 0:
            raise RfbError(f"VNC server refused: {_reason(sock)}")
        offered = list(_read(sock, count))
    if _NONE in offered:
        kind = _NONE
    elif _VNC_AUTH in offered and password is not None:
        kind = _VNC_AUTH
    else:
        raise RfbError(f"VNC server offers security types {offered}; None or VNC "
                       "authentication (with a password) needed")
    if minor != 3:
        sock.sendall(bytes([kind]))
    if kind == _VNC_AUTH:
        assert password is not None
        sock.sendall(vnc_auth_response(password, _read(sock, 16)))
    if kind == _VNC_AUTH or minor == 8:
        (result,) = struct.unpack(">I", _read(sock, 4))
        if result != 0:
            reason = _reason(sock) if minor == 8 else "authentication failed"
            raise RfbError(f"VNC server refused the login: {reason}")
    return minor


def offer_none(sock: socket.socket) -> None:
    """Do the server's part of the handshake with the client on `sock`, offering security
    None only, up to (not including) its ClientInit."""
    sock.sendall(b"RFB 003.008\n")
    minor = _read_version(sock)
    if minor == 3:
        sock.sendall(struct.pack(">I", _NONE))
        return
    sock.sendall(bytes([1, _NONE]))
    if _read(sock, 1)[0] != _NONE:
        raise RfbError("the client chose a security type that was not offered")
    if minor >= 8:
        sock.sendall(struct.pack(">I", 0))


def _read_version(sock: socket.socket) -> int:
    version = _read(sock, 12)
    if not (version.startswith(b"RFB 003.") and version.endswith(b"\n")
            and version[8:11].isdigit()):
        raise RfbError(f"not an RFB peer (it sent {version!r})")
    return int(version[8:11])


def _reason(sock: socket.socket) -> str:
    (length,) = struct.unpack(">I", _read(sock, 4))
    return _read(sock, min(length, 4096)).decode(errors="replace")


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RfbError("the VNC peer closed the connection during the handshake")
        data += chunk
    return data
