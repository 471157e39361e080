"""Admin API read throughput on 100k VMs: list and single GET, beside a bare aiohttp endpoint.

The vms read model (SQLite, in a temporary folder) is filled with N rows through the view's
own upsert statement, in one transaction. The API (signed requests, keyring access, the
real handlers) and a bare aiohttp endpoint answering a pre-encoded page of the same size
run in a child process on loopback; this process is the client: C concurrent requests for
D seconds per case. Goal (issue 7): list p99 <= 50 ms, and >= 40% of the bare endpoint's
requests/s.

    .venv/bin/python bench/api.py [--vms 100000] [--concurrency 16] [--seconds 5]
"""

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

THREADS = int(__import__("os").environ.get("API_THREADS", "4"))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _fill(settings: Any, n: int) -> list[str]:
    from projections.catalog import MODELS
    from projections.views import _to_sqlite, open_view

    view: Any = open_view(MODELS["vms"], settings, create_table=True)
    now = datetime.now(UTC)
    zone, offering = uuid.uuid4(), uuid.uuid4()
    hosts = [uuid.uuid4() for _ in range(8)]
    ids = sorted(uuid.uuid4() for _ in range(n))
    rows = [{"id": i, "name": f"vm-{k}", "account": f"acct-{k % 50}", "state": "Running",
             "power_state": "PowerOn", "host_id": hosts[k % 8], "destination_host_id": None,
             "zone_id": zone, "offering_id": offering, "last_error": "", "version": 3,
             "updated_at": now} for k, i in enumerate(ids)]
    with view.datastore.transaction(commit=True) as c:
        c.executemany(view._upsert, [[_to_sqlite(col.type, r[col.name])
                                      for col in view.model.columns] for r in rows])
    view.close()
    return [str(i) for i in ids[:: max(1, n // 1000)]]


def _serve(data_dir: str, keys: str, port_q: Any, stop_ev: Any) -> None:
    from aiohttp import web

    from gateways.access import Keyring, KeyringAccess
    from gateways.api.app import make_app
    from gateways.api.context import ApiContext
    from kernel.settings import Settings
    from kernel.store.application import PlatformApplication, open_application
    from projections.catalog import MODELS
    from projections.runner import ProjectionRunner
    from projections.views import open_view

    settings = Settings(data_dir=Path(data_dir), store="sqlite")
    app_ = open_application(PlatformApplication, settings)
    runners = {"vms": ProjectionRunner(app_, open_view(MODELS["vms"], settings))}
    ctx = ApiContext({}, KeyringAccess(Keyring(Path(keys))), app_, runners, threads=THREADS)
    api = make_app(ctx)
    page = open_view(MODELS["vms"], settings).list(limit=100).rows
    import msgspec

    body = msgspec.json.encode({"items": page, "next": None, "next_after": None})

    async def bare(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        bare_app = web.Application()
        bare_app.router.add_get("/bare", bare)
        runners_ = [web.AppRunner(api, access_log=None), web.AppRunner(bare_app,
                                                                       access_log=None)]
        ports = []
        for r in runners_:
            await r.setup()
            site = web.TCPSite(r, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        port_q.put(ports)
        while not stop_ev.is_set():
            await asyncio.sleep(0.1)
        for r in runners_:
            await r.cleanup()

    asyncio.run(main())


async def _measure(url_of: Any, headers_of: Any, concurrency: int,
                   seconds: float) -> tuple[float, float, float, int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker(w: int) -> None:
            nonlocal errors
            k = w
            while time.perf_counter() < deadline:
                url, path = url_of(k)
                k += concurrency
                started = time.perf_counter()
                async with session.get(url, headers=headers_of(path)) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000, errors


def main() -> None:
    """Fill, serve, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    from gateways.access import Keyring
    from kernel.bootstrap.migrations import migrate_all
    from kernel.contracts.access import sign
    from kernel.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", store="sqlite")
        migrate_all(settings)
        t0 = time.perf_counter()
        sample = _fill(settings, args.vms)
        print(f"filled the vms read model with {args.vms:,} rows in "
              f"{time.perf_counter() - t0:.1f} s")
        key = Keyring(Path(tmp) / "keys.json").create(actor="bench", role="admin")
        ctx = mp.get_context("spawn")
        port_q, stop_ev = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(str(settings.data_dir), str(Path(tmp) /
                                                                            "keys.json"),
                                                port_q, stop_ev))
        proc.start()
        api_port, bare_port = port_q.get(timeout=60)

        def signed(path: str) -> dict[str, str]:
            ts = str(int(time.time()))
            return {"Cloudkernel-Key-Id": key.id, "Cloudkernel-Timestamp": ts,
                    "Cloudkernel-Signature": sign(key.secret, timestamp=ts,
                                                  subject=f"GET {path}", idempotency_key="",
                                                  body=b"")}

        def list_url(k: int) -> tuple[str, str]:
            path = "/v1/vms?limit=100"
            if k % 2:
                path += f"&after={sample[k % len(sample)]}"
            return f"http://127.0.0.1:{api_port}{path}", path

        def get_url(k: int) -> tuple[str, str]:
            path = f"/v1/vms/{sample[k % len(sample)]}"
            return f"http://127.0.0.1:{api_port}{path}", path

        def bare_url(_: int) -> tuple[str, str]:
            return f"http://127.0.0.1:{bare_port}/bare", "/bare"

        try:
            results = {}
            for name, url_of, headers_of in (
                    ("bare aiohttp JSON (limit)", bare_url, lambda _p: {}),
                    ("GET /v1/vms?limit=100", list_url, signed),
                    ("GET /v1/vms/{id}", get_url, signed)):
                asyncio.run(_measure(url_of, headers_of, args.concurrency, 0.5))  # warm up
                results[name] = asyncio.run(_measure(url_of, headers_of, args.concurrency,
                                                     args.seconds))
        finally:
            stop_ev.set()
            proc.join(10)
    bare_rps = results["bare aiohttp JSON (limit)"][0]
    print(f"\n{args.vms:,} VMs, concurrency {args.concurrency}, {args.seconds:g} s per case")
    print(f"{'case':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
          f"{'of bare':>9}")
    for name, (rps, p50, p99, errors) in results.items():
        print(f"{name:<28}{rps:>10,.0f}{p50:>10.2f}{p99:>10.2f}{errors:>8}"
              f"{rps / bare_rps:>9.0%}")


if __name__ == "__main__":
    main()
