"""Two engines on one store, as `cloudkernel kernel` and `cloudkernel intake` (or `api`) run
them: each accepts or advances operations with its own cache of aggregates. Before, the
kernel's cached entity queue did not know an owner the intake had given it, and ignored its
release: the VM stayed held for good and every later operation on it waited forever."""

from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.entity_queue import EntityQueue
from aggregates.errors import ValidationError
from aggregates.operation import OperationState
from aggregates.vm import VmState
from kernel.bootstrap.catalog import CLOUD_COMMANDS, cloud_effects
from kernel.cloud.vms import DeployVm, StartVm, StopVm
from kernel.commands import CommandOutcome
from kernel.operations import OperationEngine

from .test_vm_deploy import NOW, Cloud, deploy


def _intake(cloud: Cloud) -> OperationEngine:
    """The intake process's engine: same store, its own cache."""
    return OperationEngine(cloud.app, clock=lambda: NOW, effects=cloud_effects(cloud.app),
                           operation_commands=CLOUD_COMMANDS)


def _run_through(cloud: Cloud, intake: OperationEngine, command: object) -> UUID:
    out = intake.execute(command, idempotency_key=f"k-{uuid4()}")  # type: ignore[arg-type]
    return UUID(msgspec.json.decode(out.result)["operation_id"])


@pytest.mark.parametrize("follow", [True, False], ids=["cache-followed", "stale-copy-caught"])
def test_operations_accepted_elsewhere_free_their_entities_in_the_kernel(
        cloud: Cloud, follow: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not follow:  # the kernel's cache is stale: the strict queue must still catch it
        monkeypatch.setattr(cloud.engine, "follow_log", lambda: 0)
    vm_id = UUID(deploy(cloud)["vm_id"])
    cloud.run()  # the kernel ran the deploy: it caches the VM's (free) queue
    intake = _intake(cloud)
    for _ in range(3):
        stop = _run_through(cloud, intake, StopVm(vm_id=vm_id))
        cloud.run()  # the kernel applies the steps' outcomes and ends the operation
        assert cloud.get(stop).state is OperationState.SUCCEEDED
        start = _run_through(cloud, intake, StartVm(vm_id=vm_id))
        cloud.run()
        assert cloud.get(start).state is OperationState.SUCCEEDED, cloud.get(start).state
        assert cloud.get(vm_id).state is VmState.RUNNING
        queue: EntityQueue = cloud.get(EntityQueue.create_id(vm_id))
        assert queue.owner is None and queue.waiting == []


def test_follow_log_drops_only_what_another_writer_changed(cloud: Cloud) -> None:
    vm_id = UUID(deploy(cloud)["vm_id"])
    cloud.run()
    cloud.engine.follow_log()
    assert cloud.engine.follow_log() == 0  # its own saves are what it caches
    queue_id = EntityQueue.create_id(vm_id)
    assert queue_id in cloud.engine.cache
    _run_through(cloud, _intake(cloud), StopVm(vm_id=vm_id))
    assert cloud.engine.follow_log() >= 1
    assert queue_id not in cloud.engine.cache and vm_id not in cloud.engine.cache


def test_a_command_reads_what_another_engine_changed_since(cloud: Cloud) -> None:
    # the intake's engine read the template Ready for a deploy (its cache keeps what it
    # read); another process then removed it. A deploy through the intake must see it
    # Removed and be refused, not be accepted on its stale copy
    intake = _intake(cloud)
    template = next(t for t in cloud.ids("template.Registered")
                    if cloud.get(t).state.value == "Ready")
    offering = next(o for o in cloud.ids("service_offering.Created")
                    if cloud.get(o).name == "small")

    def deploy_through_intake(name: str) -> CommandOutcome:
        return intake.execute(DeployVm(name=name, account="alice",
                                       zone_id=cloud.get(template).zone_id,
                                       service_offering_id=offering, template_id=template),
                              idempotency_key=f"d-{name}")

    deploy_through_intake("web-1")
    assert intake.cache[template].state.value == "Ready"  # type: ignore[attr-defined]
    elsewhere = cloud.app.repository.get(template)
    elsewhere.remove()
    cloud.app.save(elsewhere)
    with pytest.raises(ValidationError, match="not Ready"):
        deploy_through_intake("web-2")
