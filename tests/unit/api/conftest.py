"""An admin API over a migrated SQLite store with the sample inventory, and a signing client."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from gateways.access import ApiKey, Keyring, KeyringAccess
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from kernel.bootstrap import SAMPLE_INVENTORY, command_catalog, open_engine
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from projections.catalog import MODELS


@dataclass
class Api:
    """A test client that signs its requests with a keyring key."""

    client: TestClient
    key: ApiKey
    context: ApiContext
    ids: dict[str, UUID]

    async def call(self, method: str, path: str, body: bytes | None = None, *,
                   key: ApiKey | None = None, idem: str | None = None,
                   headers: dict[str, str] | None = None, sign_it: bool = True
                   ) -> ClientResponse:
        key = key or self.key
        data = body or b""
        h: dict[str, str] = {}
        if body is not None:
            h["Content-Type"] = "application/json"
        if idem is not None:
            h[IDEMPOTENCY_KEY_HEADER] = idem
        if sign_it:
            ts = str(int(time.time()))
            h.update({KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
                      SIGNATURE_HEADER: sign(key.secret, timestamp=ts,
                                             subject=f"{method} {path}",
                                             idempotency_key=idem or "", body=data)})
        h.update(headers or {})
        return await self.client.request(method, path, data=data, headers=h)

    async def json(self, method: str, path: str, body: bytes | None = None,
                   **kw: Any) -> tuple[int, Any]:
        r = await self.call(method, path, body, **kw)
        return r.status, await r.json()

    def head(self) -> int:
        return self.context.app.recorder.max_notification_id() or 0


def _ids(app: Any, topic: str) -> list[UUID]:
    return [UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=10_000, topics=(topic,))]


@pytest.fixture
def api_env(tmp_path: Path) -> Iterator[tuple[ApiContext, ApiKey, Keyring, dict[str, UUID]]]:
    settings = Settings(data_dir=tmp_path / "data", store="sqlite")
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)
    keyring = Keyring(tmp_path / "keys.json")
    admin = keyring.create(actor="admin", role="admin")
    ids = {"zone": _ids(platform.app, "zone.Created")[0],
           "offering": _ids(platform.app, "service_offering.Created")[0],
           "template": _ids(platform.app, "template.Registered")[0],
           "image_store": _ids(platform.app, "image_store.Added")[0]}
    with projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.run_once()
            runner.start()
        ctx = ApiContext(command_catalog(platform, engine), KeyringAccess(keyring),
                         platform.app, {r.name: r for r in runners}, engine=engine,
                         wait_timeout=2.0)
        try:
            yield ctx, admin, keyring, ids
        finally:
            for runner in runners:
                runner.stop()
            platform.close()


Scenario = Callable[[Api], Awaitable[None]]


@pytest.fixture
def run_api(api_env: tuple[ApiContext, ApiKey, Keyring, dict[str, UUID]]
            ) -> Callable[[Scenario], None]:
    ctx, admin, _keyring, ids = api_env

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            client = TestClient(TestServer(make_app(ctx, own_context=False)))
            await client.start_server()
            try:
                await scenario(Api(client, admin, ctx, ids))
            finally:
                await client.close()

        asyncio.run(main())

    return run


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
