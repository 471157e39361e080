"""The access matrix through the admin API: every role x every endpoint x own, child, sibling
and parent domain's resources.

The ACL tree is ROOT{ops: root} > ROOT/parent{parent_acct} > ROOT/parent/child{child_acct:
dadmin (domain admin), alice (user)} > ROOT/parent/child/sub{sub_acct}, and ROOT/parent/sibling
{sib_acct}. Each tenant account owns a deployed VM, its root volume and a snapshot of it.

Expected: the root admin reaches everything; the child's domain admin its subtree (child_acct
and sub_acct), never its sibling's or parent's; the user its own account only. Another tenant's
resource is not visible (404, lists never show it), a refused mutation writes nothing to the
platform log, the platform's own models (hosts, operations, audit) and commands are for the
root admin only (403), and every refusal (403, or a 404 that hides another tenant's resource)
is an AccessDenied event in the ACL's log naming the actor and the command.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregates.snapshot import Snapshot
from aggregates.template import Template
from gateways.access import Keyring, KeyringAccess, LayeredAccess
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from kernel.bootstrap import SAMPLE_INVENTORY, command_catalog, open_engine
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.cloud.vms import DeployVm
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
from services.acl.access import AclAccess
from services.acl.model import AccessDenial
from services.acl.service import AclService

GIB = 1024**3
ROLES = ("root", "dadmin", "alice")
TARGETS = ("own", "sub", "sibling", "parent")
ACCOUNT = {"own": "child_acct", "sub": "sub_acct", "sibling": "sib_acct",
           "parent": "parent_acct"}
# Which targets each role may reach.
REACH = {"root": set(TARGETS), "dadmin": {"own", "sub"}, "alice": {"own"}}
TENANT_MODELS = ("vms", "volumes", "snapshots")
PLATFORM_MODELS = ("hosts", "operations", "audit")
SHARED_MODELS = ("templates", "networks", "inventory")  # the catalog every tenant deploys from
ACCESS_STATUSES = frozenset({401, 403, 404})
# Past access control: the command ran (200, 202) or its own rules refused it (409, 422: the
# VMs never leave Allocated here, as no subsystem answers their steps).
PASSED_STATUSES = frozenset({200, 202, 409, 422})
_decode = msgspec.json.Decoder()


@dataclass
class World:
    """The API's context, the ACL, each role's key and each target's resources."""

    ctx: ApiContext
    acl: AclService
    keys: dict[str, tuple[str, str]]  # role -> (key id, secret)
    resources: dict[str, dict[str, UUID]]  # target -> vm, volume, snapshot, operation
    ids: dict[str, UUID]  # zone, offering, template, image_store, host, pool


def _first(app: Any, topic: str) -> UUID:
    return next(UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=10_000, topics=(topic,)))


def _catch_up(ctx: ApiContext) -> None:
    head = ctx.app.recorder.max_notification_id() or 0
    for runner in ctx.runners.values():
        runner.wait(head, timeout=10)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = Settings(data_dir=tmp_path / "data", store="sqlite")
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)
    app = platform.app
    ids = {"zone": _first(app, "zone.Created"),
           "offering": _first(app, "service_offering.Created"),
           "template": _first(app, "template.Registered"),
           "image_store": _first(app, "image_store.Added"),
           "host": _first(app, "host.Registered"),
           "pool": _first(app, "storage_pool.Created")}
    template: Template = app.repository.get(ids["template"])
    template.start_download(ids["image_store"])
    template.download_completed(2 * GIB)
    app.save(template)

    acl = AclService.open(settings, create_table=True)
    acl.create_account("ops", domain="ROOT")
    acl.create_domain("parent")
    acl.create_domain("child", parent="ROOT/parent")
    acl.create_domain("sub", parent="ROOT/parent/child")
    acl.create_domain("sibling", parent="ROOT/parent")
    for target, domain in (("own", "ROOT/parent/child"), ("sub", "ROOT/parent/child/sub"),
                           ("sibling", "ROOT/parent/sibling"), ("parent", "ROOT/parent")):
        acl.create_account(ACCOUNT[target], domain=domain)
    acl.create_user("root", account="ops", role="root_admin", password="rootpass1")
    acl.create_user("dadmin", account="child_acct", role="domain_admin", password="dadmin123")
    acl.create_user("alice", account="child_acct", role="user", password="alicepass")
    keys = {}
    for role in ROLES:
        key, secret = acl.create_key(role)
        keys[role] = (key.key_id, secret)

    catalog = command_catalog(platform, engine)
    resources: dict[str, dict[str, UUID]] = {}
    for target in TARGETS:
        deploy = DeployVm(name=f"vm-{target}", account=ACCOUNT[target], zone_id=ids["zone"],
                          service_offering_id=ids["offering"], template_id=ids["template"])
        outcome = catalog["vm.deploy"][1](deploy, idempotency_key=f"setup-{target}",
                                          actor="setup")
        result = _decode.decode(outcome.result)
        snapshot = Snapshot.allocate(name=f"snap-{target}", account=ACCOUNT[target],
                                     zone_id=ids["zone"], volume_id=UUID(result["volume_id"]),
                                     volume_size_bytes=2 * GIB)
        app.save(snapshot)
        resources[target] = {"vm": UUID(result["vm_id"]),
                             "volume": UUID(result["volume_id"]),
                             "operation": UUID(result["operation_id"]),
                             "snapshot": snapshot.id}

    access = LayeredAccess(AclAccess(acl), KeyringAccess(Keyring(tmp_path / "keys.json")))
    with projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.run_once()
            runner.start()
        ctx = ApiContext(catalog, access, app, {r.name: r for r in runners}, engine=engine,
                         wait_timeout=2.0)
        try:
            _catch_up(ctx)
            yield World(ctx, acl, keys, resources, ids)
        finally:
            for runner in runners:
                runner.stop()
            ctx.close()
            acl.close()
            platform.close()


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Cell:
    """One request of the matrix and what it must answer."""

    role: str
    target: str  # a target of TARGETS, or "-" for an endpoint with none
    method: str
    path: str
    body: dict[str, Any] | None
    expect: str  # "ok" (access passes), "hidden" (404), "forbidden" (403)
    tag: str  # the command (or read) an audited refusal names
    list_accounts: frozenset[str] | None = None  # a list: exactly these accounts' rows


