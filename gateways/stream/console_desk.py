"""The console desk beside a hypervisor worker: signed requests on NATS, sessions over TCP.

The console service holds no libvirt connection (`kernel.contracts.console` tells the whole
story). Each hypervisor worker with a console secret runs a `ConsoleDesk` next to its step
loop:

- it answers `DeskRequest`s on `DESK_SUBJECT`, in the queue group `DESK_QUEUE`, so one of
  the workers answers each (any may: every worker reaches every host by its URI). A request
  must be signed under the console secret and unexpired, and its nonce unseen here;
- graphics and serial: the desk opens the console at once (through the driver,
  `subsystems.libvirt.console_desk`), so that a VM that is gone or a serial console that is
  in use is answered as a `DeskError`, and answers a `DeskGrant`: its TCP address; the
  session, good for `DESK_CONNECT_SECONDS`, is derived from the request's nonce under the
  secret (`desk_session`), never sent. The console service connects, sends the session and a
  newline, and from then on the desk relays bytes both ways until
  either side closes; closing one closes the other, which ends the libvirt stream or fd. An
  opened console that is not collected in time is closed;
- screenshot and output: a `DeskData` (a PNG; the last `OUTPUT_BYTES` of serial output);
- every libvirt call runs in a thread of the desk's own pool, and is given up on after
  `call_timeout` seconds (10: less than the console service's request timeout, 15, so that
  it hears why): a host that does not answer is a DeskError, never a silent request. A
  reply that would not fit in the server's `max_payload` is a DeskError too.

Replays: each worker remembers the nonces it saw until their request expires (bounded). With
several workers a replayed request may reach another one; the request still expires within
`DESK_REQUEST_SECONDS`, and only a holder of the secret can make one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from aggregates.errors import ValidationError
from kernel.contracts.connection import connect
from kernel.contracts.console import (
    DESK_CONNECT_SECONDS,
    DESK_QUEUE,
    DESK_REQUEST_SECONDS,
    DESK_SUBJECT,
    OUTPUT_BYTES,
    DeskData,
    DeskError,
    DeskGrant,
    DeskListen,
    DeskRefusedError,
    DeskReply,
    DeskRequest,
    check_desk_request,
    desk_session,
)

__all__ = ["ConsoleDesk", "DeskDriver", "NonceCache", "desk_for"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_decode_request = msgspec.json.Decoder(DeskRequest).decode
_encode = msgspec.json.Encoder().encode
_SESSION_LINE_SECONDS = 5.0
_MAX_SESSION_LINE = 256
_PAYLOAD_MARGIN = 1024  # NATS headers and framing besides the reply's bytes


class DeskDriver(Protocol):
    """What the desk needs of the hypervisor's driver (`LibvirtDesk`)."""

    secret: bytes

    def check(self, host_uri: str, vm_id: UUID, *, running: bool = True) -> None:
        """Raise DeskRefusedError unless the VM exists on the host (and runs)."""

    def graphics(self, host_uri: str, vm_id: UUID) -> socket.socket:
        """A socket to the VM's VNC server, offering security None."""

    def serial(self, host_uri: str, vm_id: UUID) -> socket.socket:
        """A socket carrying the VM's serial console."""

    def screenshot(self, host_uri: str, vm_id: UUID) -> bytes:
        """A PNG of the VM's screen."""

    def output(self, host_uri: str, vm_id: UUID, limit: int) -> bytes:
        """The last `limit` bytes of the VM's serial output."""


