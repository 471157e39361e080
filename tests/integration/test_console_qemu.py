"""The console proxy on the real qemu tier, as users meet it (issue 19): a booted guest's screen
and serial console through single-use links, from a VNC library, a text client, boto3 and a
headless Chromium opening the admin web page; and the refusals, each in words, each audited,
none saying which VMs exist.

The stack (`support.console_stack`): the kernel, every worker in its own process (the
hypervisor's with its console desk), the relay, intake and ACL responder, the admin API with
its page, and the console and EC2 services as `python -m` processes. The links expire after
8 s here, so that one test can wait one out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncvnc
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from fixtures.qemu_host import QemuHost
from support.console_stack import ConsoleStack
from support.guest_console import GuestConsole
from support.guest_image import GuestImage
from support.rfb_client import WsStream, bridge, handshake, read_update, request_update

from aggregates.console_ticket import ConsoleTicket
from kernel.cloud.vms import StopVm

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 180.0
CHROMIUM = "chromium"
TICKET_SECONDS = 8.0


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG, after checking its signature and first chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(kind + body)
    width, height = struct.unpack(">II", body[:8])
    return width, height


class Admin:
    """The root admin, logged in to the admin API as the web page does."""

    def __init__(self, stack: ConsoleStack) -> None:
        self.stack, self.token = stack, ""
        self.secrets: list[str] = []  # of every link minted

    async def login(self, http: aiohttp.ClientSession) -> None:
        async with http.post(f"{self.stack.admin_url}/v1/login", json={
                "username": "admin", "password": self.stack.admin_password}) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["token"]

    async def mint(self, http: aiohttp.ClientSession, kind: str,
                   vm_id: UUID | None = None) -> tuple[int, dict[str, Any]]:
        vm = vm_id or self.stack.vm_id
        async with http.post(f"{self.stack.admin_url}/v1/vms/{vm}/console", json={"kind": kind},
                             headers={"Authorization": f"Bearer {self.token}"}) as r:
            body = await r.json()
            grant = body.get("result", body)
            if r.status == 201:
                self.secrets.append(grant["token"].split(".")[2])
            return r.status, grant


def ws_url(url: str) -> str:
    """The WebSocket of a console link (`<web>/<kind>?token=` -> `<web>/<kind>/ws?token=`)."""
    base, _, query = url.partition("?")
    return base.replace("http://", "ws://", 1) + "/ws?" + query


async def refused(http: aiohttp.ClientSession, url: str, **options: Any) -> tuple[str, int]:
    """Open a console link that must be refused: the words it sends and the close code."""
    async with http.ws_connect(ws_url(url), **options) as ws:
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        said = json.loads(msg.data)["error"]
        closed = await ws.receive(timeout=20)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code is not None and ws.close_code >= 4000
        return said, ws.close_code


async def serial_until(ws: aiohttp.ClientWebSocketResponse, text: str, seen: bytearray,
                       timeout: float = 60) -> str:
    """Read the serial console until `text` appears after what was `seen`; all of it."""
    start, deadline = len(seen), time.monotonic() + timeout
    while text.encode() not in seen[start:]:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} on the serial console; it said:\n{seen[start:]!r}"
        msg = await ws.receive(timeout=left)
        assert msg.type == aiohttp.WSMsgType.BINARY, (msg, bytes(seen[start:]))
        seen += msg.data
    return seen[start:].decode(errors="replace")


def ec2_client(stack: ConsoleStack, tenant: str) -> Any:
    key_id, secret = stack.tenants[tenant].key
    return boto3.client(
        "ec2", endpoint_url=f"http://127.0.0.1:{stack.settings.ec2_port}/",
        region_name=stack.settings.ec2_region, aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=120))


def test_a_booted_guests_consoles_through_single_use_links(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_host: QemuHost,
        guest_image: GuestImage) -> None:
    with ConsoleStack(tmp_path, pg_dsn, nats_url, qemu_host, guest_image,
                      ticket_seconds=TICKET_SECONDS) as stack:
        assert stack.vm_id is not None and stack.cloud is not None
        guest = GuestConsole(qemu_host.uri, str(stack.vm_id))
        try:
            guest.wait_status(lambda s: s.ip is not None, timeout=BOOT_TIMEOUT)
        finally:
            guest.close()  # the serial console is the proxy's from here

        admin = Admin(stack)

        async def story() -> None:
            async with aiohttp.ClientSession() as http:
                await admin.login(http)
                await screen_through_a_vnc_library(stack, admin, http)
                await serial_login_and_a_command(admin, http)
                await refusals_in_words(stack, admin, http)
            await ec2_output_and_screenshot(stack)
            await browser_opens_the_console_from_the_admin_page(stack, admin)
            async with aiohttp.ClientSession() as http:
                await admin.login(http)
                await the_admins_switch(stack, admin, http)
                await a_stop_ends_the_session_and_later_links(stack, admin, http)

        asyncio.run(story())
        audited_and_secret(stack, admin)
        # what the guest printed stays after a stop (as EC2 keeps it), where virtlogd wrote it
        log = (qemu_host.log_dir / f"{stack.vm_id}.serial.log").read_text(errors="replace")
        assert "CK-STATUS" in log and "ck-42" in log


async def screen_through_a_vnc_library(stack: ConsoleStack, admin: Admin,
                                       http: aiohttp.ClientSession) -> None:
    # asyncvnc, over TCP bridged to the proxy's WebSocket: the RFB handshake and a screen
    status, grant = await admin.mint(http, "graphics")
    assert status == 201, grant
    assert grant["kind"] == "graphics" and grant["url"].startswith(stack.settings.console_url)
    async with bridge(ws_url(grant["url"]), protocols=("binary",)) as (host, port), \
            asyncvnc.connect(host, port) as vnc:
        assert vnc.video.width > 0 and vnc.video.height > 0
        pixels = await vnc.screenshot()
        assert pixels.shape[:2] == (vnc.video.height, vnc.video.width)
        assert pixels.reshape(-1, pixels.shape[-1])[:, :3].max() > 0  # not all black
        assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 1

    # our own raw client straight on the WebSocket: ServerInit, then full updates
    status, grant = await admin.mint(http, "graphics")
    async with http.ws_connect(ws_url(grant["url"]), protocols=("binary",)) as ws:
        stream = WsStream(ws)
        init = await handshake(stream)
        assert (init.width, init.height) == (vnc.video.width, vnc.video.height)
        await request_update(stream, init)
        size, first = await read_update(stream, init)
        assert size > init.width * init.height and any(first)


async def serial_login_and_a_command(admin: Admin, http: aiohttp.ClientSession) -> None:
    status, grant = await admin.mint(http, "serial")
    assert status == 201, grant
    seen = bytearray()
    async with http.ws_connect(ws_url(grant["url"]), protocols=("binary",)) as ws:
        await ws.send_bytes(b"\r")
        await serial_until(ws, "login:", seen)
        await ws.send_bytes(b"root\r")
        await serial_until(ws, "#", seen)
        await ws.send_bytes(b"echo ck-$((6*7))\r")
        assert "ck-42" in await serial_until(ws, "ck-42", seen)
        await ws.send_bytes(b"exit\r")
        await serial_until(ws, "login:", seen)


async def refusals_in_words(stack: ConsoleStack, admin: Admin,
                            http: aiohttp.ClientSession) -> None:
    console = stack.settings.console_url
    # a replayed link: used once, then refused in words
    _, grant = await admin.mint(http, "serial")
    async with http.ws_connect(ws_url(grant["url"])) as ws:
        await ws.send_bytes(b"\r")
        await serial_until(ws, "login:", bytearray())
    said, code = await refused(http, grant["url"])
    assert (said, code) == ("this console link was already used; open a new one", 4410)

    # an expired one
    _, grant = await admin.mint(http, "serial")
    await asyncio.sleep(TICKET_SECONDS + 1)
    said, code = await refused(http, grant["url"])
    assert said == "this console link has expired; open a new one"

    # a forged one and one made up: the same words, nothing on which VMs exist
    ticket = grant["token"].split(".")[1]
    zeros = base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")
    forged = f"{console}/serial?token=ckc1.{ticket}.{zeros}"
    made_up = f"{console}/serial?token=ckc1.{uuid4().hex}.{zeros}"
    assert (await refused(http, forged))[0] == (await refused(http, made_up))[0] == \
        "this console link is not valid"

    # a page of another origin may not open a console, and the link stays good
    _, grant = await admin.mint(http, "graphics")
    said, code = await refused(http, grant["url"], origin="https://evil.example.com")
    assert code == 4403 and "origin" in said
    async with http.ws_connect(ws_url(grant["url"]), origin=stack.admin_url) as ws:
        assert (await handshake(WsStream(ws))).width > 0

    # (a link for another tenant's VM: bob's GetConsoleOutput below, refused as unknown)


async def ec2_output_and_screenshot(stack: ConsoleStack) -> None:
    from services.ec2.ids import INSTANCE, to_ec2

    assert stack.vm_id is not None
    iid = to_ec2(INSTANCE, stack.vm_id)
    alice, bob = ec2_client(stack, "alice"), ec2_client(stack, "bob")
    output = await asyncio.to_thread(alice.get_console_output, InstanceId=iid)
    assert output["InstanceId"] == iid
    text = output["Output"]  # botocore decodes EC2's base64 (as the AWS CLI shows it)
    assert "CK-STATUS" in text and "login:" in text, text[-2000:]
    shot = await asyncio.to_thread(alice.get_console_screenshot, InstanceId=iid)
    width, height = png_size(base64.b64decode(shot["ImageData"]))
    assert width > 0 and height > 0
    # bob is told alice's instance does not exist, as for one that does not
    codes = []
    for instance in (iid, to_ec2(INSTANCE, uuid4())):
        with pytest.raises(ClientError) as e:
            await asyncio.to_thread(bob.get_console_output, InstanceId=instance)
        codes.append(e.value.response["Error"]["Code"])
    assert codes == ["InvalidInstanceID.NotFound"] * 2


async def browser_opens_the_console_from_the_admin_page(stack: ConsoleStack,
                                                        admin: Admin) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    assert shutil.which(CHROMIUM), "chromium is installed by scripts/install.sh"
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which(CHROMIUM),
                                          headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(stack.admin_url + "/")
            await page.fill("#login-form input[name=username]", "admin")
            await page.fill("#login-form input[name=password]", stack.admin_password)
            await page.click("#login-form button")
            await page.click("#nav a[href='#/vms']")
            row = page.locator(f"tr[data-id='{stack.vm_id}']")
            async with page.expect_popup() as popup_info:
                await row.locator("button[data-action=console]").click()
            popup = await popup_info.value
            await popup.wait_for_load_state()
            status = popup.locator("#status")
            await playwright.expect(status).to_have_text("Connected", timeout=30_000)
            canvas = popup.locator("#screen canvas")
            await playwright.expect(canvas).to_be_visible()
            # the guest's screen, not a blank canvas: more than one colour drawn
            await popup.wait_for_function(
                """() => { const c = document.querySelector('#screen canvas');
                           if (!c || !c.width) return false;
                           const d = c.getContext('2d').getImageData(0, 0, c.width,
                                                                      c.height).data;
                           const seen = new Set();
                           for (let i = 0; i < d.length; i += 4 * 37)
                             seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                           return seen.size > 1; }""", timeout=30_000)
            png = await canvas.screenshot()
            assert png_size(png)[0] > 0
            await popup.close()

            # a tenant, from the End User API's page: her VM's serial console
            tenant = await browser.new_page()
            await tenant.goto(f"http://127.0.0.1:{stack.settings.enduser_port}/")
            await tenant.fill("#login-form input[name=username]", "alice")
            await tenant.fill("#login-form input[name=password]",
                              stack.tenants["alice"].password)
            await tenant.click("#login-form button")
            mine = tenant.locator(f"tr[data-id='{stack.vm_id}']")
            await playwright.expect(mine).to_contain_text("Running", timeout=30_000)
            async with tenant.expect_popup() as popup_info:
                await mine.locator("button[data-action=serial]").click()
            serial = await popup_info.value
            await playwright.expect(serial.locator("#status")).to_have_text(
                "Connected", timeout=30_000)
            await serial.locator("#term").press("Enter")
            await playwright.expect(serial.locator("#term")).to_contain_text(
                "login:", timeout=30_000)
            await serial.close()
            # a link used already, opened in a tab: refused, and the page says why in words
            again = await browser.new_page()
            await again.goto(await _fresh_used_link(stack, admin))
            await playwright.expect(again.locator("#status")).to_contain_text(
                "already used", timeout=30_000)
        finally:
            await browser.close()


async def _fresh_used_link(stack: ConsoleStack, admin: Admin) -> str:
    """A graphics link that was used once already (the page hides its token after use)."""
    async with aiohttp.ClientSession() as http:
        _, grant = await admin.mint(http, "graphics")
        async with http.ws_connect(ws_url(grant["url"])) as ws:
            await handshake(WsStream(ws))
        return str(grant["url"])


async def the_admins_switch(stack: ConsoleStack, admin: Admin,
                            http: aiohttp.ClientSession) -> None:
    """Disabled, the proxy refuses (the link stays unspent) and nothing mints; the VM runs on;
    enabled again, the same link opens."""
    from aggregates.vm import VmState

    async def switch(tag: str, **body: str) -> None:
        async with http.post(f"{stack.admin_url}/v1/commands/{tag}", json={
                "name": "console", **body}, headers={"Authorization": f"Bearer {admin.token}"}
                ) as r:
            assert r.status in (200, 201), await r.text()

    _, grant = await admin.mint(http, "graphics")
    await switch("service.disable", reason="console maintenance")
    await proxy_health(http, stack, 503)  # the proxy has seen its registration's change
    said, code = await refused(http, grant["url"])
    assert said == "the console service is disabled by an administrator" and code == 4503
    status, body = await admin.mint(http, "graphics")
    assert status == 409 and "not available" in json.dumps(body), body
    assert stack.cloud is not None and stack.vm_id is not None
    vm = await asyncio.to_thread(stack.on_loop, stack.cloud.get(stack.vm_id))
    assert vm.state is VmState.RUNNING
    await switch("service.enable")
    await proxy_health(http, stack, 200)
    async with http.ws_connect(ws_url(grant["url"])) as ws:
        first = await ws.receive(timeout=20)
        assert first.type == aiohttp.WSMsgType.BINARY and first.data.startswith(b"RFB 003.")


async def proxy_health(http: aiohttp.ClientSession, stack: ConsoleStack, status: int) -> None:
    """Wait until the console service's /healthz answers `status`."""
    for _ in range(150):
        async with http.get(f"{stack.settings.console_url}/healthz") as r:
            if r.status == status:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the console service's health did not become {status}")


