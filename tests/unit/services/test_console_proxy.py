"""The console proxy's HTTP and WebSocket side with a fake runtime (the platform's answers to
`console.redeem`) and a fake desk (a NATS stand-in answering with a session at a local TCP
echo server): refusals in words, Origin, the per-user limit, the relay both ways, and the end
of a session when its VM's events say so."""

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from kernel.contracts.console import (
    DeskData,
    DeskError,
    DeskGrant,
    DeskRequest,
    check_desk_request,
    desk_session,
    make_token,
)
from kernel.settings import Settings
from services.console.proxy import ConsoleProxy
from services.framework.framework import CommandRefusedError

SECRET = b"s" * 32
VM = uuid4()
OWN = "http://127.0.0.1:8483"


@dataclass
class Result:
    result: Any


@dataclass
class FakeNats:
    """The desk's side of NATS: checks the signature, answers what `reply` says."""

    reply: Any = None
    requests: list[DeskRequest] = field(default_factory=list)

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        request = msgspec.json.decode(data, type=DeskRequest)
        check_desk_request(SECRET, request)
        self.requests.append(request)

        @dataclass
        class Msg:
            data: bytes
        return Msg(msgspec.json.encode(self.reply))


@dataclass
class FakeRuntime:
    """The platform's answers to console.redeem: one redemption per token, then refusals."""

    nc: FakeNats
    enabled: bool = True
    kinds: dict[str, str] = field(default_factory=dict)
    redeemed: set[str] = field(default_factory=set)
    users: dict[str, str] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)  # refusals the proxy had recorded

    def mint(self, kind: str, user: str = "alice") -> str:
        token, _ = make_token(uuid4())
        self.kinds[token], self.users[token] = kind, user
        return token

    async def command(self, tag: str, body: dict[str, Any], *, idempotency_key: str,
                      timeout: float = 30) -> Result:
        assert tag == "console.redeem"
        if body.get("refused"):  # the platform refuses it in those words, and audits it
            self.reports.append(body["refused"])
            raise CommandRefusedError("invalid", body["refused"])
        token = body["token"]
        if token not in self.kinds:
            raise CommandRefusedError("invalid", "this console link is not valid")
        if token in self.redeemed:
            raise CommandRefusedError("invalid", "this console link was already used; "
                                                  "open a new one")
        self.redeemed.add(token)
        return Result({"ticket_id": str(uuid4()), "vm_id": str(VM), "host_uri": "qemu:///x",
                       "kind": self.kinds[token], "user": self.users[token],
                       "account": "acme", "expires_at": datetime.now(UTC).isoformat()})


async def echo_desk(sessions: list[str]) -> tuple[asyncio.Server, str]:
    """A desk stand-in: reads the session line, then echoes every byte back, upper-cased."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append((await reader.readline()).decode().strip())
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeRuntime,
                                                     ConsoleProxy, list[str]]]:
    sessions: list[str] = []
    server, address = await echo_desk(sessions)
    nc = FakeNats(DeskGrant(address=address, expires_at=0))
    runtime = FakeRuntime(nc)
    settings = Settings(data_dir=tmp_path, console_sessions_per_user=2,
                        console_allowed_origins=("https://admin.example.org",))
    console = ConsoleProxy(runtime, settings, SECRET)  # type: ignore[arg-type]
    client = TestClient(TestServer(console.app()))
    await client.start_server()
    try:
        yield client, runtime, console, sessions
    finally:
        await client.close()
        server.close()


def with_proxy(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A test run under asyncio.run with the rig as its first argument (no asyncio plugin)."""
    def test(tmp_path: Path, **kwargs: Any) -> None:
        async def main() -> None:
            async with rig(tmp_path) as p:
                await fn(p, **kwargs)
        asyncio.run(main())
    params = list(inspect.signature(fn).parameters.values())[1:]
    test.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("tmp_path", inspect.Parameter.KEYWORD_ONLY), *(
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params)])
    test.__name__ = fn.__name__
    return test


async def refusal(ws: Any) -> tuple[dict[str, Any], int | None, str]:
    msg = await ws.receive()
    assert msg.type == WSMsgType.TEXT, msg
    body = json.loads(msg.data)
    closed = await ws.receive()
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), closed
    return body, ws.close_code, closed.extra or ""


