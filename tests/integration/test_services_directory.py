"""The Services Directory and Framework on real PostgreSQL, a real nats-server and the real intake.

A `ServiceRuntime` registers through the NATS command intake (signed with its own key),
heartbeats into the KV bucket, follows the admin's switch through its registration's public
events (published by the real relay) and consumes with durable consumers. Orchestration is
shown to keep working whether a service is enabled, disabled or killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import pytest
from nats.aio.client import Client
from support.cloud import prepare, running_cloud, write_inventory

from aggregates.errors import NotFoundError, ValidationError
from gateways.access import Keyring, KeyringAccess, keys_path
from gateways.service_keys import issue_service_key
from gateways.stream.intake import CommandIntake
from gateways.stream.relay import EventRelay
from gateways.stream.services_directory import DirectoryServer, StoreRegistrations, ask_directory
from kernel.bootstrap import Platform, command_catalog, open_engine, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.contracts.events import EVENTS_STREAM
from kernel.contracts.liveness import live_instances
from kernel.event_feed import EventFeed
from kernel.settings import Settings
from services.framework import (
    CommandRefusedError,
    ServiceRuntime,
    ServiceSpec,
)
from services.framework.credentials import ServiceCredentials
from services.framework.following import wait_for_operation
from services.framework.system_vms import system_vm_id
from services.framework.wire import ServiceEvent, send_command

HEARTBEAT = 0.5  # the bucket's TTL is three of them


def settings_for(pg_dsn: str, nats_url: str, tmp_path: Path) -> Settings:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=4,
                        nats_urls=(nats_url,), data_dir=tmp_path / "data")
    migrate_all(settings)
    return settings


@asynccontextmanager
async def platform_edges(platform: Platform, engine: Any,
                         settings: Settings) -> AsyncIterator[None]:
    """The intake, the relay and the directory, as `cloudkernel up` runs them."""
    servers = list(settings.nats_urls)
    intake = CommandIntake(dict(command_catalog(platform, engine)),
                           KeyringAccess(Keyring(keys_path(settings))), servers)
    relay = EventRelay(EventFeed(platform.app), servers)
    directory = DirectoryServer(StoreRegistrations(platform.app), servers)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(x.run(stop)) for x in (intake, relay, directory)]
    try:
        await asyncio.wait_for(asyncio.gather(intake.ready.wait(), directory.ready.wait()), 15)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def admin_of(settings: Settings) -> ServiceCredentials:
    key = Keyring(keys_path(settings)).create(actor="root", role="admin")
    return ServiceCredentials(key.id, key.secret)


async def as_admin(nc: Client, admin: ServiceCredentials, tag: str, body: dict[str, Any],
                   key: str) -> Any:
    return (await send_command(nc, tag, body, idempotency_key=key, credentials=admin)).result


async def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def runtime(settings: Settings, name: str = "billing", version: str = "1.0") -> ServiceRuntime:
    spec = ServiceSpec(name=name, version=version,
                       endpoints={"http": f"http://127.0.0.1:8490/{name}"},
                       consumes=("cloudkernel.events.vm.>",),
                       publishes=("cloudkernel.commands.vm.deploy",),
                       description=f"{name} for tests")
    return ServiceRuntime(spec, list(settings.nats_urls),
                          credentials=issue_service_key(settings, name),
                          data_dir=settings.data_dir, heartbeat_seconds=HEARTBEAT)


def topics(platform: Platform) -> list[tuple[str, str]]:
    notes = platform.app.recorder.select_notifications(start=None, limit=10_000)
    return [(n.topic, n.state.decode()) for n in notes if n.topic.startswith("service_reg")]


async def kill(rt: ServiceRuntime) -> None:
    """As if the process died: its connection drops, it says goodbye to nobody."""
    rt._halt.set()  # its background tasks end with the process
    await rt.nc.close()


def test_a_service_registers_heartbeats_follows_the_switch_and_is_found(
        pg_dsn: str, nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(pg_dsn, nats_url, tmp_path)
    platform, engine, _feed = open_engine(settings)
    admin = admin_of(settings)

    async def scenario() -> None:
        async with platform_edges(platform, engine, settings):
            nc = await nats.connect(nats_url)
            rt = runtime(settings)
            flips: list[bool] = []
            rt.on_state_change(flips.append)
            await rt.start()
            stop = asyncio.Event()
            running = asyncio.create_task(rt.run(stop))
            try:
                # registered once, by the service's own key, and published
                assert rt.enabled and rt.registration_state == "Enabled"
                [(topic, state)] = topics(platform)
                assert topic == "service_registration.Registered" and "service:billing" in state
                js = nc.jetstream()
                msg = await eventually(lambda: _last(js, "service_registration.Registered"),
                                       what="the registration on NATS")
                assert ServiceEvent.from_msg(msg).originator_id == rt.registration_id

                # a second instance with the same description writes nothing
                twin = runtime(settings)
                await twin.start()
                assert len(topics(platform)) == 1 and twin.enabled
                # a new version is an update
                newer = runtime(settings, version="1.1")
                await newer.start()
                assert [t for t, _ in topics(platform)][-1] == "service_registration.Updated"

                # three live instances in the bucket, through the directory too
                live = await live_instances(js, "billing")
                assert {h.instance_id for h in live} == {rt.instance_id, twin.instance_id,
                                                         newer.instance_id}
                [found] = [s for s in await ask_directory(nc) if s["name"] == "billing"]
                assert found["live"] == 3 and found["version"] == "1.1" and found["enabled"]
                one = await ask_directory(nc, "billing")
                assert one["endpoints"] == {"http": "http://127.0.0.1:8490/billing"}
                with pytest.raises(NotFoundError):
                    await ask_directory(nc, "nobody")
                with pytest.raises(ValidationError):
                    await ask_directory(nc, "Not A Name")

                # killed instances drop out after the TTL; a clean stop leaves at once
                await kill(twin)
                await newer.close()
                assert {h.instance_id for h in await live_instances(js, "billing")} \
                    >= {rt.instance_id}
                await eventually(lambda: _only(js, rt.instance_id), 3 * HEARTBEAT + 4,
                                 "the killed instance expired")

                # the admin's switch reaches the running service within a couple of seconds
                await as_admin(nc, admin, "service.disable",
                               {"name": "billing", "reason": "billing paused"}, "off-1")
                await eventually(lambda: not rt.enabled, 3, "disabled")
                assert rt.disabled_reason == "billing paused" and flips[-1] is False
                await eventually(lambda: _enabled_in_kv(js, rt), 3, "KV says disabled")
                await as_admin(nc, admin, "service.enable", {"name": "billing"}, "on-1")
                await eventually(lambda: rt.enabled and rt.enabled_event.is_set(), 3, "enabled")
                assert flips[-1] is True

                # a service's own key registers only itself and switches nothing
                with pytest.raises(CommandRefusedError) as refused:
                    await rt.command("service.register", {"name": "ec2", "version": "1"},
                                     idempotency_key="steal")
                assert refused.value.code == "forbidden" and "own name" in refused.value.message
                with pytest.raises(CommandRefusedError) as refused:
                    await rt.command("service.disable", {"name": "billing", "reason": "me"},
                                     idempotency_key="self-off")
                assert refused.value.code == "forbidden"
                with pytest.raises(CommandRefusedError) as refused:
                    await as_admin(nc, admin, "service.enable", {"name": "nobody"}, "on-2")
                assert refused.value.code == "not_found"
                # as a user: the bearer token goes in place of the signature (this intake's
                # keyring has no tokens, so it is refused for what it is)
                with pytest.raises(CommandRefusedError) as refused:
                    await rt.command("service.register", {"name": "billing", "version": "9"},
                                     idempotency_key="as-user", bearer_token="tok-1")
                assert refused.value.code == "unauthenticated"
                assert "bearer" in refused.value.message
                assert rt.enabled
            finally:
                stop.set()
                await running
                await nc.close()
            # a clean stop removed the last instance at once
            nc = await nats.connect(nats_url)
            assert await live_instances(nc.jetstream(), "billing") == []
            await nc.close()

    try:
        asyncio.run(scenario())
    finally:
        platform.close()


async def _last(js: Any, topic: str) -> Any:
    try:
        return await js.get_last_msg(EVENTS_STREAM, f"cloudkernel.events.{topic}")
    except Exception:
        return None


async def _only(js: Any, instance_id: str) -> bool:
    return {h.instance_id for h in await live_instances(js, "billing")} == {instance_id}


async def _enabled_in_kv(js: Any, rt: ServiceRuntime) -> bool:
    mine = [h for h in await live_instances(js, "billing") if h.instance_id == rt.instance_id]
    return bool(mine) and mine[0].enabled is False


def test_a_restarted_consumer_resumes_after_its_last_ack_missing_none(
        pg_dsn: str, nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(pg_dsn, nats_url, tmp_path)
    platform, engine, _feed = open_engine(settings)
    admin = admin_of(settings)
    subjects = ["cloudkernel.events.service_registration.Registered"]

    async def register(nc: Client, names: range) -> None:
        for i in names:
            await as_admin(nc, admin, "service.register",
                           {"name": f"s{i}", "version": "1"}, f"reg-{i}")

    async def scenario() -> None:
        async with platform_edges(platform, engine, settings):
            nc = await nats.connect(nats_url)
            seen: list[tuple[int, str]] = []
            failed: set[int] = set()

            def handler(event: ServiceEvent) -> None:
                # the first delivery of each third event fails: it must come again, in order
                if event.position % 3 == 0 and event.position not in failed:
                    failed.add(event.position)
                    raise RuntimeError("not now")
                seen.append((event.position, event.data()["name"]))

            await register(nc, range(5))
            rt = runtime(settings)
            rt.consume("billing-registrations", subjects, handler)
            rt.consumers[0].retry_seconds = 0.1
            stop = asyncio.Event()
            task = asyncio.create_task(rt.run(stop))
            await eventually(lambda: len(seen) == 6, 10, "the first six registrations")
            stop.set()
            await task
            await register(nc, range(5, 10))  # while it is down

            rt = runtime(settings)
            rt.consume("billing-registrations", subjects, handler)
            rt.consumers[0].retry_seconds = 0.1
            stop = asyncio.Event()
            task = asyncio.create_task(rt.run(stop))
            try:
                await eventually(lambda: len(seen) >= 11, 10, "the five registered meanwhile")
                await asyncio.sleep(0.5)  # and nothing more
            finally:
                stop.set()
                await task
                await nc.close()
            names = [n for _p, n in seen]
            assert sorted(names) == sorted([f"s{i}" for i in range(10)] + ["billing"]), seen
            assert len(names) == len(set(names)), "each event once, after its last ack"
            positions = [p for p, _n in seen]
            assert positions == sorted(positions) and failed, seen

    try:
        asyncio.run(scenario())
    finally:
        platform.close()


def test_orchestration_works_whether_a_service_is_enabled_disabled_or_killed(
        pg_dsn: str, nats_url: str, tmp_path: Path,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=8, memory_mib=16384) for i in range(2)]
    settings = settings_for(pg_dsn, nats_url, tmp_path)
    inventory = write_inventory(tmp_path, uris, vm_cores=1, vm_memory_mib=512)
    admin = admin_of(settings)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            platform = await asyncio.to_thread(open_platform, settings)
            async with platform_edges(platform, cloud.engine, settings):
                nc = await nats.connect(nats_url)
                js = nc.jetstream()

                async def deploy(name: str) -> UUID:
                    body = {"name": name, "account": "alice", "zone_id": str(ids.zone_id),
                            "service_offering_id": str(ids.offering_id),
                            "template_id": str(ids.template_id),
                            "network_ids": [str(ids.network_id)]}
                    accepted = await as_admin(nc, admin, "vm.deploy", body, f"deploy-{name}")
                    outcome = await wait_for_operation(
                        js, UUID(accepted["operation_id"]), timeout=60)
                    assert outcome.status == "Succeeded", outcome
                    return UUID(accepted["vm_id"])

                stuck: list[int] = []

                async def never_done(event: ServiceEvent) -> None:
                    stuck.append(event.position)
                    await asyncio.sleep(3600)  # a wedged service: nothing is ever acked

                rt = runtime(settings)
                rt.consume("billing-vms", ["cloudkernel.events.vm.>"], never_done)
                stop = asyncio.Event()
                task = asyncio.create_task(rt.run(stop))
                await rt.enabled_event.wait()
                vms = [await deploy("web-enabled")]

                # the service asks for a system VM: an ordinary, idempotent vm.deploy
                system_vm = await rt.ensure_system_vm(
                    "proxy", zone_id=ids.zone_id, template_id=ids.template_id,
                    offering_id=ids.offering_id, network_ids=[ids.network_id], wait=True)
                assert system_vm == system_vm_id("billing", "proxy")
                assert await rt.ensure_system_vm(
                    "proxy", zone_id=ids.zone_id, template_id=ids.template_id,
                    offering_id=ids.offering_id, network_ids=[ids.network_id]) == system_vm

                await as_admin(nc, admin, "service.disable",
                               {"name": "billing", "reason": "maintenance window"}, "off")
                await eventually(lambda: not rt.enabled, 3, "disabled")
                vms.append(await deploy("web-disabled"))

                await kill(rt)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                vms.append(await deploy("web-killed"))
                await eventually(lambda: _none_live(js), 3 * HEARTBEAT + 4, "killed expired")
                info = await js.consumer_info(EVENTS_STREAM, "billing-vms")
                assert stuck and info.num_ack_pending + info.num_pending > 0, info
                await nc.close()
            await asyncio.to_thread(platform.close)
            for vm_id in [*vms, system_vm]:
                vm = await cloud.get(vm_id)
                assert vm.state.value == "Running", (vm_id, vm.state)
        with projection_runners(settings, ["vms", "services"]) as runners:
            for runner in runners:
                runner.run_once()
            vm_rows, service_rows = (r.view.all_rows() for r in runners)
        assert {r["id"] for r in vm_rows if r["state"] == "Running"} == {*vms, system_vm}
        [billing] = service_rows
        assert billing["name"] == "billing" and billing["state"] == "Disabled"
        assert billing["disabled_reason"] == "maintenance window" and not billing["enabled"]

    asyncio.run(scenario())


async def _none_live(js: Any) -> bool:
    return await live_instances(js, "billing") == []

