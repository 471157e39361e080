"""The console desk's refusals, grants and sessions, with a fake driver and no NATS (the
real thing: tests/integration/test_console_desk_qemu.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec
import pytest

from gateways.stream.console_desk import ConsoleDesk, NonceCache
from kernel.contracts.console import (
    DESK_REQUEST_SECONDS,
    OUTPUT_BYTES,
    DeskData,
    DeskError,
    DeskGrant,
    DeskRefusedError,
    DeskReply,
    DeskRequest,
    Kind,
    desk_session,
    sign_desk_request,
)

SECRET = b"0123456789abcdef0123456789abcdef"
VM = uuid4()
T = TypeVar("T")


class FakeDriver:
    """One running VM whose consoles echo in upper case; `hang` makes every call slow."""

    secret = SECRET

    def __init__(self) -> None:
        self.hang = 0.0
        self.opened: list[socket.socket] = []

    def check(self, host_uri: str, vm_id: UUID, *, running: bool = True) -> None:
        time.sleep(self.hang)
        if vm_id != VM:
            raise DeskRefusedError(f"no VM {vm_id}", code="not_found")

    def graphics(self, host_uri: str, vm_id: UUID) -> socket.socket:
        self.check(host_uri, vm_id)
        ours, theirs = socket.socketpair()
        self.opened.append(ours)
        return theirs

    serial = graphics

    def screenshot(self, host_uri: str, vm_id: UUID) -> bytes:
        self.check(host_uri, vm_id)
        return b"\x89PNG..."

    def output(self, host_uri: str, vm_id: UUID, limit: int) -> bytes:
        self.check(host_uri, vm_id)
        return b"x" * limit


def request(kind: Kind = "output", **kw: object) -> bytes:
    made: DeskRequest = sign_desk_request(kw.pop("secret", SECRET),  # type: ignore[arg-type]
                                          vm_id=kw.pop("vm_id", VM),  # type: ignore[arg-type]
                                          host_uri="qemu:///system", kind=kind,
                                          now=kw.pop("now", None))  # type: ignore[arg-type]
    return msgspec.json.encode(made)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_refusals() -> None:
    async def go() -> list[DeskReply]:
        desk = ConsoleDesk(FakeDriver(), SECRET, [])
        once = request()
        return [await desk.answer(request(secret=b"another-secret-another-secret!")),
                await desk.answer(request(now=time.time() - 2 * DESK_REQUEST_SECONDS)),
                await desk.answer(b"not json"),
                await desk.answer(request(vm_id=uuid4())),
                await desk.answer(once), await desk.answer(once)]

    forged, expired, garbage, unknown, first, replayed = run(go())
    for reply, code in ((forged, "refused"), (expired, "refused"), (garbage, "refused"),
                        (unknown, "not_found"), (replayed, "refused")):
        assert isinstance(reply, DeskError) and reply.code == code, reply
    assert isinstance(first, DeskData) and len(first.data) == OUTPUT_BYTES


def test_a_driver_that_hangs_is_answered_in_time() -> None:
    async def go() -> DeskReply:
        driver = FakeDriver()
        driver.hang = 2.0
        desk = ConsoleDesk(driver, SECRET, [], call_timeout=0.2)
        return await desk.answer(request("graphics"))

    started = time.monotonic()
    reply = run(go())
    assert isinstance(reply, DeskError) and reply.code == "unavailable"
    assert time.monotonic() - started < 1.5


def test_a_session_relays_both_ways_once() -> None:
    async def go() -> None:
        driver = FakeDriver()
        desk = ConsoleDesk(driver, SECRET, [])
        server = await desk.open_listener()
        asked = request("serial")
        grant = await desk.answer(asked)
        assert isinstance(grant, DeskGrant) and grant.session == ""  # never on the wire
        session = desk_session(SECRET, msgspec.json.decode(asked, type=DeskRequest))
        host, _, port = grant.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(session.encode() + b"\nhello")
        await writer.drain()
        [console] = driver.opened
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, console.recv, 100) == b"hello"
        await loop.run_in_executor(None, console.sendall, b"HELLO")
        assert await reader.readexactly(5) == b"HELLO"
        console.close()  # the console ends: the client's connection ends too
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # the session is used up
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(session.encode() + b"\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        server.close()

    run(go())


def test_the_nonce_cache_is_bounded_and_forgets_expired_nonces() -> None:
    cache = NonceCache(size=3)
    now = 1000.0
    assert cache.add("a", now + 30, now) and not cache.add("a", now + 30, now)
    for nonce in "bcd":
        assert cache.add(nonce, now + 30, now)
    assert cache.add("a", now + 30, now)  # the oldest went first
    later = now + 30 + DESK_REQUEST_SECONDS + 1
    assert cache.add("z", later + 30, later)
    assert len(cache._seen) == 1


@pytest.mark.parametrize("kind", ["screenshot"])
def test_reads_answer_data(kind: Kind) -> None:
    reply = run(ConsoleDesk(FakeDriver(), SECRET, []).answer(request(kind)))
    assert isinstance(reply, DeskData) and reply.content_type == "image/png"
