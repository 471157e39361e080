"""A webhook receiver on loopback for tests: scripted failures, every request kept and verified."""

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateways.webhooks.signing import verify_signature


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    delivery_id: str
    webhook_id: str
    position: int
    subject: str
    body: dict[str, Any]
    signed: bool
    answered: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# (path, log position, nth attempt of that delivery) -> HTTP status to answer
Script = Callable[[str, int, int], int]


@dataclass
class Receiver:
    """Answers POSTs at any path as `script` says, after checking each signature."""

    secrets: dict[str, str]  # path -> the secret of the webhook posting there
    script: Script = lambda path, position, nth: 200
    delay: dict[str, float] = field(default_factory=dict)  # path -> seconds before answering
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        path = request.path
        h = request.headers
        signed = verify_signature(self.secrets.get(path, ""), h["Cloudkernel-Timestamp"], raw,
                                  h["Cloudkernel-Signature"])
        delivery, position = h["Cloudkernel-Delivery-Id"], int(h["Cloudkernel-Position"])
        nth = 1 + sum(1 for r in self.received if r.delivery_id == delivery)
        status = self.script(path, position, nth) if signed else 401
        if self.delay.get(path):
            await asyncio.sleep(self.delay[path])
        self.received.append(Received(
            path, delivery, h["Cloudkernel-Webhook-Id"], position,
            h["Cloudkernel-Subject"], json.loads(raw), signed, status))
        return web.Response(status=status, text="" if status < 300 else "not now")

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def delivered(self, path: str) -> list[Received]:
        return [r for r in self.at(path) if 200 <= r.answered < 300]
