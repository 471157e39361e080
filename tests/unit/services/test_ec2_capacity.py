"""A launch no host can take (issue 16, item 13): AWS refuses it up front with
InsufficientInstanceCapacity; it was accepted, and the instance later showed as `stopped`,
which StartInstances refused. Now RunInstances waits (bounded) for each deploy's placement: a
deploy the planner could not place is refused, its VM destroyed (shown `terminated` with
EC2's state reason), and with fewer than MinCount placed, nothing is launched."""

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from botocore.exceptions import ClientError

from kernel.contracts.steps import StepMessage, StepOutcome
from tests.unit.services.ec2_harness import Stack, code_of, image_id


@pytest.fixture
def full(stack: Stack) -> Iterator[list[int]]:
    """The stack, whose planner places only as many VMs as the list's number says (every
    host in maintenance: 0), answering `insufficient_capacity` as the real one; its steps run
    while RunInstances waits."""
    room = [0]
    answer = stack.cloud.answer

    def planner(m: StepMessage) -> StepOutcome:
        if f"{m.subsystem}.{m.action}" == "planner.plan":
            if room[0] <= 0:
                return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                                   attempt=m.attempt, subsystem=m.subsystem, ok=False,
                                   error_code="insufficient_capacity",
                                   message="no host fits: 8 hosts in maintenance")
            room[0] -= 1
        return answer(m)

    stack.cloud.answer = planner  # type: ignore[method-assign]
    stack.platform.steps = True
    yield room


def states(stack: Stack) -> dict[str, str]:
    """Every VM of the platform: its state."""
    return {vm.hex: stack.cloud.get(vm).state.value for vm in stack.vms()}


def described(ec2: Any) -> dict[str, dict[str, Any]]:
    return {i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]}


def test_a_launch_no_host_can_take_is_refused_up_front(stack: Stack, full: list[int]) -> None:
    ec2 = stack.client()
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)
    assert code_of(e) == "InsufficientInstanceCapacity"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    stack.progress()
    # the VM is gone from the platform, and never shows as a stopped instance
    assert set(states(stack).values()) <= {"Destroyed", "Expunging", "Expunged"}
    for instance in described(ec2).values():
        assert instance["State"]["Name"] == "terminated"
        assert instance["StateReason"]["Code"] == "Server.InsufficientInstanceCapacity"
        with pytest.raises(ClientError) as e:
            ec2.start_instances(InstanceIds=[instance["InstanceId"]])
        assert code_of(e) == "IncorrectInstanceState"


def test_fewer_placed_than_max_count_launches_those_and_fewer_than_min_count_none(
        stack: Stack, full: list[int]) -> None:
    ec2 = stack.client()
    full[0] = 1
    run = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=3)
    [launched] = [i["InstanceId"] for i in run["Instances"]]
    stack.progress()
    running = {i for i, d in described(ec2).items() if d["State"]["Name"] == "running"}
    assert running == {launched}
    assert sorted(states(stack).values()) == ["Expunged", "Expunged", "Running"]

    full[0] = 1
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id(ec2), MinCount=2, MaxCount=3)
    assert code_of(e) == "InsufficientInstanceCapacity"
    stack.progress()
    assert sorted(states(stack).values()) == ["Expunged"] * 5 + ["Running"]
    assert {i for i, d in described(ec2).items() if d["State"]["Name"] != "terminated"} == \
        {launched}
    assert UUID(hex=launched[2:]) in stack.vms()


def test_an_instance_that_failed_for_capacity_later_shows_terminated(stack: Stack) -> None:
    """A deploy whose placement failed after RunInstances stopped waiting is shown as AWS
    shows a launch that failed after it was accepted: terminated, with the state reason."""
    ec2 = stack.client()
    run = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)
    iid = run["Instances"][0]["InstanceId"]
    answer = stack.cloud.answer

    def refuse(m: StepMessage) -> StepOutcome:
        if f"{m.subsystem}.{m.action}" == "planner.plan":
            return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                               attempt=m.attempt, subsystem=m.subsystem, ok=False,
                               error_code="insufficient_capacity", message="no host fits")
        return answer(m)

    stack.cloud.answer = refuse  # type: ignore[method-assign]
    stack.progress()
    [instance] = described(ec2).values()
    assert instance["InstanceId"] == iid
    assert instance["State"]["Name"] == "terminated"
    assert instance["StateReason"]["Code"] == "Server.InsufficientInstanceCapacity"
    with pytest.raises(ClientError) as e:
        ec2.start_instances(InstanceIds=[iid])
    assert code_of(e) == "IncorrectInstanceState"