@dataclass
class Outcome:
    """What a cell answered, and what it should have."""

    cell: Cell
    problems: list[str] = field(default_factory=list)


def _expect(role: str, target: str) -> str:
    return "ok" if target in REACH[role] else "hidden"


def cells(world: World) -> list[Cell]:
    """Every role x endpoint x target."""
    out: list[Cell] = []
    ids = world.ids
    for role in ROLES:
        seen = frozenset(ACCOUNT[t] for t in REACH[role])
        for model in TENANT_MODELS:
            out.append(Cell(role, "-", "GET", f"/v1/{model}", None, "ok", "",
                            list_accounts=seen))
        for model in SHARED_MODELS:
            out.append(Cell(role, "-", "GET", f"/v1/{model}", None, "ok", ""))
        for model in PLATFORM_MODELS:
            expect = "ok" if role == "root" else "forbidden"
            out.append(Cell(role, "-", "GET", f"/v1/{model}", None, expect, model))
        for target in TARGETS:
            res, expect = world.resources[target], _expect(role, target)
            account = ACCOUNT[target]
            for model, kind in (("vms", "vm"), ("volumes", "volume"),
                                ("snapshots", "snapshot")):
                out.append(Cell(role, target, "GET", f"/v1/{model}/{res[kind]}", None, expect,
                                model))
                out.append(Cell(role, target, "GET", f"/v1/{model}?account={account}", None,
                                "ok", "", list_accounts=frozenset(
                                    {account} if expect == "ok" else ())))
            # The platform's own models, even for an operation of the role's own account.
            platform_expect = "ok" if role == "root" else "forbidden"
            out.append(Cell(role, target, "GET", f"/v1/operations/{res['operation']}", None,
                            platform_expect, "operations"))
            vm, volume = res["vm"], res["volume"]
            vm_actions: tuple[tuple[str, dict[str, Any]], ...] = (
                ("start", {}), ("stop", {}), ("reboot", {}), ("backup", {"target_dir": "/tmp/b"}),
                ("migrate", {"host_id": str(ids["host"])}), ("destroy", {}))
            volume_actions: tuple[tuple[str, dict[str, Any]], ...] = (
                ("detach", {}), ("resize", {"size_bytes": 4 * GIB}), ("snapshot", {}),
                ("attach", {"vm_id": str(vm)}), ("migrate", {"pool_id": str(ids["pool"])}),
                ("delete", {}))
            for action, body in vm_actions:
                out.append(Cell(role, target, "POST", f"/v1/vms/{vm}/{action}", body,
                                _mutation(role, target, f"vm.{action}"), f"vm.{action}"))
            for action, body in volume_actions:
                out.append(Cell(role, target, "POST", f"/v1/volumes/{volume}/{action}", body,
                                _mutation(role, target, f"volume.{action}"),
                                f"volume.{action}"))
            out.append(Cell(role, target, "POST", f"/v1/snapshots/{res['snapshot']}/revert",
                            {}, _mutation(role, target, "volume.revert"), "volume.revert"))
            # The generic route, the same command as a resource route.
            out.append(Cell(role, target, "POST", "/v1/commands/vm.stop",
                            {"vm_id": str(vm)}, _mutation(role, target, "vm.stop"),
                            "vm.stop"))
            out.append(Cell(role, target, "POST", "/v1/vms", {
                "name": f"new-{role}-{target}", "account": account,
                "zone_id": str(ids["zone"]), "service_offering_id": str(ids["offering"]),
                "template_id": str(ids["template"])},
                _mutation(role, target, "vm.deploy"), "vm.deploy"))
            out.append(Cell(role, target, "POST", f"/v1/operations/{res['operation']}/cancel",
                            {}, "ok" if role == "root" else "forbidden", "operation.cancel"))
        platform_cmd = "ok" if role == "root" else "forbidden"
        host = ids["host"]
        platform_calls: tuple[tuple[str, str, dict[str, Any] | None, str], ...] = (
                ("GET", f"/v1/hosts/{host}", None, "hosts"),
                ("POST", "/v1/commands/host.disable", {"host_id": str(host)}, "host.disable"),
                ("POST", f"/v1/hosts/{host}/enable", {}, "host.enable"),
                ("POST", f"/v1/templates/{ids['template']}/download",
                 {"image_store_id": str(ids["image_store"])}, "template.download"))
        for method, path, call_body, tag in platform_calls:
            out.append(Cell(role, "-", method, path, call_body, platform_cmd, tag))
    return out


