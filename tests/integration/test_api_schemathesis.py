"""Schemathesis against the admin API's own OpenAPI document, on a live loopback server.

The API runs on the embedded SQLite store with the sample inventory and every read model
followed, and no kernel or workers (accepted operations stay pending). Every request is
signed with an admin key (CK1-HMAC-SHA256) once its final body and URL are known: by a
`requests` auth on the session, which runs on the prepared request, after schemathesis
serialized the body and the query (its own auth providers run before that). Each
response must not be a 5xx, must conform to the document (status code, content type, body
schema), and a refused call (status >= 400) must leave the log head where it was.
"""

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateways.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ApiKey,
    Keyring,
    KeyringAccess,
    sign,
)
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from gateways.cli.projections import projection_runners
from kernel.bootstrap import SAMPLE_INVENTORY, command_catalog, open_engine
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.store.application import KernelApplication
from kernel.store.migrate import migrate
from projections.catalog import MODELS

MAX_EXAMPLES = 10  # per operation and generation mode
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
    migrate(settings)
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


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


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


def fuzz(served: Served, operation: Any, mode: Any, **overrides: Any) -> None:
    """Send `operation` the cases schemathesis generates in `mode`, checking each answer."""
    no_writes = refusal_writes_nothing(served.signer)

    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, database=None,
                         derandomize=True, suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, **overrides))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(session=served.session, checks=CHECKS,
                               additional_checks=[no_writes])

    run()


@pytest.mark.timeout(180)
def test_the_api_keeps_its_document(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.api.url}/v1/openapi.json")
    # Random ids find nothing: also send the routes of hosts and templates real ones.
    known = {f"/v1/{name}/{{id}}": [row["id"] for row in served.session.get(
        f"{served.api.url}/v1/{name}?limit=3").json()["items"]]
        for name in ("hosts", "templates")}
    assert all(known.values()), known
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        runs: list[tuple[Any, dict[str, Any]]] = [(mode, {}) for mode in MODES]
        for prefix, ids in known.items():
            if operation.path.startswith(prefix):
                runs += [(MODES[0], {"path_parameters": {"id": i}}) for i in ids[:2]]
        for mode, overrides in runs:
            try:
                fuzz(served, operation, mode, **overrides)
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to negate in an operation without parameters
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # every operation's failures (a group), not the first
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}"
                                f"{overrides or ''}): {str(e)[:2000]}")
    assert operations > 50
    assert not failures, f"{len(failures)} failures:\n" + "\n\n".join(failures)