@with_proxy
async def test_a_link_relays_once_and_its_replay_is_refused_in_words(proxy: Any) -> None:
    client, runtime, _console, sessions = proxy
    token = runtime.mint("serial")
    async with client.ws_connect(f"/serial/ws?token={token}", origin=OWN) as ws:
        await ws.send_bytes(b"echo hi\r")
        got = await ws.receive(timeout=5)
        assert got.data == b"ECHO HI\r"
        await ws.send_str("typed")
        assert (await ws.receive(timeout=5)).data == b"TYPED"
    # the session the proxy sent is the one only holders of the secret derive from the nonce
    assert [r.kind for r in runtime.nc.requests] == ["serial"]
    assert sessions == [desk_session(SECRET, runtime.nc.requests[0])]
    async with client.ws_connect(f"/serial/ws?token={token}", origin=OWN) as ws:
        body, code, reason = await refusal(ws)
    assert body == {"error": "this console link was already used; open a new one",
                    "code": "gone"}
    await asyncio.sleep(0.05)
    assert runtime.reports == []  # the platform refused it: audited there already
    assert code == 4410 and reason.startswith("this console link was already used")


@pytest.mark.parametrize("token", ["", "nope", "ckc1.zz.zz", "ckc1." + "0" * 32 + ".AAAA"])
@with_proxy
async def test_a_malformed_token_is_refused_without_asking_the_platform(
        proxy: Any, token: str) -> None:
    client, runtime, _console, _sessions = proxy
    async with client.ws_connect(f"/graphics/ws?token={token}") as ws:
        body, code, _ = await refusal(ws)
    assert body == {"error": "this console link is not valid", "code": "invalid",
                    "field": "token"}
    assert code == 4400 and not runtime.redeemed


@with_proxy
async def test_a_foreign_origin_is_refused_and_the_token_stays_unspent(proxy: Any) -> None:
    client, runtime, _console, _sessions = proxy
    token = runtime.mint("graphics")
    async with client.ws_connect(f"/graphics/ws?token={token}",
                                 origin="https://evil.example.com") as ws:
        body, code, _ = await refusal(ws)
    assert (body["code"], body["field"], code) == ("forbidden", "Origin", 4403)
    assert not runtime.redeemed
    await asyncio.sleep(0.05)  # the proxy has the platform record its refusal
    assert runtime.reports == [body["error"]]
    for origin in ("https://admin.example.org", "http://127.0.0.1:8480"):  # configured, admin
        token = runtime.mint("graphics")
        async with client.ws_connect(f"/graphics/ws?token={token}", origin=origin) as ws:
            await ws.send_bytes(b"rfb")
            assert (await ws.receive(timeout=5)).data == b"RFB"


@with_proxy
async def test_a_link_of_another_kind_is_refused(proxy: Any) -> None:
    client, runtime, _console, _sessions = proxy
    token = runtime.mint("serial")
    async with client.ws_connect(f"/graphics/ws?token={token}") as ws:
        body, code, _ = await refusal(ws)
    assert "opens the VM's serial, not its graphics" in body["error"] and code == 4400


@with_proxy
async def test_sessions_per_user_are_limited(proxy: Any) -> None:
    client, runtime, console, _sessions = proxy
    open_ = [await client.ws_connect(f"/serial/ws?token={runtime.mint('serial')}")
             for _ in range(2)]
    for ws in open_:
        await ws.send_bytes(b"x")
        await ws.receive(timeout=5)
    assert len(console.sessions) == 2
    async with client.ws_connect(f"/serial/ws?token={runtime.mint('serial')}") as ws:
        body, code, _ = await refusal(ws)
    assert body["code"] == "busy" and code == 4429
    # another user is not limited by alice's sessions
    async with client.ws_connect(f"/serial/ws?token={runtime.mint('serial', 'bob')}") as ws:
        await ws.send_bytes(b"y")
        assert (await ws.receive(timeout=5)).data == b"Y"
    await open_[0].close()
    await asyncio.sleep(0.1)
    async with client.ws_connect(f"/serial/ws?token={runtime.mint('serial')}") as ws:
        await ws.send_bytes(b"z")
        assert (await ws.receive(timeout=5)).data == b"Z"
    await open_[1].close()


