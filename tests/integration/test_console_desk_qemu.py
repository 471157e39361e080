"""The console desk of a hypervisor worker on a real libvirtd + qemu (TCG), over a real
nats-server: signed requests, one-time sessions, and what comes through them (RFB from the
guest's VNC server, its serial console with a login, a PNG, its recent output).

One guest is booted for the module (TCG takes about 20 s); the tests share it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import nats
import pytest
from fixtures.qemu_host import QemuHost
from support.guest_console import GuestConsole
from support.guest_image import GuestImage
from support.plugin_steps import PluginSteps

from gateways.stream.console_desk import ConsoleDesk, desk_for
from gateways.stream.embedded import EmbeddedNatsServer
from kernel.contracts.console import (
    DESK_SUBJECT,
    OUTPUT_BYTES,
    DeskData,
    DeskError,
    DeskGrant,
    DeskReply,
    DeskRequest,
    Kind,
    console_password,
    desk_session,
    sign_desk_request,
)
from kernel.steps.hypervisor import DefineDomain, DiskSpec, DomainDefined
from kernel.steps.storage import CreatePool, CreateVolume, PoolInfo, VolumeInfo, VolumeRef
from subsystems.libvirt import domain_xml
from subsystems.libvirt.connections import close_all, connection
from subsystems.libvirt.screen_images import PNG_SIGNATURE, png_size

pytestmark = pytest.mark.qemu

MiB = 1 << 20
_reply = msgspec.json.Decoder(DeskReply).decode
REPO = Path(__file__).resolve().parents[2]


class DeskThread:
    """A ConsoleDesk running on an event loop of its own thread, as beside a worker."""

    def __init__(self, desk: ConsoleDesk) -> None:
        self.desk = desk
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not desk.ready.is_set():
            assert self._failed is None, self._failed
            assert time.monotonic() < deadline, "the desk did not get ready"
            time.sleep(0.05)

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.desk.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # reported by __init__
            self._failed = e

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@dataclass
class Desk:
    """The booted guest, the desk (or desks) serving it, and how to ask them."""

    qemu: QemuHost
    uri: str
    nats_url: str
    secret: bytes
    secret_file: Path
    tmp: Path
    vm_id: UUID
    stopped_vm: UUID
    desks: list[DeskThread]
    hv: PluginSteps

    def request(self, kind: Kind, *, vm_id: UUID | None = None, uri: str | None = None,
                secret: bytes | None = None, now: float | None = None) -> DeskRequest:
        return sign_desk_request(secret or self.secret, vm_id=vm_id or self.vm_id,
                                 host_uri=uri or self.uri, kind=kind, now=now)

    def ask(self, request: DeskRequest | bytes, timeout: float = 40.0) -> DeskReply:
        data = request if isinstance(request, bytes) else msgspec.json.encode(request)

        async def go() -> bytes:
            nc = await nats.connect(self.nats_url)
            try:
                return (await nc.request(DESK_SUBJECT, data, timeout=timeout)).data
            finally:
                await nc.close()

        return _reply(asyncio.run(go()))

    def grant(self, kind: Kind) -> DeskGrant:
        """A granted session, its `session` filled in as the console service computes it
        (the desk never sends it)."""
        request = self.request(kind)
        reply = self.ask(request)
        assert isinstance(reply, DeskGrant), reply
        assert reply.session == ""
        return msgspec.structs.replace(reply, session=desk_session(self.secret, request))


@pytest.fixture(scope="module")
def desk(qemu_daemon: QemuHost, guest_image: GuestImage,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    qemu = qemu_daemon
    qemu.clean()
    tmp = tmp_path_factory.mktemp("desk")
    server = EmbeddedNatsServer(tmp / "nats", server_name="ck-desk-test", monitor_port=0)
    server.start()
    secret_file = tmp / "console.secret"
    hv = PluginSteps("hypervisor", {"console_secret_file": str(secret_file),
                                    "console_listen": "127.0.0.1"})
    storage = PluginSteps("storage")
    pool_dir = qemu.storage_dir / f"desk-{uuid4().hex[:6]}"
    desks: list[DeskThread] = []
    try:
        storage.ok(CreatePool(host_uri=qemu.uri, pool="desk", path=str(pool_dir)), PoolInfo)
        disks = []
        for name, template in (("root", guest_image.root), ("idle", None)):
            made = storage.ok(CreateVolume(
                volume=VolumeRef(host_uri=qemu.uri, pool="desk", name=name),
                capacity_bytes=64 * MiB,
                template_path=str(template) if template else None), VolumeInfo)
            disks.append(made.path)
        vm_id, stopped_vm = uuid4(), uuid4()
        for vm, disk, start in ((vm_id, disks[0], True), (stopped_vm, disks[1], False)):
            hv.ok(DefineDomain(vm_id=vm, name=f"desk-{vm.hex[:8]}", host_uri=qemu.uri,
                               cpu_cores=1, cpu_mhz=1000, memory_mib=192, start=start,
                               disks=(DiskSpec(path=disk),)), DomainDefined)
        with GuestConsole(qemu.uri, str(vm_id)) as console:  # it holds the console: closed
            console.wait_status(timeout=120)  # booted
            console.wait_line(lambda line: "login:" in line, timeout=60)  # getty is up
        made_desk = desk_for(hv.plugin, [server.url])
        assert made_desk is not None
        desks.append(DeskThread(made_desk))
        yield Desk(qemu=qemu, uri=qemu.uri, nats_url=server.url,
                   secret=secret_file.read_text().strip().encode(),
                   secret_file=secret_file, tmp=tmp, vm_id=vm_id,
                   stopped_vm=stopped_vm, desks=desks, hv=hv)
    finally:
        for thread in desks:
            thread.close()
        close_all()
        qemu.clean()
        shutil.rmtree(pool_dir, ignore_errors=True)
        server.stop()


def open_session(grant: DeskGrant) -> socket.socket:
    host, _, port = grant.address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
    sock.sendall(grant.session.encode() + b"\n")
    return sock


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def read_until(sock: socket.socket, pattern: bytes, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} within {timeout}s; got {seen[-2000:]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        assert chunk is not None, f"no {pattern!r} within {timeout}s; got {seen[-3000:]!r}"
        assert chunk, f"closed before {pattern!r}; got {seen[-2000:]!r}"
        seen += chunk
    return seen


# --------------------------------------------------------------------------- graphics


def test_a_graphics_session_is_rfb_with_security_none(desk: Desk) -> None:
    grant = desk.grant("graphics")
    assert grant.expires_at > time.time()
    with open_session(grant) as vnc:
        version = read_exact(vnc, 12)
        assert re.fullmatch(rb"RFB 003\.00[378]\n", version), version
        vnc.sendall(b"RFB 003.008\n")
        count = read_exact(vnc, 1)[0]
        types = list(read_exact(vnc, count))
        assert types == [1], f"SKIPAUTH should leave only None, got {types}"
        vnc.sendall(b"\x01")
        assert read_exact(vnc, 4) == b"\0\0\0\0"  # SecurityResult: OK
        vnc.sendall(b"\x01")  # ClientInit, shared
        width, height = struct.unpack(">HH", read_exact(vnc, 4))
        read_exact(vnc, 16)  # pixel format
        (name_length,) = struct.unpack(">I", read_exact(vnc, 4))
        read_exact(vnc, name_length)
        assert width > 0 and height > 0
        vnc.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        kind = read_exact(vnc, 1)[0]
        assert kind == 0, f"expected a FramebufferUpdate, got message type {kind}"
        _pad, rects = struct.unpack(">BH", read_exact(vnc, 3))
        assert rects >= 1
        x, y, w, h, _encoding = struct.unpack(">HHHHi", read_exact(vnc, 12))
        assert w > 0 and h > 0 and x + w <= width and y + h <= height

    # the session was used: a second connection with it gets nothing
    with open_session(grant) as again:
        again.settimeout(10)
        assert again.recv(100) == b""


def test_a_granted_session_not_collected_in_time_is_gone(desk: Desk) -> None:
    grant = desk.grant("graphics")
    time.sleep(grant.expires_at - time.time() + 0.5)
    with open_session(grant) as late:
        late.settimeout(10)
        assert late.recv(100) == b""


def in_daemons_netns(desk: Desk, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in the network namespace of the test daemon, where its VNC ports
    are (the libvirt socket is a file, reachable from there too)."""
    pid = str(desk.qemu._namespace_init())
    return subprocess.run(["nsenter", "-t", pid, "-n", sys.executable, "-c", script, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


REMOTE_DESK = r"""
import socket, struct, sys, uuid
from subsystems.libvirt.console_desk import LibvirtDesk
uri, vm, secret = sys.argv[1], uuid.UUID(sys.argv[2]), sys.argv[3].encode()
desk = LibvirtDesk(secret)
_conn, dom = desk._domain(uri, vm)
sock = desk._graphics_over_tcp(dom, uri, vm)  # what a remote host's desk does
sock.settimeout(20)
def read(n):
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data)) or sys.exit("closed")
    return data
version = read(12)
sock.sendall(b"RFB 003.008\n")
types = list(read(read(1)[0]))
sock.sendall(b"\x01")
result = read(4)
sock.sendall(b"\x01")
width, height = struct.unpack(">HH", read(4))
print(version.decode().strip(), types, result.hex(), width, height)
"""


def test_a_remote_hosts_desk_logs_in_over_tcp_and_offers_none(desk: Desk) -> None:
    """What a remote host's desk does (libvirt cannot pass it a descriptor): VNC
    authentication with the VM's derived password (DES included) against the real qemu,
    then security None for the console service."""
    done = in_daemons_netns(desk, REMOTE_DESK, desk.uri, str(desk.vm_id), desk.secret.decode())
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith("RFB 003.008 [1] 00000000 "), said  # None only, then OK
    width, height = (int(v) for v in said.split()[-2:])
    assert width > 0 and height > 0, said

    xml = connection(desk.uri).lookupByUUIDString(str(desk.vm_id)).XMLDesc(0)
    [gfx] = domain_xml.graphics_of(xml)
    login = ("import socket, sys; from subsystems.libvirt import rfb; "
             "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10); "
             "print(rfb.login(s, sys.argv[2]))")
    right = in_daemons_netns(desk, login, str(gfx.port), console_password(desk.secret,
                                                                          desk.vm_id))
    assert right.returncode == 0 and right.stdout.strip() == "8", right.stderr
    wrong = in_daemons_netns(desk, login, str(gfx.port), "wrong")
    assert wrong.returncode != 0 and "refused" in wrong.stderr, wrong.stderr


# --------------------------------------------------------------------------- serial


def test_a_serial_session_logs_in_and_runs_a_command(desk: Desk) -> None:
    grant = desk.grant("serial")
    with open_session(grant) as serial:
        serial.sendall(b"\r\n")
        read_until(serial, b"login:")
        # one session at a time: a second is refused while this one is open
        busy = desk.ask(desk.request("serial"))
        assert isinstance(busy, DeskError) and busy.code == "busy", busy
        serial.sendall(b"root\r\n")
        read_until(serial, b"#")
        serial.sendall(b"echo ck-$((6*7))\r\n")
        read_until(serial, b"ck-42")
        serial.sendall(b"exit\r\n")
    # closing the session frees the console
    deadline = time.monotonic() + 10
    while True:
        asked = desk.request("serial")
        reply = desk.ask(asked)
        if isinstance(reply, DeskGrant) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert isinstance(reply, DeskGrant), reply
    with open_session(msgspec.structs.replace(
            reply, session=desk_session(desk.secret, asked))) as again:
        again.sendall(b"\r\n")
        read_until(again, b"login:")


# --------------------------------------------------------------------------- reads


def test_a_screenshot_is_a_png(desk: Desk) -> None:
    reply = desk.ask(desk.request("screenshot"))
    assert isinstance(reply, DeskData), reply
    assert reply.content_type == "image/png"
    assert reply.data.startswith(PNG_SIGNATURE)
    width, height = png_size(reply.data)
    assert width > 0 and height > 0


def test_the_output_is_the_serial_consoles_recent_lines(desk: Desk) -> None:
    reply = desk.ask(desk.request("output"))
    assert isinstance(reply, DeskData), reply
    assert reply.content_type == "text/plain"
    assert 0 < len(reply.data) <= OUTPUT_BYTES
    assert b"CK-STATUS boot=" in reply.data
    # it is logged on the host, in the folder the hypervisor's config names
    log = desk.qemu.log_dir / f"{desk.vm_id}.serial.log"
    assert log.is_file()
    # a stopped VM's output is what it left: nothing, for one that never ran
    idle = desk.ask(desk.request("output", vm_id=desk.stopped_vm))
    assert isinstance(idle, DeskData) and idle.data == b"", idle


# --------------------------------------------------------------------------- refusals


def test_requests_that_are_refused(desk: Desk) -> None:
    forged = desk.ask(desk.request("screenshot", secret=b"not-the-console-secret"))
    assert isinstance(forged, DeskError) and forged.code == "refused"
    assert "signature" in forged.error
    expired = desk.ask(desk.request("screenshot", now=time.time() - 120))
    assert isinstance(expired, DeskError) and expired.code == "refused"
    assert "expired" in expired.error
    garbage = desk.ask(b'{"vm_id": 1}')
    assert isinstance(garbage, DeskError) and garbage.code == "refused"

    once = desk.request("output")
    assert isinstance(desk.ask(once), DeskData)
    replayed = desk.ask(once)
    assert isinstance(replayed, DeskError) and replayed.code == "refused"
    assert "nonce" in replayed.error


def test_unknown_stopped_and_unreachable(desk: Desk) -> None:
    unknown = desk.ask(desk.request("graphics", vm_id=uuid4()))
    assert isinstance(unknown, DeskError) and unknown.code == "not_found", unknown
    stopped = desk.ask(desk.request("serial", vm_id=desk.stopped_vm))
    assert isinstance(stopped, DeskError) and stopped.code == "unavailable", stopped
    started = time.monotonic()
    nowhere = desk.ask(desk.request("graphics", uri="qemu+tcp://127.0.0.1:1/system"))
    assert isinstance(nowhere, DeskError) and nowhere.code == "unavailable", nowhere
    assert time.monotonic() - started < 30


def test_several_desks_share_the_requests(desk: Desk) -> None:
    """A second worker's desk joins the queue group: both answer, and a grant of either
    works."""
    second = desk_for(desk.hv.plugin, [desk.nats_url])
    assert second is not None
    thread = DeskThread(second)
    desk.desks.append(thread)
    first = desk.desks[0].desk
    before = first.stats["requests"]
    for _ in range(12):
        assert isinstance(desk.ask(desk.request("output")), DeskData)
    assert second.stats["requests"] > 0 and first.stats["requests"] > before
    for _ in range(4):
        with open_session(desk.grant("graphics")) as vnc:
            assert read_exact(vnc, 4) == b"RFB "


def test_a_cloudkernel_worker_of_the_hypervisor_serves_a_desk(desk: Desk) -> None:
    """`cloudkernel worker --subsystem hypervisor` with a console secret runs a desk beside
    the worker, in the same queue group: one of its grants (told apart by its address)
    reaches the VM's screen from that process."""
    config = {"console_secret_file": str(desk.secret_file),
              "console_desk_listen": "127.0.0.1", "console_desk_port": 0}
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLOUDKERNEL_DATA_DIR": str(desk.tmp / "cli")}
    env.pop("CLOUDKERNEL_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateways.cli.main", "worker", "--subsystem", "hypervisor",
         "--nats-url", desk.nats_url, "--config-json", json.dumps(config)],
        env=env, cwd=desk.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " serves " in line:
                break
        else:
            raise AssertionError("cloudkernel worker did not start")
        ours = {d.desk.address for d in desk.desks}
        deadline = time.monotonic() + 60
        while True:
            grant = desk.grant("graphics")
            if grant.address not in ours:
                break
            assert time.monotonic() < deadline, "the worker's desk never answered"
        with open_session(grant) as vnc:
            assert re.fullmatch(rb"RFB 003\.00[378]\n", read_exact(vnc, 12))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
