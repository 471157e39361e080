"""A small RFB (VNC) client for the console tests and bench: the handshake with security type
None, ClientInit (shared), ServerInit, raw framebuffer updates; over a TCP stream, or over the
console proxy's WebSocket (`WsStream`), or through a local TCP port bridged to the WebSocket
(`bridge`, for a VNC library that only opens TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp


class Stream(Protocol):
    """What the client reads and writes through."""

    async def readexactly(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class TcpStream:
    """A stream over an asyncio TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class WsStream:
    """A stream over the console proxy's WebSocket (binary messages, in order)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buffer = bytearray()
        self.pending: list[bytes] = []
        self.closed_with: str | None = None

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.buffer += msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.closed_with = msg.data
            else:
                raise EOFError(f"the WebSocket closed ({self.ws.close_code}, "
                               f"{self.closed_with or msg.extra})")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def write(self, data: bytes) -> None:
        self.pending.append(data)

    async def drain(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            await self.ws.send_bytes(data)


@dataclass
class ServerInit:
    """What the server said it is."""

    width: int
    height: int
    bits_per_pixel: int
    name: str


async def handshake(stream: Stream) -> ServerInit:
    """RFB 3.8 with security None, a shared ClientInit; the ServerInit."""
    version = await stream.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise ValueError(f"not an RFB server: {version!r}")
    stream.write(b"RFB 003.008\n")
    await stream.drain()
    count = (await stream.readexactly(1))[0]
    if count == 0:
        reason = await stream.readexactly(struct.unpack(">I", await stream.readexactly(4))[0])
        raise ValueError(f"the server refused: {reason.decode(errors='replace')}")
    types = set(await stream.readexactly(count))
    if 1 not in types:
        raise ValueError(f"the server asks for authentication (security types {types})")
    stream.write(b"\x01")
    await stream.drain()
    if struct.unpack(">I", await stream.readexactly(4))[0] != 0:
        raise ValueError("security None failed")
    stream.write(b"\x01")  # shared: other clients stay connected
    await stream.drain()
    width, height = struct.unpack(">HH", await stream.readexactly(4))
    pixel_format = await stream.readexactly(16)
    name = await stream.readexactly(struct.unpack(">I", await stream.readexactly(4))[0])
    stream.write(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
    await stream.drain()
    return ServerInit(width, height, pixel_format[0], name.decode(errors="replace"))


async def request_update(stream: Stream, init: ServerInit, *, incremental: bool = False) -> None:
    """FramebufferUpdateRequest for the whole screen."""
    stream.write(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, init.width, init.height))
    await stream.drain()


async def read_update(stream: Stream, init: ServerInit) -> tuple[int, bytes]:
    """The next FramebufferUpdate's byte count and its first rectangle's pixels (other server
    messages in between are read and dropped)."""
    while True:
        kind = (await stream.readexactly(1))[0]
        if kind == 0:
            break
        if kind == 2:  # bell
            continue
        if kind == 3:  # server cut text
            await stream.readexactly(3)
            await stream.readexactly(struct.unpack(">I", await stream.readexactly(4))[0])
            continue
        if kind == 1:  # colour map
            await stream.readexactly(1)
            _first, n = struct.unpack(">HH", await stream.readexactly(4))
            await stream.readexactly(6 * n)
            continue
        raise ValueError(f"unexpected server message type {kind}")
    await stream.readexactly(1)
    (rects,) = struct.unpack(">H", await stream.readexactly(2))
    total, first = 4, b""
    for i in range(rects):
        _x, _y, w, h, encoding = struct.unpack(">HHHHi", await stream.readexactly(12))
        if encoding != 0:
            raise ValueError(f"unexpected encoding {encoding}")
        pixels = await stream.readexactly(w * h * init.bits_per_pixel // 8)
        total += 12 + len(pixels)
        if i == 0:
            first = pixels
    return total, first


@contextlib.asynccontextmanager
async def bridge(ws_url: str, **ws_options: Any) -> AsyncIterator[tuple[str, int]]:
    """A local TCP port whose one connection is relayed to a WebSocket at `ws_url` (for a VNC
    library that speaks TCP only); yields (host, port)."""
    session = aiohttp.ClientSession()
    done: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with session.ws_connect(ws_url, **ws_options) as ws:
            async def up() -> None:
                while data := await reader.read(65536):
                    await ws.send_bytes(data)

            async def down() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        writer.write(msg.data)
                        await writer.drain()
            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            done.extend(tasks)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in done:
            task.cancel()
        await asyncio.gather(*done, return_exceptions=True)
        await session.close()
