"""Schemathesis against the admin API's own OpenAPI document, on a live loopback server.

The API runs on the embedded SQLite store with the sample inventory and every read model
followed, and no kernel or workers (accepted operations stay pending). Every request is
signed with an admin key (CK1-HMAC-SHA256) once its final body and URL are known: by a
`requests` auth on the session, which runs on the prepared request, after schemathesis
serialized the body and the query (its own auth providers run before that). Every check
schemathesis has runs on every answer, in its examples, coverage and fuzzing phases
(`support.fuzzing`): no 5xx; status, content type, headers and body as the document says;
schema-valid requests accepted (2xx, or a refusal of the platform's state: 404, 409) and
invalid ones refused; an undeclared method answered 405 with `Allow`. And a refused call
(status >= 400) must leave the log head where it was.
"""

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from schemathesis.checks import CheckContext
from support.fuzzing import assert_every_check_enabled, every_check, fuzz_operation

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
from kernel.store.application import KernelApplication
from projections.catalog import MODELS

MAX_EXAMPLES = 30  # fuzzed cases per operation (and pinned id), besides the coverage phase
DEADLINE_MS = 5_000


class CK1Signer(requests.auth.AuthBase):
    """Signs each prepared request (final method, path?query, key and body) with a key, and
    notes the log head just before it is sent."""

    def __init__(self, key: ApiKey, app: KernelApplication) -> None:
        self.key, self.app = key, app
        self.head_before = 0

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        data = body.encode() if isinstance(body, str) else bytes(body)  # type: ignore[arg-type]
        ts = str(int(time.time()))
        r.headers.update({KEY_ID_HEADER: self.key.id, TIMESTAMP_HEADER: ts,
                          SIGNATURE_HEADER: sign(
                              self.key.secret, timestamp=ts, subject=f"{r.method} {r.path_url}",
                              idempotency_key=r.headers.get(IDEMPOTENCY_KEY_HEADER, ""),
                              body=data)})
        self.head_before = self.head()
        return r

    def head(self) -> int:
        """The log head: the position of the last event written."""
        return int(self.app.recorder.max_notification_id() or 0)


class LiveApi:
    """The admin API served by aiohttp on a loopback port, from a thread of its own."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(make_app(self.context, own_context=False), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> "LiveApi":
        self._thread.start()
        assert self._ready.wait(10), "the admin API did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)
        self._loop.close()


class Served:
    """What the module's tests share: the live API, its signer and a signed session."""

    def __init__(self, api: LiveApi, signer: CK1Signer) -> None:
        self.api, self.signer = api, signer
        self.session = requests.Session()
        self.session.auth = signer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("api-schemathesis")
    settings = Settings(data_dir=tmp / "data", store="sqlite")
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)
    keyring = Keyring(tmp / "keys.json")
    admin = keyring.create(actor="admin", role="admin")
    try:
        with projection_runners(settings, list(MODELS)) as runners:
            for runner in runners:
                runner.run_once()
                runner.start()
            context = ApiContext(command_catalog(platform, engine), KeyringAccess(keyring),
                                 platform.app, {r.name: r for r in runners}, engine=engine,
                                 wait_timeout=2.0)
            try:
                with LiveApi(context) as api:
                    served = Served(api, CK1Signer(admin, platform.app))
                    yield served
                    served.session.close()
            finally:
                for runner in runners:
                    runner.stop()
                context.close()
    finally:
        platform.close()


def refusal_writes_nothing(signer: CK1Signer) -> Any:
    """A check: a refused call (status >= 400) leaves the log head where it was."""

    def check(ctx: CheckContext, response: schemathesis.Response, case: Any) -> None:
        if response.status_code < 400:
            return
        after = signer.head()
        assert after == signer.head_before, (
            f"{case.method} {case.formatted_path} answered {response.status_code} but the "
            f"log head moved from {signer.head_before} to {after}")

    check.__name__ = "refusal_writes_nothing"
    return check


@pytest.mark.timeout(180)
def test_the_api_keeps_its_document(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.api.url}/v1/openapi.json")
    assert_every_check_enabled(schema)
    # Random ids find nothing: also send the routes of hosts and templates real ones.
    known = {f"/v1/{name}/{{id}}": [row["id"] for row in served.session.get(
        f"{served.api.url}/v1/{name}?limit=3").json()["items"]]
        for name in ("hosts", "templates")}
    assert all(known.values()), known
    no_writes = refusal_writes_nothing(served.signer)
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        runs: list[dict[str, str] | None] = [None]
        for prefix, ids in known.items():
            if operation.path.startswith(prefix):
                runs += [{"id": i} for i in ids[:2]]
        for pinned in runs:
            fuzz_operation(operation, served.session, failures, max_examples=MAX_EXAMPLES,
                           deadline_ms=DEADLINE_MS, additional_checks=[no_writes],
                           path_parameters=pinned)
    assert operations > 50
    assert not failures, f"{len(failures)} failures (checks: {', '.join(every_check())}):\n" \
        + "\n\n".join(f"{k}\n  {v}" for k, v in sorted(failures.items()))
