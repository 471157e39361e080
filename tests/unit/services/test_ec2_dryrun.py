"""DryRun (issue 16, item 10): every EC2 action honours it, as AWS does. A request that would
be allowed answers `DryRunOperation` (HTTP 412), one that would not `UnauthorizedOperation`
(403), and a malformed one its usual error; nothing reaches the platform and nothing of the
service's own data changes."""

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from aggregates.network import Network
from services.ec2.service import ACTIONS
from services.ec2.vpcs import zone_vpc_id
from tests.unit.services.ec2_harness import Stack, code_of, image_id


def resources(stack: Stack) -> dict[str, Any]:
    """A running instance, an available volume, a key pair, a tag, a VPC and a network; a
    root admin's client (only one may change networks) and the VPC of its zone."""
    ec2 = stack.client()
    iid = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"]
    vol = ec2.create_volume(Size=1, AvailabilityZone="zone-1")["VolumeId"]
    stack.progress()
    ec2.create_key_pair(KeyName="k")
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "env", "Value": "test"}])
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    zone_id = stack.platform.view.zones()[0].id
    network = Network.create(name="guests", zone_id=zone_id, cidr="10.1.9.0/24",
                             gateway="10.1.9.1")
    network.implement()
    network.implemented(vlan=100)
    stack.cloud.app.save(network)
    stack.platform.feed()
    root = stack.client("ak_root")
    return {"iid": iid, "vol": vol, "ami": image_id(ec2), "vpc": vpc,
            "subnet": "subnet-" + network.id.hex, "root": root,
            "root_vpc": zone_vpc_id(None, zone_id)}


KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOgyx4FZYFx6MSnv+ak1JzelWKDdBnCdVREXnWs/6e6t"
Call = Callable[[Any, dict[str, Any]], Any]
CALLS: dict[str, Call] = {
    "RunInstances": lambda ec2, r: ec2.run_instances(ImageId=r["ami"], MinCount=1,
                                                     MaxCount=1, DryRun=True),
    "DescribeInstances": lambda ec2, r: ec2.describe_instances(DryRun=True),
    "StartInstances": lambda ec2, r: ec2.start_instances(InstanceIds=[r["iid"]], DryRun=True),
    "StopInstances": lambda ec2, r: ec2.stop_instances(InstanceIds=[r["iid"]], DryRun=True),
    "TerminateInstances": lambda ec2, r: ec2.terminate_instances(InstanceIds=[r["iid"]],
                                                                 DryRun=True),
    "DescribeInstanceStatus": lambda ec2, r: ec2.describe_instance_status(DryRun=True),
    "DescribeInstanceAttribute": lambda ec2, r: ec2.describe_instance_attribute(
        InstanceId=r["iid"], Attribute="instanceType", DryRun=True),
    "DescribeInstanceTypes": lambda ec2, r: ec2.describe_instance_types(DryRun=True),
    "DescribeAccountAttributes": lambda ec2, r: ec2.describe_account_attributes(DryRun=True),
    "DescribeImages": lambda ec2, r: ec2.describe_images(DryRun=True),
    "DescribeAvailabilityZones": lambda ec2, r: ec2.describe_availability_zones(DryRun=True),
    "DescribeRegions": lambda ec2, r: ec2.describe_regions(DryRun=True),
    "CreateVolume": lambda ec2, r: ec2.create_volume(Size=1, AvailabilityZone="zone-1",
                                                     DryRun=True),
    "AttachVolume": lambda ec2, r: ec2.attach_volume(VolumeId=r["vol"], InstanceId=r["iid"],
                                                     Device="/dev/sdf", DryRun=True),
    "DetachVolume": lambda ec2, r: ec2.detach_volume(VolumeId=r["vol"], DryRun=True),
    "DeleteVolume": lambda ec2, r: ec2.delete_volume(VolumeId=r["vol"], DryRun=True),
    "DescribeVolumes": lambda ec2, r: ec2.describe_volumes(DryRun=True),
    "CreateSnapshot": lambda ec2, r: ec2.create_snapshot(VolumeId=r["vol"], DryRun=True),
    "DescribeSnapshots": lambda ec2, r: ec2.describe_snapshots(DryRun=True),
    "CreateKeyPair": lambda ec2, r: ec2.create_key_pair(KeyName="other", DryRun=True),
    "DescribeKeyPairs": lambda ec2, r: ec2.describe_key_pairs(DryRun=True),
    "DeleteKeyPair": lambda ec2, r: ec2.delete_key_pair(KeyName="k", DryRun=True),
    "ImportKeyPair": lambda ec2, r: ec2.import_key_pair(KeyName="imported",
                                                        PublicKeyMaterial=KEY, DryRun=True),
    "DescribeVpcs": lambda ec2, r: ec2.describe_vpcs(DryRun=True),
    "CreateVpc": lambda ec2, r: ec2.create_vpc(CidrBlock="10.2.0.0/16", DryRun=True),
    "DeleteVpc": lambda ec2, r: ec2.delete_vpc(VpcId=r["vpc"], DryRun=True),
    "DescribeSubnets": lambda ec2, r: ec2.describe_subnets(DryRun=True),
    # only a root admin may change the platform's networks
    "CreateSubnet": lambda ec2, r: r["root"].create_subnet(VpcId=r["root_vpc"],
                                                           CidrBlock="10.1.8.0/24",
                                                           DryRun=True),
    "DeleteSubnet": lambda ec2, r: r["root"].delete_subnet(SubnetId=r["subnet"], DryRun=True),
    "CreateTags": lambda ec2, r: ec2.create_tags(Resources=[r["iid"]],
                                                 Tags=[{"Key": "env", "Value": "prod"}],
                                                 DryRun=True),
    "DeleteTags": lambda ec2, r: ec2.delete_tags(Resources=[r["iid"]], DryRun=True),
    "DescribeTags": lambda ec2, r: ec2.describe_tags(DryRun=True),
    "GetConsoleOutput": lambda ec2, r: ec2.get_console_output(InstanceId=r["iid"],
                                                              DryRun=True),
    "GetConsoleScreenshot": lambda ec2, r: ec2.get_console_screenshot(InstanceId=r["iid"],
                                                                      DryRun=True),
}


