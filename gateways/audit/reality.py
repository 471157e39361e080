"""The reality check against a running platform: the model from the log, each host's libvirt
objects from the workers that hold its connection (their read-only `inventory` actions, as
NATS requests), compared by `kernel.reality.differences.compare`.

    report = audit_reality(app, ["nats://127.0.0.1:4322"])           # blocking
    report = await check_reality(app, servers, host="kvm-a1")        # in an event loop

It checks at quiescence: what an operation holds is skipped and listed as skipped. The
model is read before and after the hosts are asked, and an entity held at either moment
counts as held; when the log moved meanwhile, the check is taken again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client

from aggregates.errors import KernelError, ValidationError
from gateways.stream.queries import ask
from kernel.contracts.connection import connect
from kernel.reality.differences import HostObjects, HostView, Model, RealityReport, compare
from kernel.reality.fleet import read_model
from kernel.steps.inventory import (
    DomainInventory,
    InventoryDomains,
    InventoryNetworks,
    InventoryStorage,
    NetworkInventory,
    StorageInventory,
)
from kernel.store.application import KernelApplication

__all__ = ["audit_reality", "check_reality", "select_hosts"]


def select_hosts(model: Model, host: str | None) -> list[HostView]:
    """The hosts to check: all, or the one named by name or URI (ValidationError if none)."""
    if host is None:
        return list(model.hosts)
    chosen = [h for h in model.hosts if host in (h.name, h.uri)]
    if not chosen:
        known = ", ".join(sorted(h.name for h in model.hosts)) or "none registered"
        raise ValidationError(f"--host: no host is named or has the URI {host!r} "
                              f"(hosts: {known})")
    return chosen


async def check_reality(app: KernelApplication, servers: Sequence[str], *,
                        host: str | None = None, timeout: float = 10.0,
                        attempts: int = 3) -> RealityReport:
    """Compare every host's (or one host's) libvirt objects with the model. When the log
    moved while the hosts were asked, the hosts may show a change the model read before it
    did not (or the reverse): the check is taken again, up to `attempts` times, and a report
    taken while the log kept moving says so (`settled` False)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    look = await asyncio.to_thread(_look, app, host)  # a bad --host: refused before NATS
    nc = await connect(servers, name="cloudkernel-audit-reality", timeout=timeout)
    try:
        for attempt in range(1, attempts + 1):
            head, before, hosts = look
            # the image stores and backup targets are listed once, beside the first host's
            objects = await asyncio.gather(*(_objects_of(nc, before, h, timeout, shared=i == 0)
                                             for i, h in enumerate(hosts)))
            after = await asyncio.to_thread(read_model, app)
            settled = await asyncio.to_thread(_head, app) == head
            if settled or attempt == attempts:
                report = compare(dataclasses.replace(after, busy=before.busy | after.busy),
                                 objects)
                return dataclasses.replace(report, settled=settled)
            look = await asyncio.to_thread(_look, app, host)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    raise AssertionError("unreachable: the last attempt returns")


def _look(app: KernelApplication, host: str | None) -> tuple[int, Model, list[HostView]]:
    """The log's head, then the model, and the hosts to ask."""
    head = _head(app)
    model = read_model(app)
    return head, model, select_hosts(model, host)


def _head(app: KernelApplication) -> int:
    return int(app.recorder.max_notification_id() or 0)


def audit_reality(app: KernelApplication, servers: Sequence[str], *,
                  host: str | None = None, timeout: float = 10.0) -> RealityReport:
    """`check_reality` for a caller without an event loop."""
    return asyncio.run(check_reality(app, servers, host=host, timeout=timeout))


async def _objects_of(nc: Client, model: Model, host: HostView, timeout: float, *,
                      shared: bool) -> HostObjects:
    """Ask the hypervisor, storage and networkelement workers for what the host has; what
    a worker could not tell (no worker, an unreachable host) is named in `errors`."""
    answers: list[Any] = list(await asyncio.gather(
        ask(nc, "hypervisor", "inventory", InventoryDomains(host_uri=host.uri),
            DomainInventory, timeout=timeout),
        ask(nc, "storage", "inventory",
            InventoryStorage(host_uri=host.uri,
                             directories=model.directories_of(host.id, shared=shared)),
            StorageInventory, timeout=timeout),
        ask(nc, "networkelement", "inventory", InventoryNetworks(host_uri=host.uri),
            NetworkInventory, timeout=timeout),
        return_exceptions=True))
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, KernelError):
            raise answer
    errors = tuple(str(a) for a in answers if isinstance(a, KernelError))
    domains, storage, networks = (None if isinstance(a, KernelError) else a for a in answers)
    return HostObjects(host_id=host.id, domains=domains, storage=storage, networks=networks,
                       errors=errors)
