"""Console sessions through the proxy against direct connections to the same VNC servers,
from one run.

Usage:
    .venv/bin/python bench/console.py [--sessions 1,10,50] [--seconds 5]

It starts what the real-qemu test tier starts (a throwaway PostgreSQL, a nats-server, a private
libvirtd + qemu under TCG, the tier's tiny guest) and the console stack of its console test
(`tests/support/console_stack.py`: the kernel, workers in processes of their own with the
hypervisor's console desk, the admin API, the console service as its own process), boots two
guests, and for each number of concurrent sessions prints, per path:
  * relay: a link minted through the admin API per session, a WebSocket to the console
    service, through the hypervisor worker's desk to the guest's VNC server;
  * direct: a connection straight to the same VNC server (libvirt's openGraphicsFD, the
    socket the desk itself gets; no proxy, no desk);
each session asking for full (non-incremental) raw framebuffer updates back to back: updates
per second, MB/s of framebuffer relayed (from the first session's first update to the last
one's last; setting sessions up is not counted), and the p50/p99 latency of one update
(request to last byte). Sessions are spread over the two guests: qemu's VNC server takes at most 32
clients each. The goal: 50 concurrent sessions, relay throughput at least 50% of direct.
"""

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import aiohttp  # noqa: E402
import libvirt  # noqa: E402

from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402

Window = tuple[int, float, float]  # bytes, and when the updates began and ended


async def session_loop(stream: Any, seconds: float, latencies: list[float]) -> Window:
    """After the handshake, full updates back to back for `seconds`."""
    from support.rfb_client import handshake, read_update, request_update

    init = await handshake(stream)
    total, begun = 0, time.monotonic()
    while time.monotonic() < begun + seconds:
        started = time.perf_counter()
        await request_update(stream, init)
        size, _ = await read_update(stream, init)
        latencies.append(time.perf_counter() - started)
        total += size
    return total, begun, time.monotonic()


async def direct_session(uri: str, vm_id: UUID, seconds: float,
                         latencies: list[float]) -> Window:
    from support.rfb_client import TcpStream

    def open_fd() -> socket.socket:
        conn = libvirt.open(uri)
        try:
            fd = conn.lookupByUUIDString(str(vm_id)).openGraphicsFD(
                0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
        finally:
            conn.close()
        return socket.socket(fileno=fd)

    sock = await asyncio.to_thread(open_fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
    stream = TcpStream(reader, writer)
    try:
        return await session_loop(stream, seconds, latencies)
    finally:
        stream.close()


async def relay_session(http: aiohttp.ClientSession, url: str, seconds: float,
                        latencies: list[float]) -> Window:
    from support.rfb_client import WsStream

    base, _, query = url.partition("?")
    ws_url = base.replace("http://", "ws://", 1) + "/ws?" + query
    async with http.ws_connect(ws_url, protocols=("binary",), max_msg_size=0) as ws:
        return await session_loop(WsStream(ws), seconds, latencies)


async def mint(http: aiohttp.ClientSession, admin_url: str, token: str, vm_id: UUID) -> str:
    async with http.post(f"{admin_url}/v1/vms/{vm_id}/console", json={"kind": "graphics"},
                         headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"minting a console link failed: {r.status} {body}")
        return str(body.get("result", body)["url"])


async def measure(stack: Any, vms: list[UUID], sessions: int, seconds: float,
                  path: str) -> dict[str, float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        if path == "relay":
            async with http.post(f"{stack.admin_url}/v1/login", json={
                    "username": "admin", "password": stack.admin_password}) as r:
                token = (await r.json())["token"]
            urls = [await mint(http, stack.admin_url, token, vms[i % len(vms)])
                    for i in range(sessions)]
            runs = [relay_session(http, url, seconds, latencies) for url in urls]
        else:
            runs = [direct_session(stack.qemu_host.uri, vms[i % len(vms)], seconds, latencies)
                    for i in range(sessions)]
        windows = await asyncio.gather(*runs)
    # from the first session's first update to the last one's last: the setup of a session
    # (a link redeemed, a desk asked) is not counted, in either path
    elapsed = max(w[2] for w in windows) - min(w[1] for w in windows)
    ordered = sorted(latencies)
    return {"updates": len(latencies) / elapsed,
            "mbs": sum(w[0] for w in windows) / elapsed / 1e6,
            "p50": statistics.median(ordered) * 1e3,
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]

    from fixtures.postgres import PostgresServer, create_database, with_dbname
    from fixtures.qemu_host import QemuHost
    from support.console_stack import ConsoleStack
    from support.guest_console import GuestConsole
    from support.guest_image import build_guest_image

    from kernel.cloud.vms import DeployVm

    tmp = Path(tempfile.mkdtemp(prefix="ck-console-bench-"))
    with ExitStack() as stack_of:
        pg = PostgresServer()
        pg.start()
        stack_of.callback(pg.destroy)
        nats = EmbeddedNatsServer(tmp / "nats")
        url = nats.start()
        stack_of.callback(nats.stop)
        host = QemuHost("ck-qemu-bench")
        host.start()
        stack_of.callback(host.destroy)
        image = build_guest_image()
        dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
        stack = stack_of.enter_context(ConsoleStack(
            tmp, dsn, url, host, image, extra={"console_sessions_per_user": 1000}))
        assert stack.vm_id is not None and stack.cloud is not None and stack.ids is not None
        ids = stack.ids
        second = stack.on_loop(stack.cloud.command(DeployVm(
            name="console-2", account="acme", zone_id=ids.zone_id,
            service_offering_id=ids.offering_id, template_id=ids.template_id,
            network_ids=(ids.network_id,) if ids.network_id else ())))
        stack.on_loop(stack.cloud.finished(second["operation_id"], timeout=180), 200)
        vms = [stack.vm_id, UUID(second["vm_id"])]
        for vm in vms:  # booted: the screen shows the guest, not the firmware
            console = GuestConsole(host.uri, str(vm))
            try:
                console.wait_status(lambda s: s.ip is not None, timeout=300)
            finally:
                console.close()
        print(f"console sessions, full raw framebuffer updates back to back for "
              f"{args.seconds:g} s, over 2 guests (TCG) on one private libvirtd, 2 cores")
        print(f"{'sessions':>8} {'path':>6} {'updates/s':>10} {'MB/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8}   relay/direct")
        for n in counts:
            direct = asyncio.run(measure(stack, vms, n, args.seconds, "direct"))
            relay = asyncio.run(measure(stack, vms, n, args.seconds, "relay"))
            for path, figures in (("direct", direct), ("relay", relay)):
                ratio = "" if path == "direct" else (
                    f"   {relay['mbs'] / direct['mbs']:.0%} of throughput, "
                    f"+{relay['p50'] - direct['p50']:.1f} ms p50")
                print(f"{n:>8} {path:>6} {figures['updates']:>10.1f} {figures['mbs']:>8.1f} "
                      f"{figures['p50']:>8.1f} {figures['p99']:>8.1f}{ratio}", flush=True)
        print("goal: 50 concurrent sessions, relay throughput at least 50% of direct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