def snapshot(stack: Stack) -> tuple[Any, ...]:
    """What a dry run must not change: the platform's log and the service's own data."""
    ec2 = stack.client()
    return (stack.head(), len(stack.platform.sent),
            [(k["KeyName"], k["KeyPairId"]) for k in ec2.describe_key_pairs()["KeyPairs"]],
            ec2.describe_tags()["Tags"])


def test_every_action_is_covered() -> None:
    assert set(CALLS) == set(ACTIONS)


def test_every_action_answers_dry_run_operation_and_changes_nothing(stack: Stack) -> None:
    found = resources(stack)
    ec2 = stack.client()
    before = snapshot(stack)
    for action, dry in CALLS.items():
        with pytest.raises(ClientError) as e:
            dry(ec2, found)
        assert code_of(e) == "DryRunOperation", (action, e.value.response["Error"])
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412, action
        assert snapshot(stack) == before, action
    [row] = stack.platform.view.vms("alice")
    assert row.state == "Running"  # neither stopped nor terminated


def test_a_dry_run_the_acl_would_refuse_is_unauthorized(stack: Stack) -> None:
    found = resources(stack)
    ec2 = stack.client()
    before = snapshot(stack)
    stack.platform.denied.add("vm.destroy")  # a deny rule for users
    with pytest.raises(ClientError) as e:
        CALLS["TerminateInstances"](ec2, found)
    assert code_of(e) == "UnauthorizedOperation"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert snapshot(stack) == before
    with pytest.raises(ClientError) as e:  # and so it is for real, and it stays running
        ec2.terminate_instances(InstanceIds=[found["iid"]])
    assert code_of(e) == "UnauthorizedOperation"
    [instance] = ec2.describe_instances()["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "running"
    # another account's instance is not there for bob, dry run or not
    with pytest.raises(ClientError) as e:
        stack.client("ak_bob").stop_instances(InstanceIds=[found["iid"]], DryRun=True)
    assert code_of(e) == "InvalidInstanceID.NotFound"


@pytest.mark.parametrize(("call", "code"), [
    (lambda ec2: ec2.run_instances(ImageId="ami-nope", MinCount=1, MaxCount=1, DryRun=True),
     "InvalidAMIID.Malformed"),
    (lambda ec2: ec2.run_instances(ImageId="ami-" + "0" * 32, MinCount=1, MaxCount=1,
                                   DryRun=True), "InvalidAMIID.NotFound"),
    (lambda ec2: ec2.stop_instances(InstanceIds=["i-" + "0" * 32], DryRun=True),
     "InvalidInstanceID.NotFound"),
    (lambda ec2: ec2.create_volume(Size=0, AvailabilityZone="zone-1", DryRun=True),
     "InvalidParameterValue"),
    (lambda ec2: ec2.create_key_pair(KeyName="x", KeyType="dsa", DryRun=True),
     "InvalidParameterValue"),
    (lambda ec2: ec2.create_tags(Resources=["i-" + "0" * 32], Tags=[{"Key": "a"}],
                                 DryRun=True), "InvalidInstanceID.NotFound"),
])
def test_a_malformed_dry_run_gets_its_usual_error(stack: Stack, call: Callable[[Any], Any],
                                                 code: str) -> None:
    head = stack.head()
    with pytest.raises(ClientError) as e:
        call(stack.client())
    assert code_of(e) == code
    assert stack.head() == head and stack.platform.sent == []
