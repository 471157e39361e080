"""Resource limits at the API: a deploy past the account's limit is refused before it runs."""

import dataclasses
import json
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestClient, TestServer

from aggregates.errors import ForbiddenError
from gateways.access import ApiKey, Keyring, KeyringAccess, LayeredAccess
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from kernel.contracts.access import Principal

from .conftest import Api


class Capped:
    """An ACL stand-in that governs one account, capped at zero VMs."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, dict[str, int], dict[str, int]]] = []

    def authenticate(self, request: Any) -> Principal:
        raise AssertionError("only keyring keys sign here")

    def authenticate_bearer(self, token: str) -> Principal:
        raise AssertionError

    def authorize(self, principal: Principal, tag: str, *, owner: str | None = None) -> None:
        raise AssertionError

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        raise AssertionError

    def governs(self, account: str) -> bool:
        return account == "capped"

    def domain_accounts(self, account: str) -> dict[str, tuple[str, ...]]:
        return {"ROOT/team": ("capped", "neighbour")}

    def check_limits(self, account: str, usage: Any, delta: Any, *,
                     domain_usage: Any = None) -> None:
        self.checked.append((account, dict(usage), dict(delta)))
        self.domain_usage = domain_usage
        if usage["vms"] + delta["vms"] > 0:
            raise ForbiddenError(f"account {account}: max_vms 0 would be passed")


def test_a_deploy_past_its_accounts_limit_is_refused_and_writes_nothing(
        api_env: tuple[ApiContext, ApiKey, Keyring, dict[str, UUID]], monkeypatch: Any) -> None:
    import asyncio

    from gateways import quotas

    real_usage = quotas.usage

    def usage(ctx: ApiContext, account: str) -> dict[str, int]:
        found = real_usage(ctx, account)  # the read models: no VM for anyone yet
        return {**found, "vms": 1} if account == "neighbour" else found

    monkeypatch.setattr(quotas, "usage", usage)
    ctx, admin, keyring, ids = api_env
    capped = Capped()
    ctx = dataclasses.replace(ctx, access=LayeredAccess(capped, KeyringAccess(keyring)))

    def deploy(account: str) -> bytes:
        return json.dumps({"name": f"vm-{account}", "account": account,
                           "zone_id": str(ids["zone"]),
                           "service_offering_id": str(ids["offering"]),
                           "template_id": str(ids["template"])}).encode()

    async def main() -> None:
        client = TestClient(TestServer(make_app(ctx, own_context=False)))
        await client.start_server()
        api = Api(client, admin, ctx, ids)
        try:
            head = api.head()
            status, err = await api.json("POST", "/v1/vms", deploy("capped"))
            assert status == 403 and "max_vms" in err["error"]["message"], err
            assert api.head() == head
            [(account, usage, delta)] = capped.checked
            assert (account, usage["vms"], delta["vms"]) == ("capped", 0, 1)
            # the domain's usage counts every account of its subtree
            assert capped.domain_usage == {"ROOT/team": {**usage, "vms": 1}}
            assert delta["cpu_cores"] > 0 and delta["memory_mib"] > 0
            # an account the ACL does not govern has no limits here; the command runs (the
            # template is not downloaded, so it is refused by the command itself: 409)
            status, err = await api.json("POST", "/v1/vms", deploy("free"))
            assert status == 409 and "download it first" in err["error"]["message"], err
            assert len(capped.checked) == 1
        finally:
            await client.close()

    asyncio.run(main())