async def a_stop_ends_the_session_and_later_links(stack: ConsoleStack, admin: Admin,
                                                  http: aiohttp.ClientSession) -> None:
    assert stack.cloud is not None and stack.vm_id is not None
    _, later = await admin.mint(http, "serial")
    _, grant = await admin.mint(http, "serial")
    async with http.ws_connect(ws_url(grant["url"])) as ws:
        await ws.send_bytes(b"\r")
        await serial_until(ws, "login:", bytearray())
        stopped = await asyncio.to_thread(stack.on_loop, stack.cloud.command(
            StopVm(vm_id=stack.vm_id)))
        await asyncio.to_thread(stack.on_loop, stack.cloud.finished(
            stopped["operation_id"], timeout=120), 150)
        closing = None
        while True:
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT:
                closing = json.loads(msg.data)["closed"]
            elif msg.type != aiohttp.WSMsgType.BINARY:
                break
        assert closing is not None and "stopped" in closing, closing
    said, _ = await refused(http, later["url"])
    assert said == "the VM is no longer running"
    status, body = await admin.mint(http, "serial")
    assert status == 409, body


def audited_and_secret(stack: ConsoleStack, admin: Admin) -> None:
    """Minting and redeeming are events; refused redemptions are in the ACL's denial log,
    in the words the user read; no stored event holds a link's secret."""
    from services.acl.model import AccessDenial

    assert stack.cloud is not None
    app = stack.cloud.app
    tickets: list[ConsoleTicket] = [app.repository.get(t)
                                    for t in stack.cloud.ids("console_ticket.Issued")]
    redeemed = [t for t in tickets if t.redeemed]
    assert len(tickets) >= 12 and 8 <= len(redeemed) < len(tickets), (len(tickets),
                                                                       len(redeemed))
    acl = stack.acl  # the stack's own: a stack of processes holds many connections already
    reasons = [acl.app.mapper.to_domain_event(n).reason
               for n in acl.app.recorder.select_notifications(start=1, limit=100_000)
               if n.topic == AccessDenial.AccessDenied.TOPIC and b"console.redeem" in n.state]
    for words in ("this console link was already used; open a new one",
                  "this console link has expired; open a new one",
                  "this console link is not valid", "the VM is no longer running",
                  # refused by the proxy itself, recorded through the platform all the same
                  "this page's origin may not open consoles here "
                  "(setting console_allowed_origins)"):
        assert words in reasons, (words, reasons)
    stored = b"".join(n.state for n in app.recorder.select_notifications(start=1,
                                                                         limit=1_000_000))
    assert len(admin.secrets) >= 9
    for secret in admin.secrets:
        assert secret.encode() not in stored