class NonceCache:
    """The nonces of requests seen, each kept until its request expires; at most `size`
    (the oldest go first)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, expires_at: float, now: float | None = None) -> bool:
        """Remember `nonce`; False when it was seen already."""
        now = time.time() if now is None else now
        while self._seen and next(iter(self._seen.values())) < now - DESK_REQUEST_SECONDS:
            self._seen.popitem(last=False)  # oldest first; kept a little past their expiry
        if nonce in self._seen:
            return False
        self._seen[nonce] = expires_at
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


@dataclass
class _Pending:
    """An opened console waiting for the console service to connect."""

    sock: socket.socket
    expires_at: float
    timer: asyncio.TimerHandle


class ConsoleDesk:
    """Serves one worker's desk until stopped (see the module docstring)."""

    def __init__(self, driver: DeskDriver, secret: bytes, servers: Sequence[str], *,
                 listen: DeskListen | None = None, call_timeout: float = 10.0,
                 concurrency: int = 16) -> None:
        """Configure; nothing listens or connects before `run`."""
        self.driver, self.secret, self.servers = driver, secret, list(servers)
        self.listen = listen or DeskListen()
        self.call_timeout = call_timeout
        self.ready = asyncio.Event()
        self.address = ""  # host:port given out in grants, once listening
        self.nonces = NonceCache()
        self.stats = {"requests": 0, "refused": 0, "sessions": 0}
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="console-desk")
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_payload = 1024 * 1024

    async def run(self, stop: asyncio.Event) -> None:
        """Listen and answer until `stop` is set; then close every session."""
        server = await self.open_listener()
        nc: Client | None = None
        try:
            nc = await connect(self.servers, name="cloudkernel-console-desk")
            self._max_payload = nc.max_payload or self._max_payload
            await nc.subscribe(DESK_SUBJECT, queue=DESK_QUEUE, cb=self._on_request)
            await nc.flush()
            log.info("console desk answers %s; sessions on %s", DESK_SUBJECT, self.address)
            self.ready.set()
            await stop.wait()
        finally:
            server.close()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=5)
            for session in list(self._pending):
                self._drop(session)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def open_listener(self) -> asyncio.Server:
        """Listen for the console service's connections (what `run` does first)."""
        server = await asyncio.start_server(self._on_connection, self.listen.host,
                                            self.listen.port)
        self.address = _address(self.listen, server.sockets[0].getsockname()[1])
        return server

    # ----------------------------------------------------------------- requests

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another: a slow host must not
        # hold up the others
        self._spawn(self._respond(msg))

    async def _respond(self, msg: Msg) -> None:
        reply = await self.answer(msg.data)
        data = _encode(reply)
        if len(data) > self._max_payload - _PAYLOAD_MARGIN:
            data = _encode(DeskError(code="unavailable", error=(
                f"the reply ({len(data)} bytes) exceeds the NATS server's max_payload "
                f"({self._max_payload})")))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(data)

    async def answer(self, data: bytes) -> DeskReply:
        """The reply to one request's bytes."""
        self.stats["requests"] += 1
        reply = await self._answer(data)
        if isinstance(reply, DeskError):
            self.stats["refused"] += 1
        return reply

    async def _answer(self, data: bytes) -> DeskReply:
        try:
            request = _decode_request(data)
        except msgspec.DecodeError as e:
            return DeskError(code="refused", error=f"desk request: malformed: {e}")
        try:
            check_desk_request(self.secret, request)
        except ValidationError as e:
            return DeskError(code="refused", error=str(e))
        if not self.nonces.add(request.nonce, request.expires_at):
            return DeskError(code="refused", error="desk request: nonce already used")
        uri, vm_id = request.host_uri, request.vm_id
        try:
            if request.kind == "screenshot":
                png = await self._call(self.driver.screenshot, uri, vm_id)
                return DeskData(content_type="image/png", data=png)
            if request.kind == "output":
                text = await self._call(self.driver.output, uri, vm_id, OUTPUT_BYTES)
                return DeskData(content_type="text/plain", data=text)
            opener = self.driver.graphics if request.kind == "graphics" else self.driver.serial
            sock = await self._call(opener, uri, vm_id)
            return self._grant(sock, desk_session(self.secret, request))
        except DeskRefusedError as e:
            return DeskError(code=e.code, error=str(e))
        except TimeoutError:
            return DeskError(code="unavailable", error=(
                f"host {uri} did not answer within {self.call_timeout:g}s"))
        except Exception as e:
            log.exception("console desk: %s of VM %s on %s failed", request.kind, vm_id, uri)
            return DeskError(code="unavailable", error=f"{type(e).__name__}: {e}")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the desk's pool, given up after `call_timeout` (an opened socket
        that comes later is closed)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.call_timeout)
        except TimeoutError:
            future.add_done_callback(_close_late)
            raise

    def _grant(self, sock: socket.socket, session: str) -> DeskGrant:
        self._drop(session)  # a replayed request (to this desk): the first one's is closed
        expires_at = time.time() + DESK_CONNECT_SECONDS
        timer = asyncio.get_running_loop().call_later(DESK_CONNECT_SECONDS, self._drop, session)
        self._pending[session] = _Pending(sock, expires_at, timer)
        return DeskGrant(address=self.address, expires_at=expires_at)

    def _drop(self, session: str) -> None:
        """Close an opened console nobody collected."""
        pending = self._pending.pop(session, None)
        if pending is not None:
            pending.timer.cancel()
            pending.sock.close()

    # ----------------------------------------------------------------- sessions

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), _SESSION_LINE_SECONDS)
            except (TimeoutError, OSError, ValueError):
                return
            session = line[:_MAX_SESSION_LINE].strip().decode("ascii", "replace")
            pending = self._pending.pop(session, None) if line.endswith(b"\n") else None
            if pending is None:
                return  # unknown, used or expired: say nothing that would help a guess
            pending.timer.cancel()
            if time.time() > pending.expires_at:
                pending.sock.close()
                return
            self.stats["sessions"] += 1
            await _relay(reader, writer, pending.sock)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 sock: socket.socket) -> None:
    """Bytes both ways between the client and the console until either side ends."""
    sock.setblocking(False)
    try:
        target_reader, target_writer = await asyncio.open_connection(sock=sock)
    except OSError:
        sock.close()
        return
    pumps = {asyncio.ensure_future(_pump(reader, target_writer)),
             asyncio.ensure_future(_pump(target_reader, writer))}
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        target_writer.close()
        with contextlib.suppress(Exception):
            await target_writer.wait_closed()


async def _pump(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            target.write(data)
            await target.drain()


def _close_late(future: Any) -> None:
    if not future.cancelled() and future.exception() is None:
        result = future.result()
        if isinstance(result, socket.socket):
            result.close()


def _address(listen: DeskListen, port: int) -> str:
    host = listen.advertise or listen.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def desk_for(subsystem: object, servers: Sequence[str]) -> ConsoleDesk | None:
    """The desk beside a worker of `subsystem`: for a plugin with a console desk driver (the
    hypervisor with a console secret), else None."""
    make = getattr(subsystem, "console_desk", None)
    driver = make() if make is not None else None
    if driver is None:
        return None
    listen = getattr(subsystem, "desk_listen", None)
    return ConsoleDesk(driver, driver.secret, servers,
                       listen=listen if isinstance(listen, DeskListen) else None)