@with_proxy
async def test_a_vm_event_ends_its_sessions_saying_why(proxy: Any) -> None:
    client, runtime, console, _sessions = proxy
    async with client.ws_connect(f"/graphics/ws?token={runtime.mint('graphics')}") as ws:
        await ws.send_bytes(b"a")
        await ws.receive(timeout=5)
        console.on_vm_event("vm.StopRequested", VM)  # not the end: the guest shuts down
        console.on_vm_event("vm.Stopped", uuid4())  # another VM
        await ws.send_bytes(b"b")
        assert (await ws.receive(timeout=5)).data == b"B"
        console.on_vm_event("vm.Stopped", VM)
        msg = await ws.receive(timeout=5)
        assert json.loads(msg.data) == {"closed": "the VM stopped; this console is closed"}
        closed = await ws.receive(timeout=5)
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 4000
    for _ in range(200):  # the handler forgets the session once its close handshake ended
        if not len(console.sessions):
            break
        await asyncio.sleep(0.01)
    assert len(console.sessions) == 0


@with_proxy
async def test_desk_refusals_and_a_disabled_service_say_what_happened(proxy: Any) -> None:
    client, runtime, _console, _sessions = proxy
    runtime.nc.reply = DeskError(code="busy", error="another serial session is open")
    async with client.ws_connect(f"/serial/ws?token={runtime.mint('serial')}") as ws:
        body, code, _ = await refusal(ws)
    assert body == {"error": "another serial session is open", "code": "busy"}
    runtime.enabled = False
    token = runtime.mint("graphics")
    async with client.ws_connect(f"/graphics/ws?token={token}") as ws:
        body, code, _ = await refusal(ws)
    assert body["code"] == "unavailable" and code == 4503 and token not in runtime.redeemed
    assert (await client.get("/healthz")).status == 503


@with_proxy
async def test_screenshot_and_output_answer_the_desk_data_once(proxy: Any) -> None:
    client, runtime, _console, _sessions = proxy
    runtime.nc.reply = DeskData(content_type="image/png", data=b"\x89PNG\r\n\x1a\nfake")
    token = runtime.mint("screenshot")
    response = await client.get(f"/screenshot?token={token}")
    assert response.status == 200 and response.content_type == "image/png"
    assert await response.read() == b"\x89PNG\r\n\x1a\nfake"
    again = await client.get(f"/screenshot?token={token}")
    assert again.status == 410
    assert (await again.json())["error"].startswith("this console link was already used")
    # a screenshot link does not read the output
    wrong = await client.get(f"/output?token={runtime.mint('screenshot')}")
    assert wrong.status == 400 and (await wrong.json())["field"] == "token"
    assert (await client.get("/output?token=junk")).status == 400


@with_proxy
async def test_pages_are_served_without_caching_and_with_novnc(proxy: Any) -> None:
    client, _runtime, console, _sessions = proxy
    page = await client.get("/serial?token=whatever")
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    assert "serial.js" in await page.text()
    if console.novnc is None:
        assert (await client.get("/graphics")).status == 503
    else:
        assert (await client.get("/novnc/core/rfb.js")).status == 200
        assert "graphics.js" in await (await client.get("/graphics")).text()
    assert (await client.get("/static/console.js")).status == 200


@pytest.mark.parametrize("topic", ["vm.Stopped", "vm.StoppedOutOfBand", "vm.Migrated",
                                   "vm.Destroyed", "vm.Expunged", "vm.Failed"])
def test_the_events_that_end_a_vms_console_end_only_its_sessions(topic: str) -> None:
    from services.console.sessions import ENDING_EVENTS, Sessions

    sessions = Sessions(per_user=4)
    mine, other = sessions.open(VM, "alice", "serial"), sessions.open(uuid4(), "alice", "serial")
    assert sessions.end_vm(VM, ENDING_EVENTS[topic]) == 1
    assert mine.ended.is_set() and mine.reason == ENDING_EVENTS[topic]
    assert not other.ended.is_set()
    mine.end("later reason")  # the first reason stays
    assert mine.reason == ENDING_EVENTS[topic]
    sessions.close(mine)
    sessions.close(mine)  # twice is harmless
    assert len(sessions) == 1
