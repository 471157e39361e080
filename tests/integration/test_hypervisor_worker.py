"""The hypervisor plugin in a real worker: steps from JetStream, domains on a test-driver host."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import nats
import pytest

from aggregates.errors import StepFailedError
from gateways.stream.queries import ask
from gateways.stream.streams import ensure_streams
from gateways.stream.worker import Worker
from kernel.contracts.steps import (
    RESULTS_STREAM,
    StepMessage,
    StepOutcome,
    outcome_decoder,
    step_encoder,
)
from kernel.steps.hypervisor import DefineDomain, DiskSpec, DomainDefined, PowerChanged, StartDomain
from kernel.steps.inventory import (
    DomainInventory,
    InventoryDomains,
    InventoryStorage,
    StorageInventory,
)
from subsystems.libvirt.connections import close_all, connection
from subsystems.registry import load_registry


def step_of(args: msgspec.Struct, step_id: object = None) -> StepMessage:
    """A step message as the dispatcher publishes it, routed by the args' tag."""
    tag = type(args).__struct_config__.tag
    assert isinstance(tag, str)
    subsystem, _, action = tag.partition(".")
    return StepMessage(step_id=step_id or uuid4(), operation_id=uuid4(), attempt=1,  # type: ignore[arg-type]
                       subsystem=subsystem, action=action,
                       args=msgspec.Raw(msgspec.json.encode(args)))


async def wait_outcomes(js: nats.js.JetStreamContext, count: int) -> list[StepOutcome]:
    deadline = time.monotonic() + 15
    while (await js.stream_info(RESULTS_STREAM)).state.last_seq < count:
        assert time.monotonic() < deadline, "outcomes did not arrive"
        await asyncio.sleep(0.05)
    return [outcome_decoder.decode((await js.get_msg(RESULTS_STREAM, seq)).data or b"")
            for seq in range(1, count + 1)]


def test_worker_defines_and_starts_a_domain(nats_url: str, libvirt_uri: str) -> None:
    vm_id = uuid4()
    define = DefineDomain(vm_id=vm_id, name="i-2-1-VM", host_uri=libvirt_uri, cpu_cores=1,
                          cpu_mhz=1000, memory_mib=512, disks=(DiskSpec(path="/p/root"),))
    first = step_of(define)
    # the define arrives twice (a redelivered step id, as after a lost ack), then the start
    steps = [first, StepMessage(**{**msgspec.structs.asdict(first), "attempt": 2}),
             step_of(StartDomain(vm_id=vm_id, host_uri=libvirt_uri))]

    async def scenario() -> list[StepOutcome]:
        plugin = load_registry(["hypervisor"]).plugin("hypervisor").subsystem
        worker = Worker(plugin, servers=[nats_url])
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await asyncio.wait_for(worker.ready.wait(), 15)
            for step in steps:  # in order: the start depends on the define
                await js.publish(step.subject, step_encoder.encode(step),
                                 headers={"Nats-Msg-Id": step.msg_id})
                await wait_outcomes(js, steps.index(step) + 1)
            return await wait_outcomes(js, len(steps))
        finally:
            await nc.close()
            stop.set()
            await asyncio.wait_for(task, 30)

    try:
        outcomes = asyncio.run(scenario())
        assert all(o.ok for o in outcomes), [(o.error_code, o.message) for o in outcomes]
        defined = [msgspec.json.decode(o.result, type=DomainDefined) for o in outcomes[:2]]
        assert [d.created for d in defined] == [True, False]
        assert msgspec.json.decode(outcomes[2].result, type=PowerChanged).how == "started"
        # the worker ran in this process, so its connection is the one we look through
        dom = connection(libvirt_uri).lookupByUUIDString(str(vm_id))
        assert dom.isActive() and dom.name() == "i-2-1-VM"
        assert [d.name() for d in connection(libvirt_uri).listAllDomains()] == ["i-2-1-VM"]
    finally:
        close_all()


def test_worker_answers_read_only_queries_and_only_those(nats_url: str, tmp_path: Path,
                                                         libvirt_host_factory: Any) -> None:
    # `inventory` as a plain NATS request (what `audit reality` asks), nothing else: a step
    # that changes a host only ever comes through JetStream, from an operation in the log.
    from fixtures.libvirt_host import LibvirtTestDomain

    uri = libvirt_host_factory("kvm-q", domains=[LibvirtTestDomain(name="old", running=False)])

    async def scenario() -> None:
        plugin = load_registry(["hypervisor"]).plugin("hypervisor").subsystem
        worker = Worker(plugin, servers=[nats_url])
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            await asyncio.wait_for(worker.ready.wait(), 15)
            found = await ask(nc, "hypervisor", "inventory", InventoryDomains(host_uri=uri),
                              DomainInventory)
            assert [(d.name, d.state, d.defined_by) for d in found.domains] == \
                [("old", "shutoff", None)]
            with pytest.raises(StepFailedError) as unreachable:
                await ask(nc, "hypervisor", "inventory",
                          InventoryDomains(host_uri=f"test://{tmp_path}/nothing.xml"),
                          DomainInventory)
            assert unreachable.value.code == "host_unreachable" and unreachable.value.retryable
            with pytest.raises(StepFailedError) as no_worker:
                await ask(nc, "storage", "inventory", InventoryStorage(host_uri=uri),
                          StorageInventory, timeout=2)
            assert no_worker.value.code == "no_worker"
            with pytest.raises(ValueError):
                await ask(nc, "hypervisor", "start", StartDomain(vm_id=uuid4(), host_uri=uri),
                          PowerChanged)
            start = step_of(StartDomain(vm_id=uuid4(), host_uri=uri))
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request("queries.hypervisor.start", step_encoder.encode(start),
                                 timeout=2)
        finally:
            await nc.close()
            stop.set()
            await asyncio.wait_for(task, 30)

    try:
        asyncio.run(scenario())
    finally:
        close_all()