def _mutation(role: str, target: str, tag: str) -> str:
    if target not in REACH[role]:
        return "hidden"
    if role != "root" and tag.endswith(".migrate"):
        return "forbidden"  # moving between hosts or pools is the platform's business
    return "ok"


# --------------------------------------------------------------------------- running it


def _denials(acl: AclService) -> list[tuple[str, str]]:
    out = []
    for note in acl.app.recorder.select_notifications(start=1, limit=1_000_000,
                                                      topics=(AccessDenial.AccessDenied.TOPIC,)):
        event = acl.app.mapper.to_domain_event(note)
        out.append((event.principal, event.command))  # type: ignore[attr-defined]
    return out


_nonce = itertools.count()


async def _request(client: TestClient, world: World, cell: Cell) -> tuple[int, Any]:
    key_id, secret = world.keys[cell.role]
    data = b"" if cell.body is None else json.dumps(cell.body).encode()
    # A fresh idempotency key signs every request anew (a signature is accepted once).
    idem = f"m-{next(_nonce)}-{uuid.uuid4().hex[:8]}"
    ts = str(int(time.time()))
    headers = {KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: ts, IDEMPOTENCY_KEY_HEADER: idem,
               SIGNATURE_HEADER: sign(secret, timestamp=ts, subject=f"{cell.method} {cell.path}",
                                      idempotency_key=idem, body=data)}
    if cell.body is not None:
        headers["Content-Type"] = "application/json"
    r = await client.request(cell.method, cell.path, data=data, headers=headers)
    return r.status, await r.json()


async def _check(client: TestClient, world: World, cell: Cell) -> Outcome:
    out = Outcome(cell)
    head = world.ctx.app.recorder.max_notification_id() or 0
    denied = len(_denials(world.acl))
    status, body = await _request(client, world, cell)
    if cell.expect == "ok":
        if status in ACCESS_STATUSES:
            out.problems.append(f"refused {status}: {body}")
        elif status not in PASSED_STATUSES or (cell.method == "GET" and status != 200):
            out.problems.append(f"answered {status}: {body}")
        if cell.list_accounts is not None and status == 200:
            shown = frozenset(row["account"] for row in body["items"])
            if shown != cell.list_accounts:
                out.problems.append(f"listed accounts {sorted(shown)}, expected "
                                    f"{sorted(cell.list_accounts)}")
        return out
    want = 404 if cell.expect == "hidden" else 403
    if status != want:
        out.problems.append(f"answered {status}, expected {want}: {body}")
    after = world.ctx.app.recorder.max_notification_id() or 0
    if after != head:
        out.problems.append(f"wrote {after - head} platform event(s)")
    new = _denials(world.acl)[denied:]
    if not any(actor == cell.role and cell.tag in command for actor, command in new):
        out.problems.append(f"no AccessDenied event naming {cell.role} and {cell.tag} "
                            f"(got {new})")
    return out


def test_every_role_reaches_exactly_its_own_subtree(world: World) -> None:
    matrix = cells(world)

    async def main() -> list[Outcome]:
        client = TestClient(TestServer(make_app(world.ctx, own_context=False)))
        await client.start_server()
        try:
            outcomes = []
            for cell in matrix:
                outcomes.append(await _check(client, world, cell))
                if cell.method == "POST":
                    _catch_up(world.ctx)  # the next reads see this write
            return outcomes
        finally:
            await client.close()

    failures = [o for o in asyncio.run(main()) if o.problems]
    table = "\n".join(f"{o.cell.role:7} {o.cell.target:8} {o.cell.method:4} {o.cell.path[:60]:60}"
                      f" expect {o.cell.expect:9} | {'; '.join(o.problems)[:300]}"
                      for o in failures)
    assert not failures, f"{len(failures)} of {len(matrix)} cells failed:\n{table}"
    assert len(matrix) > 200
