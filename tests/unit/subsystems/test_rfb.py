"""The RFB security handshake a remote host's console desk does (checked against a real
qemu in tests/integration/test_console_desk_qemu.py)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest

from subsystems.libvirt import rfb


def talk(server: Callable[[socket.socket], object], client: Callable[[socket.socket], object]
         ) -> tuple[object, object]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    results: dict[str, object] = {}

    def run() -> None:
        try:
            results["server"] = server(a)
        except Exception as e:
            results["server"] = e

    thread = threading.Thread(target=run)
    thread.start()
    try:
        results["client"] = client(b)
    except Exception as e:
        results["client"] = e
    thread.join(5)
    a.close()
    b.close()
    return results["server"], results["client"]


def vnc_server(password: str, *, minor: int = 8) -> Callable[[socket.socket], object]:
    def serve(sock: socket.socket) -> object:
        sock.sendall(b"RFB 003.%03d\n" % minor)
        assert sock.recv(12) == b"RFB 003.%03d\n" % minor
        if minor == 3:
            sock.sendall(struct.pack(">I", 2))
        else:
            sock.sendall(bytes([1, 2]))
            assert sock.recv(1) == b"\x02"
        challenge = bytes(range(16))
        sock.sendall(challenge)
        answer = sock.recv(16)
        ok = answer == rfb.vnc_auth_response(password, challenge)
        sock.sendall(struct.pack(">I", 0 if ok else 1))
        if not ok and minor == 8:
            sock.sendall(struct.pack(">I", 6) + b"denied")
        return ok
    return serve


@pytest.mark.parametrize("minor", [3, 7, 8])
def test_login_answers_vnc_authentication(minor: int) -> None:
    server, client = talk(vnc_server("s3cret", minor=minor), lambda s: rfb.login(s, "s3cret"))
    assert server is True and client == minor


def test_a_wrong_password_is_an_error_with_the_servers_reason() -> None:
    server, client = talk(vnc_server("s3cret"), lambda s: rfb.login(s, "wrong"))
    assert server is False
    assert isinstance(client, rfb.RfbError) and "denied" in str(client)


def test_the_response_is_des_under_the_bit_reversed_password() -> None:
    # DES is a permutation: the same key and challenge give the same answer, another key
    # another; only the first 8 characters count
    challenge = bytes(16)
    assert rfb.vnc_auth_response("abcdefgh", challenge) == \
        rfb.vnc_auth_response("abcdefghXYZ", challenge)
    assert rfb.vnc_auth_response("abcdefgh", challenge) != \
        rfb.vnc_auth_response("abcdefgi", challenge)
    assert len(rfb.vnc_auth_response("", challenge)) == 16


def test_offer_none_and_login_meet() -> None:
    """The desk's side (offer_none) and a client that would log in: security None."""
    server, client = talk(lambda s: rfb.offer_none(s), lambda s: rfb.login(s, None))
    assert server is None and client == 8


def test_what_is_not_rfb_is_refused() -> None:
    def http(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 400\r\n")
    _server, client = talk(http, lambda s: rfb.login(s, "x"))
    assert isinstance(client, rfb.RfbError)
