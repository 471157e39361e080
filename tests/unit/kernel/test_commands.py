"""Idempotent commands: one key, one effect; a reused key with another payload is refused."""

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.domain import Aggregate

from aggregates.errors import ConflictError, IdempotencyKeyReusedError, ValidationError
from aggregates.host import Host
from kernel.commands import Command, CommandService
from kernel.store.application import KernelApplication
from kernel.store.testing import scratch_application

ZONE, POD, CLUSTER = uuid4(), uuid4(), uuid4()


class RegisterHost(Command, frozen=True, kw_only=True, tag="test.register_host"):
    name: str
    cpu_cores: int


class ClaimCapacity(Command, frozen=True, kw_only=True, tag="test.claim"):
    host_id: UUID
    cpu_cores: int


def register(app: KernelApplication, cmd: RegisterHost) -> tuple[Sequence[Aggregate], Any]:
    host = Host.register(name=cmd.name, uri="test:///default", zone_id=ZONE, pod_id=POD,
                         cluster_id=CLUSTER, cpu_cores=cmd.cpu_cores, cpu_mhz=1000,
                         memory_mib=4096)
    return [host], {"host_id": str(host.id)}


def claim(app: KernelApplication, cmd: ClaimCapacity) -> tuple[Sequence[Aggregate], Any]:
    host: Host = app.repository.get(cmd.host_id)
    host.claim(uuid4(), uuid4(), cmd.cpu_cores, 1)
    return [host], {"free": host.free_cpu_cores}


@pytest.fixture
def service() -> Iterator[CommandService]:
    app = scratch_application()
    yield CommandService(app, {RegisterHost: register, ClaimCapacity: claim})
    app.close()


def head(service: CommandService) -> int:
    return service.app.recorder.max_notification_id() or 0


def test_same_key_same_payload_returns_first_result_and_writes_nothing(
        service: CommandService) -> None:
    first = service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="k1",
                            actor="admin")
    assert not first.replayed and first.positions == (1,)
    written = head(service)
    again = service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="k1")
    assert again.replayed
    assert msgspec.json.decode(again.result) == msgspec.json.decode(first.result)
    assert head(service) == written


def test_same_key_other_payload_is_refused_and_writes_nothing(service: CommandService) -> None:
    service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="k1")
    written = head(service)
    with pytest.raises(IdempotencyKeyReusedError, match="'k1' was already used"):
        service.execute(RegisterHost(name="h2", cpu_cores=4), idempotency_key="k1")
    assert head(service) == written


def test_events_carry_actor_correlation_and_causation(service: CommandService) -> None:
    out = service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="k9",
                          actor="acct/alice")
    host_id = UUID(msgspec.json.decode(out.result)["host_id"])
    event = service.app.events.get(host_id)
    first = next(iter(event))
    assert first.actor == "acct/alice"
    assert first.causation_id == "command:test.register_host:k9"
    assert first.correlation_id is not None


def test_domain_errors_write_nothing_and_leave_the_key_free(service: CommandService) -> None:
    out = service.execute(RegisterHost(name="h1", cpu_cores=2), idempotency_key="r")
    host_id = UUID(msgspec.json.decode(out.result)["host_id"])
    with pytest.raises(Exception, match="free"):
        service.execute(ClaimCapacity(host_id=host_id, cpu_cores=99), idempotency_key="c1")
    assert service.app.lookup_idempotency("c1") is None
    ok = service.execute(ClaimCapacity(host_id=host_id, cpu_cores=1), idempotency_key="c1")
    assert msgspec.json.decode(ok.result) == {"free": 1}


@pytest.mark.parametrize("key", ["", "   ", "x" * 201, "bad\nkey"])
def test_keys_are_required_and_sane(service: CommandService, key: str) -> None:
    with pytest.raises(ValidationError, match="idempotency_key"):
        service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key=key)


def test_a_lost_race_reruns_the_command_on_the_new_state(service: CommandService) -> None:
    out = service.execute(RegisterHost(name="h1", cpu_cores=8), idempotency_key="r")
    host_id = UUID(msgspec.json.decode(out.result)["host_id"])
    app = service.app
    calls = 0

    def racing_claim(app_: KernelApplication, cmd: ClaimCapacity) -> tuple[Any, Any]:
        nonlocal calls
        calls += 1
        host: Host = app_.repository.get(cmd.host_id)
        if calls == 1:  # another writer claims first, between our read and our save
            rival: Host = app_.repository.get(cmd.host_id)
            rival.claim(uuid4(), uuid4(), 3, 1)
            app_.save(rival)
        host.claim(uuid4(), uuid4(), cmd.cpu_cores, 1)
        return [host], {"free": host.free_cpu_cores}

    service.handlers[ClaimCapacity] = racing_claim
    result = service.execute(ClaimCapacity(host_id=host_id, cpu_cores=2), idempotency_key="c")
    assert calls == 2
    assert msgspec.json.decode(result.result) == {"free": 3}
    assert app.repository.get(host_id).used_cpu_cores == 5


def test_endless_races_end_in_a_conflict_error(service: CommandService) -> None:
    out = service.execute(RegisterHost(name="h1", cpu_cores=64), idempotency_key="r")
    host_id = UUID(msgspec.json.decode(out.result)["host_id"])

    def always_loses(app_: KernelApplication, cmd: ClaimCapacity) -> tuple[Any, Any]:
        host: Host = app_.repository.get(cmd.host_id)
        rival: Host = app_.repository.get(cmd.host_id)
        rival.claim(uuid4(), uuid4(), 1, 1)
        app_.save(rival)
        host.claim(uuid4(), uuid4(), 1, 1)
        return [host], {}

    service.handlers[ClaimCapacity] = always_loses
    with pytest.raises(ConflictError, match="lost 3 races"):
        service.execute(ClaimCapacity(host_id=host_id, cpu_cores=1), idempotency_key="c")
    assert service.app.lookup_idempotency("c") is None
