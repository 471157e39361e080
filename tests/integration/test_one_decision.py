"""One command decision on a real stack: PostgreSQL (the platform's log, its read models and
the ACL's log) and a real nats-server. The admin API on loopback and the command intake on
NATS answer another tenant's VM the same way, not found (as a VM that does not exist), and
both audit the refusal."""

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nats
from aiohttp.test_utils import TestClient, TestServer
from support.tenants import two_tenants

from gateways.api.app import make_app
from gateways.api.context import ApiContext
from gateways.ownership import store_lookup
from gateways.stream.intake import COMMANDS_PREFIX, ERROR_HEADER, CommandIntake
from kernel.bootstrap.processes import projection_runners
from kernel.settings import Settings
from projections.catalog import MODELS

HIDDEN = ("not_found", "vm.stop: no such resource among the accounts bob may see")


def test_another_tenants_vm_is_not_found_over_http_and_nats_and_audited_on_both(
        tmp_path: Path, pg_dsn: str, nats_url: str) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=4,
                        nats_urls=(nats_url,), data_dir=tmp_path / "data")
    with two_tenants(settings) as t, projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.start()
        ctx = ApiContext(t.catalog, t.access, t.platform.app, {r.name: r for r in runners},
                         wait_timeout=10.0)
        intake = CommandIntake(t.catalog, t.access, [nats_url],
                               owner_lookup=store_lookup(t.platform.app.repository))
        path = f"/v1/vms/{t.vm_id}/stop"
        subject = COMMANDS_PREFIX + "vm.stop"
        stop_body = json.dumps({"vm_id": str(t.vm_id)}).encode()

        async def main() -> None:
            stop = asyncio.Event()
            serving = asyncio.create_task(intake.run(stop))
            await asyncio.wait_for(intake.ready.wait(), 10)
            client = TestClient(TestServer(make_app(ctx, own_context=False), host="127.0.0.1"))
            await client.start_server()
            nc = await nats.connect(nats_url)
            try:
                for runner in runners:  # the API finds the VM's owner in its read model
                    await asyncio.to_thread(runner.wait, t.head(), 20)
                head, denied = t.head(), len(t.denials())

                r = await client.post(path, data=b"{}", headers={
                    **t.signed("bob", f"POST {path}", b"{}"),
                    "Content-Type": "application/json"})
                over_http: dict[str, Any] = (await r.json())["error"]
                assert (r.status, r.headers[ERROR_HEADER]) == (404, "not_found"), over_http
                assert t.denials()[denied:] == [("bob", "vm.stop", "acme")]

                msg = await nc.request(subject, stop_body, timeout=20,
                                       headers=t.signed("bob", subject, stop_body))
                over_nats: dict[str, Any] = json.loads(msg.data)["error"]
                assert (msg.headers or {}).get(ERROR_HEADER) == "not_found", over_nats
                assert t.denials()[denied:] == [("bob", "vm.stop", "acme")] * 2

                assert (over_http["code"], over_http["message"]) == HIDDEN
                assert (over_nats["code"], over_nats["message"]) == HIDDEN

                # a VM that does not exist: the very same answer on both, audited too
                missing = str(uuid.uuid4())
                gone, data = f"/v1/vms/{missing}/stop", json.dumps({"vm_id": missing}).encode()
                r = await client.post(gone, data=b"{}", headers={
                    **t.signed("bob", f"POST {gone}", b"{}"),
                    "Content-Type": "application/json"})
                answer = (await r.json())["error"]
                assert (r.status, answer["code"], answer["message"]) == (404, *HIDDEN), answer
                msg = await nc.request(subject, data, timeout=20,
                                       headers=t.signed("bob", subject, data))
                answer = json.loads(msg.data)["error"]
                assert (answer["code"], answer["message"]) == HIDDEN, answer
                assert t.denials()[denied + 2:] == [("bob", "vm.stop", None)] * 2
                assert t.head() == head  # no refusal wrote to the platform's log
            finally:
                await nc.close()
                await client.close()
                stop.set()
                await asyncio.wait_for(serving, 30)
                for runner in runners:
                    await asyncio.to_thread(runner.stop)
                ctx.close()

        asyncio.run(main())
