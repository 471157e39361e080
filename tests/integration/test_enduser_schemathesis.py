"""Schemathesis against the End User API's own OpenAPI document, on a real stack: PostgreSQL,
nats-server, the kernel with its workers on libvirt's test driver, the relay, the intake and
the ACL responder (`platform_edges`), and the service as it runs in production (`serve`) on a
loopback port.

A tenant (alice of acme) logs in and every generated request carries her bearer token
(schemathesis' auth, so that the cases without it are sent without it). Every check
schemathesis has runs on every answer, in its examples, coverage and fuzzing phases
(`support.fuzzing`): no 5xx, the status, content type, headers and body as the document
says, schema-valid requests accepted and invalid ones refused, a missing token refused, an
undeclared method answered 405 with `Allow`; and a refused call (status >= 400) must leave
the platform's log head where it was.
"""

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from schemathesis.checks import CheckContext
from support.cloud import prepare, running_cloud, write_inventory
from support.fuzzing import assert_every_check_enabled, every_check, fuzz_operation
from support.services import free_port, platform_edges

from kernel.bootstrap.migrations import migrate_all
from kernel.settings import Settings
from services.acl.service import AclService
from services.enduser import serve

MAX_EXAMPLES = 50  # fuzzed cases per operation, besides the coverage phase
DEADLINE_MS = 10_000


class Bearer(requests.auth.AuthBase):
    """Notes the log head just before each request is sent. The tenant's token is set by
    schemathesis' own auth (`fuzz_all`), so that the cases that leave it out or spoil it (and
    the checks that probe without it) are sent as generated."""

    def __init__(self, token: str, app: Any) -> None:
        self.token, self.app = token, app
        self.head_before = 0

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self.head_before = self.head()
        return r

    def head(self) -> int:
        """The log head: the position of the last event written."""
        return int(self.app.recorder.max_notification_id() or 0)


def refusal_writes_nothing(auth: Bearer) -> Any:
    """A check: a refused call (status >= 400) leaves the log head where it was."""

    def check(ctx: CheckContext, response: schemathesis.Response, case: Any) -> None:
        if response.status_code < 400:
            return
        after = auth.head()
        assert after == auth.head_before, (
            f"{case.method} {case.formatted_path} answered {response.status_code} but the "
            f"log head moved from {auth.head_before} to {after}")

    check.__name__ = "refusal_writes_nothing"
    return check


def fuzz_all(base: str, auth: Bearer) -> tuple[int, dict[str, str]]:
    """Every operation of the live document with every check: (operations, failures)."""
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json")
    assert_every_check_enabled(schema)
    token = auth.token

    @schema.auth(refresh_interval=None)
    class TenantToken:
        """The tenant's bearer token, on every case that does not leave it out."""

        def get(self, case: schemathesis.Case, ctx: Any) -> str:
            return token

        def set(self, case: schemathesis.Case, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    session = requests.Session()
    session.auth = auth
    no_writes = refusal_writes_nothing(auth)
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        fuzz_operation(operation, session, failures, max_examples=MAX_EXAMPLES,
                       deadline_ms=DEADLINE_MS, additional_checks=[no_writes])
    session.close()
    return operations, failures


@pytest.mark.timeout(240)
def test_the_end_user_api_keeps_its_document(
        tmp_path: Path, pg_dsn: str, nats_url: str, libvirt_uri: str) -> None:
    port = free_port()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data", enduser_port=port,
                        service_heartbeat_seconds=0.5)
    migrate_all(settings)
    inventory = write_inventory(tmp_path, [libvirt_uri])
    acl = AclService.open(settings)
    acl.create_account("acme", domain="ROOT")
    acl.create_user("alice", account="acme", role="user", password="alice-password")

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            async with platform_edges(settings, cloud, acl), aiohttp.ClientSession() as http:
                stop, ready = asyncio.Event(), asyncio.Event()
                service = asyncio.create_task(serve(settings, stop, ready))
                await asyncio.wait([service, asyncio.create_task(ready.wait())],
                                   timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert ready.is_set(), service.exception() if service.done() else "not ready"
                base = f"http://127.0.0.1:{port}"
                try:
                    async with http.get(f"{base}/healthz") as r:
                        assert (r.status, await r.json()) == (
                            200, {"status": "ok", "service": "enduser", "enabled": True})
                    async with http.post(f"{base}/v1/login", json={
                            "username": "alice", "password": "alice-password"}) as r:
                        assert r.status == 200, await r.text()
                        token = (await r.json())["token"]
                    auth = Bearer(token, cloud.app)
                    # The catalog answers real rows, checked against the document below.
                    deadline = asyncio.get_running_loop().time() + 20
                    while True:
                        async with http.get(f"{base}/v1/catalog", headers={
                                "Authorization": f"Bearer {token}"}) as r:
                            if [t["id"] for t in (await r.json())["templates"]] == [
                                    str(ids.template_id)]:
                                break
                        assert asyncio.get_running_loop().time() < deadline
                        await asyncio.sleep(0.1)
                    operations, failures = await asyncio.to_thread(fuzz_all, base, auth)
                    assert operations == 20  # every route of the document
                    assert not failures, (
                        f"{len(failures)} failures (checks: {', '.join(every_check())}):\n"
                        + "\n\n".join(f"{k}\n  {v}" for k, v in sorted(failures.items())))
                finally:
                    stop.set()
                    await asyncio.wait_for(service, 30)

    try:
        asyncio.run(scenario())
    finally:
        acl.close()
