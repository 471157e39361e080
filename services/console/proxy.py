"""The console proxy's HTTP side: pages, WebSockets relayed to a desk, screenshots and output.

Routes (the token is the one `vm.console` answered; each is redeemed once):
- `GET /graphics?token=` and `GET /serial?token=`: the page (noVNC, or a text terminal);
- `GET /graphics/ws?token=` and `GET /serial/ws?token=`: the WebSocket the page opens;
- `GET /screenshot?token=` (image/png) and `GET /output?token=` (text/plain, the serial
  console's recent output): what the EC2 service's GetConsoleScreenshot/Output read;
- `GET /novnc/...`: noVNC as the Debian package installed it; `GET /static/...`: the pages'
  scripts; `GET /healthz`: 200, or 503 while disabled.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
from aiohttp import WSMsgType, web

from kernel.contracts.console import (
    ConsoleRedemption,
    DeskData,
    DeskError,
    DeskGrant,
    DeskRequest,
    Kind,
    desk_session,
    read_token,
    sign_desk_request,
)
from kernel.settings import Settings
from services.console.desk import ask_desk
from services.console.refusals import Refusal
from services.console.sessions import ENDING_EVENTS, Session, Sessions
from services.framework.framework import CommandRefusedError, ServiceRuntime

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
NOVNC_DIRS = (Path("/usr/share/novnc"),)  # the Debian package's; install.sh installs it
RELAY_CHUNK = 256 * 1024
_DESK_CODES = {"refused": "forbidden", "not_found": "not_found", "busy": "busy",
               "unavailable": "unavailable"}


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class ConsoleProxy:
    """Redeems links, relays consoles, ends sessions their VM's events end."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, secret: bytes) -> None:
        self.runtime, self.secret = runtime, secret
        self.sessions = Sessions(settings.console_sessions_per_user)
        self.allowed_origins = frozenset({
            origin_of(settings.console_url), f"http://{settings.api_host}:{settings.api_port}",
            *settings.console_allowed_origins})
        self.novnc = next((d for d in NOVNC_DIRS if (d / "core" / "rfb.js").is_file()), None)
        self._reports: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ the app

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/", self.index)
        for kind in ("graphics", "serial"):
            app.router.add_get(f"/{kind}", self.page)
            app.router.add_get(f"/{kind}/ws", self.websocket)
        app.router.add_get("/screenshot", self.data)
        app.router.add_get("/output", self.data)
        app.router.add_static("/static/", STATIC)
        if self.novnc is not None:
            app.router.add_static("/novnc/", self.novnc)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while enabled, 503 while an admin has the service disabled."""
        return web.json_response({"service": "console", "enabled": self.runtime.enabled,
                                  "sessions": len(self.sessions)},
                                 status=200 if self.runtime.enabled else 503)

    async def index(self, request: web.Request) -> web.Response:
        """What this is, for someone who opened the bare URL."""
        return web.json_response({"service": "console", "open": "a link from vm.console "
                                  "(POST /v1/vms/{id}/console), e.g. /graphics?token=..."})

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The console page; it opens the WebSocket with the same token."""
        kind = request.path.strip("/")
        if kind == "graphics" and self.novnc is None:
            return _error_page("noVNC is not installed on this server (the Debian package "
                               "novnc; scripts/install.sh installs it)", status=503)
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        return web.FileResponse(STATIC / f"{kind}.html", headers=headers)

    # ------------------------------------------------------------------ consoles

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Redeem the token, open the VM's console at a desk, relay until either side ends."""
        kind: Kind = "graphics" if request.path.startswith("/graphics") else "serial"
        ws = web.WebSocketResponse(protocols=("binary",), heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        session: Session | None = None
        try:
            self._check_origin(request)
            redemption = await self._redeem(request, kind)
            session = self.sessions.open(redemption.vm_id, redemption.user, kind)
            asked, grant = await self._desk(redemption, kind)
            if not isinstance(grant, DeskGrant):
                raise Refusal("unavailable", "the desk answered with no session")
            host, _, port = grant.address.rpartition(":")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host.strip("[]"), int(port)), 10)
            except (OSError, TimeoutError) as e:
                raise Refusal("unavailable",
                              f"the console's desk could not be reached ({e})") from None
            writer.write(desk_session(self.secret, asked).encode() + b"\n")
            log.info("console %s of VM %s opened for %s", kind, redemption.vm_id,
                     redemption.user)
            reason = await self._relay(ws, reader, writer, session)
            if not ws.closed:
                await ws.send_str(json.dumps({"closed": reason}))
                await ws.close(code=4000, message=reason[:120].encode())
        except Refusal as r:
            self._audit(request, r)
            if not ws.closed:
                await ws.send_str(json.dumps(r.body()))
                await ws.close(code=r.close_code, message=r.message[:120].encode())
        finally:
            if session is not None:
                self.sessions.close(session)
        return ws

    async def data(self, request: web.Request) -> web.Response:
        """A screenshot (PNG) or the recent serial output (text), for one redeemed token."""
        kind: Kind = "screenshot" if request.path == "/screenshot" else "output"
        try:
            self._check_origin(request)
            redemption = await self._redeem(request, kind)
            _request, reply = await self._desk(redemption, kind)
            if not isinstance(reply, DeskData):
                raise Refusal("unavailable", "the desk answered with no data")
        except Refusal as r:
            self._audit(request, r)
            return web.json_response(r.body(), status=r.status)
        return web.Response(body=reply.data, content_type=reply.content_type,
                            headers={"Cache-Control": "no-store"})

    def on_vm_event(self, topic: str, vm_id: UUID) -> None:
        """End the VM's sessions if the event ends its console."""
        reason = ENDING_EVENTS.get(topic)
        if reason is not None and self.sessions.end_vm(vm_id, reason):
            log.info("console sessions of VM %s ended: %s", vm_id, reason)

    # ------------------------------------------------------------------ steps

    def _audit(self, request: web.Request, refusal: Refusal) -> None:
        """Have the platform record a refusal this proxy decided (the platform's own are
        recorded already; one for want of an answer cannot be): a `console.redeem` that says
        why it is refused, which leaves the ticket as it is. In the background: the user
        reads the refusal at once."""
        if refusal.by_platform or refusal.code == "unavailable":
            return
        body = {"token": request.query.get("token", "")[:200],
                "origin": request.headers.get("Origin"), "remote": request.remote,
                "refused": refusal.message}
        task = asyncio.ensure_future(self._report(body))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report(self, body: dict[str, Any]) -> None:
        try:
            await self.runtime.command("console.redeem", body, timeout=10,
                                       idempotency_key=f"console-refused-{uuid.uuid4().hex}")
        except CommandRefusedError as e:
            if e.code not in ("invalid", "gone"):  # refused as asked: recorded
                log.warning("console: a refusal could not be recorded: %s", e)

    def _check_origin(self, request: web.Request) -> None:
        # Browsers always send Origin on a WebSocket; other clients (a VNC library) may not.
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.allowed_origins:
            raise Refusal("forbidden", "this page's origin may not open consoles here "
                                       "(setting console_allowed_origins)", field="Origin")

    async def _redeem(self, request: web.Request, kind: Kind) -> ConsoleRedemption:
        if not self.runtime.enabled:
            raise Refusal("unavailable", "the console service is disabled by an administrator")
        token = request.query.get("token", "")
        try:
            read_token(token)
        except Exception:
            raise Refusal("invalid", "this console link is not valid", field="token") from None
        body = {"token": token, "origin": request.headers.get("Origin"),
                "remote": request.remote}
        key = f"console-redeem-{uuid.uuid4().hex}"  # a retry after no answer replays it
        for attempt in range(3):
            try:
                done = await self.runtime.command("console.redeem", body, idempotency_key=key,
                                                  timeout=10)
                break
            except CommandRefusedError as e:
                if e.code != "unavailable" or attempt == 2:
                    raise Refusal.of_command(e) from None
                await asyncio.sleep(0.5)
        try:
            redemption = msgspec.convert(done.result, ConsoleRedemption, strict=False)
        except msgspec.ValidationError as e:
            raise Refusal("unavailable", f"the platform's answer was not understood: {e}") \
                from None
        if redemption.kind != kind:
            raise Refusal("invalid", f"this link opens the VM's {redemption.kind}, not its "
                                     f"{kind}; it is used now, open a new one", field="token")
        return redemption

    async def _desk(self, redemption: ConsoleRedemption,
                    kind: Kind) -> tuple[DeskRequest, DeskGrant | DeskData]:
        request = sign_desk_request(self.secret, vm_id=redemption.vm_id,
                                    host_uri=redemption.host_uri, kind=kind)
        reply = await ask_desk(self.runtime.nc, request)
        if isinstance(reply, DeskError):
            raise Refusal(_DESK_CODES.get(reply.code, "unavailable"), reply.error)
        return request, reply

    async def _relay(self, ws: web.WebSocketResponse, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, session: Session) -> str:
        async def browser_to_host() -> str:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    writer.write(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    writer.write(msg.data.encode())
                else:
                    break
                await writer.drain()
            return "you closed the console"

        async def host_to_browser() -> str:
            while data := await reader.read(RELAY_CHUNK):
                await ws.send_bytes(data)
            return "the console closed on the host (the VM stopped, or its host went away)"

        async def ended() -> str:
            await session.ended.wait()
            return session.reason

        tasks = [asyncio.create_task(c) for c in (browser_to_host(), host_to_browser(),
                                                  ended())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            try:
                reason = first.result()
            except (ConnectionError, OSError) as e:
                reason = f"the console connection broke ({e})"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return session.reason or reason


def _error_page(message: str, *, status: int) -> web.Response:
    return web.Response(text=f"<!doctype html><title>console</title><p role=alert>{message}",
                        content_type="text/html", status=status)
