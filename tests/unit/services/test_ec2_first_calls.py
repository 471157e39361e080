"""The calls tools make first (issue 20): instances' private addresses, DescribeInstanceTypes,
DescribeAccountAttributes, DescribeInstanceStatus and DescribeInstanceAttribute, driven by
boto3 over the fakes of `ec2_harness`; the instances with a NIC run on a cloud whose network
guru and element are answered (`NicCloud` of the move tests)."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from botocore.exceptions import ClientError
from support.sample import load_sample_with_ready_template

from aggregates.network import Network
from kernel.store.testing import scratch_application
from services.ec2.instance_types import DEFAULT_MAX_INSTANCES
from services.framework.tenant_rows import SCHEMA_VERSION
from services.framework.tenant_view import TenantView
from tests.unit.operations.test_vm_moves import NicCloud
from tests.unit.services.ec2_harness import (
    FakeAcl,
    Stack,
    close_service,
    code_of,
    image_id,
    open_service,
)


@pytest.fixture
def net_stack(tmp_path: Path) -> Iterator[tuple[Stack, UUID]]:
    """A stack whose cloud answers the NIC steps, with one implemented network."""
    app = scratch_application()
    load_sample_with_ready_template(app)
    cloud = NicCloud(app)
    zone_id = next(iter(cloud.ids("zone.Created")))
    network = Network.create(name="guests", zone_id=zone_id, cidr="10.9.0.0/24",
                             gateway="10.9.0.1")
    network.implement()
    network.implemented(vlan=100)
    app.save(network)
    acl, enabled = FakeAcl(), [True]
    platform, served = open_service(cloud, acl, tmp_path / "ec2", enabled)
    yield Stack(cloud, platform, acl, served, enabled), network.id
    close_service(platform, served)
    app.close()


def launch(stack: Stack, network_id: UUID | None = None, **kw: Any) -> dict[str, Any]:
    ec2 = stack.client()
    subnet = {"SubnetId": "subnet-" + network_id.hex} if network_id else {}
    [instance] = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1, **subnet,
                                   **kw)["Instances"]
    return dict(instance)


def described(stack: Stack, iid: str) -> dict[str, Any]:
    [reservation] = stack.client().describe_instances(InstanceIds=[iid])["Reservations"]
    return dict(reservation["Instances"][0])


# ------------------------------------------------------------------ private addresses


def test_an_instance_in_a_network_shows_its_private_address_and_interface(
        net_stack: tuple[Stack, UUID]) -> None:
    stack, network_id = net_stack
    stack.platform.steps = True  # RunInstances' wait lets the NIC steps run
    run = launch(stack, network_id)
    iid = run["InstanceId"]
    vm = stack.cloud.get(UUID(hex=iid.removeprefix("i-")))
    [nic_id] = vm.nics.values()
    nic = stack.cloud.get(nic_id)
    assert nic.ip and nic.ip.startswith("10.9.0.")
    for shown in (run, described(stack, iid)):  # RunInstances' answer and DescribeInstances
        assert shown["PrivateIpAddress"] == nic.ip
        assert shown["PrivateDnsName"] == iid  # the name the network's DNS answers
        assert shown["SubnetId"] == "subnet-" + network_id.hex
        [eni] = shown["NetworkInterfaces"]
        assert eni["NetworkInterfaceId"] == "eni-" + nic_id.hex
        assert eni["MacAddress"] == nic.mac and eni["PrivateIpAddress"] == nic.ip
        assert eni["Attachment"]["DeviceIndex"] == 0
        assert eni["Attachment"]["Status"] == "attached"
        assert eni["PrivateIpAddresses"] == [{"PrivateIpAddress": nic.ip,
                                              "PrivateDnsName": iid, "Primary": True}]
        assert eni["Status"] == "in-use" and eni["SubnetId"] == "subnet-" + network_id.hex
    ec2 = stack.client()
    for name, value in (("private-ip-address", nic.ip),
                        ("network-interface.mac-address", nic.mac),
                        ("subnet-id", "subnet-" + network_id.hex)):
        found = ec2.describe_instances(Filters=[{"Name": name, "Values": [value]}])
        assert [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]] == [
            iid], name
    # stopped: it keeps its address, as in EC2
    ec2.stop_instances(InstanceIds=[iid])
    stack.progress()
    stopped = described(stack, iid)
    assert stopped["State"]["Name"] == "stopped" and stopped["PrivateIpAddress"] == nic.ip
    # terminated: the NIC is released, and the instance shows no address
    ec2.terminate_instances(InstanceIds=[iid])
    stack.progress()
    gone = described(stack, iid)
    assert gone["State"]["Name"] == "terminated"
    assert "PrivateIpAddress" not in gone and gone["NetworkInterfaces"] == []


def test_an_instance_without_a_network_has_no_private_address(stack: Stack) -> None:
    iid = launch(stack)["InstanceId"]
    stack.progress()
    shown = described(stack, iid)
    assert "PrivateIpAddress" not in shown and shown["NetworkInterfaces"] == []
    assert shown["PrivateDnsName"] == ""


def test_a_view_of_an_older_schema_is_rebuilt_from_the_first_event(
        net_stack: tuple[Stack, UUID], tmp_path: Path) -> None:
    stack, network_id = net_stack
    iid = launch(stack, network_id)["InstanceId"]
    stack.progress()
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # a view file as version 1 made it: no NICs, no version
    old.executescript("CREATE TABLE view_position (id INTEGER PRIMARY KEY, position INTEGER "
                      "NOT NULL, view_id TEXT NOT NULL); INSERT INTO view_position VALUES "
                      "(1, 999999, 'old'); CREATE TABLE vms (id TEXT PRIMARY KEY, name TEXT);")
    old.close()
    view = TenantView(path)
    try:
        assert view.position == 0 and view.view_id != "old"  # a new durable, from the start
        assert view.durable("ec2-tenant-view") != "ec2-tenant-view-old"
        stack.platform.view, before = view, stack.platform.view
        stack.platform.feed()
        [nics] = view.vm_nics([UUID(hex=iid.removeprefix("i-"))]).values()
        assert [n.ip for n in nics] == [n.ip for n in before.vm_nics(
            [UUID(hex=iid.removeprefix("i-"))]).popitem()[1]]
        stack.platform.view = before
    finally:
        view.close()
    again = TenantView(path)  # the same version: kept as it is
    try:
        assert again.position > 0 and again.view_id != "old"
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        again.close()


# ------------------------------------------------------------------ DescribeInstanceTypes


def test_describe_instance_types_answers_the_service_offerings(stack: Stack) -> None:
    ec2 = stack.client()
    offerings = {o.name: o for o in stack.platform.view.offerings("service")}
    types = ec2.describe_instance_types()["InstanceTypes"]
    assert {t["InstanceType"] for t in types} == set(offerings)
    for t in types:
        offering = offerings[t["InstanceType"]]
        assert t["VCpuInfo"]["DefaultVCpus"] == offering.cpu_cores
        assert t["MemoryInfo"]["SizeInMiB"] == offering.memory_mib
        assert t["ProcessorInfo"]["SupportedArchitectures"] == ["x86_64"]
        assert t["SupportedRootDeviceTypes"] == ["ebs"] and t["CurrentGeneration"] is True
        assert t["AutoRecoverySupported"] is offering.ha_enabled
    small = offerings["small"]
    [one] = ec2.describe_instance_types(InstanceTypes=["small"])["InstanceTypes"]
    assert one["InstanceType"] == "small"
    found = ec2.describe_instance_types(Filters=[
        {"Name": "vcpu-info.default-vcpus", "Values": [str(small.cpu_cores)]},
        {"Name": "instance-type", "Values": ["sm*"]}])["InstanceTypes"]
    assert [t["InstanceType"] for t in found] == ["small"]
    assert ec2.describe_instance_types(Filters=[
        {"Name": "memory-info.size-in-mib", "Values": ["1"]}])["InstanceTypes"] == []


def test_describe_instance_types_pages_and_refuses_bad_input(stack: Stack) -> None:
    ec2 = stack.client()
    every = [t["InstanceType"] for t in ec2.describe_instance_types()["InstanceTypes"]]
    pages = list(ec2.get_paginator("describe_instance_types").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [t["InstanceType"] for p in pages for t in p["InstanceTypes"]] == every
    for call, code in ((lambda: ec2.describe_instance_types(InstanceTypes=["m5.huge"]),
                        "InvalidInstanceType"),
                       (lambda: ec2.describe_instance_types(Filters=[
                           {"Name": "nope", "Values": ["x"]}]), "InvalidParameterValue"),
                       (lambda: ec2.describe_instance_types(MaxResults=5, NextToken="junk"),
                        "InvalidParameterValue")):
        with pytest.raises(ClientError) as e:
            call()
        assert code_of(e) == code


# ------------------------------------------------------------------ DescribeAccountAttributes


def attributes(answer: dict[str, Any]) -> dict[str, list[str]]:
    return {a["AttributeName"]: [v["AttributeValue"] for v in a["AttributeValues"]]
            for a in answer["AccountAttributes"]}


def test_describe_account_attributes(stack: Stack) -> None:
    ec2 = stack.client()
    assert attributes(ec2.describe_account_attributes()) == {
        "supported-platforms": ["VPC"], "default-vpc": ["none"],
        "max-instances": [str(DEFAULT_MAX_INSTANCES)]}
    assert attributes(ec2.describe_account_attributes(
        AttributeNames=["default-vpc", "supported-platforms"])) == {
        "supported-platforms": ["VPC"], "default-vpc": ["none"]}
    # AWS's names of limits this platform does not have are left out, not refused
    assert attributes(ec2.describe_account_attributes(AttributeNames=["max-elastic-ips"])) \
        == {}
    with pytest.raises(ClientError) as e:
        stack.client().describe_account_attributes(AttributeNames=["max-volumes"])
    assert code_of(e) == "InvalidParameterValue"


# ------------------------------------------------------------------ DescribeInstanceStatus


def statuses(answer: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {s["InstanceId"]: (s["InstanceState"]["Name"], s["SystemStatus"]["Status"],
                              s["InstanceStatus"]["Status"])
            for s in answer["InstanceStatuses"]}


def test_describe_instance_status_follows_the_vm(stack: Stack) -> None:
    ec2 = stack.client()
    iid = launch(stack)["InstanceId"]
    assert statuses(ec2.describe_instance_status()) == {}  # pending: only running by default
    assert statuses(ec2.describe_instance_status(IncludeAllInstances=True)) == {
        iid: ("pending", "initializing", "initializing")}
    stack.progress()
    answer = ec2.describe_instance_status(InstanceIds=[iid])
    assert statuses(answer) == {iid: ("running", "ok", "ok")}
    [status] = answer["InstanceStatuses"]
    assert status["AvailabilityZone"] == "zone-1" and status["Events"] == []
    assert status["SystemStatus"]["Details"] == [{"Name": "reachability", "Status": "passed"}]
    assert statuses(ec2.describe_instance_status(Filters=[
        {"Name": "instance-status.status", "Values": ["impaired"]}])) == {}
    assert statuses(ec2.describe_instance_status(Filters=[
        {"Name": "system-status.reachability", "Values": ["passed"]}])) == {
        iid: ("running", "ok", "ok")}
    ec2.stop_instances(InstanceIds=[iid])
    stack.progress()
    assert statuses(ec2.describe_instance_status()) == {}
    stopped = ec2.describe_instance_status(InstanceIds=[iid], IncludeAllInstances=True)
    assert statuses(stopped) == {iid: ("stopped", "not-applicable", "not-applicable")}
    assert stopped["InstanceStatuses"][0]["SystemStatus"]["Details"] == []
    # bob sees none of alice's
    with pytest.raises(ClientError) as e:
        stack.client("ak_bob").describe_instance_status(InstanceIds=[iid])
    assert code_of(e) == "InvalidInstanceID.NotFound"


def test_describe_instance_status_pages_and_refuses_bad_input(stack: Stack) -> None:
    ec2 = stack.client()
    ids = {launch(stack, ClientToken=f"t{n}")["InstanceId"] for n in range(6)}
    stack.progress()
    pages = list(ec2.get_paginator("describe_instance_status").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["InstanceStatuses"]) for p in pages] == [5, 1]
    assert {s["InstanceId"] for p in pages for s in p["InstanceStatuses"]} == ids
    for kw, code in (({"InstanceIds": ["i-nope"]}, "InvalidInstanceID.Malformed"),
                     ({"InstanceIds": ["i-0123456789abcdef0"]}, "InvalidInstanceID.NotFound"),
                     ({"InstanceIds": [next(iter(ids))], "MaxResults": 5},
                      "InvalidParameterCombination"),
                     ({"Filters": [{"Name": "color", "Values": ["red"]}]},
                      "InvalidParameterValue")):
        with pytest.raises(ClientError) as e:
            ec2.describe_instance_status(**kw)
        assert code_of(e) == code, kw


# ------------------------------------------------------------------ DescribeInstanceAttribute


def test_describe_instance_attribute(stack: Stack) -> None:
    ec2 = stack.client()
    iid = launch(stack, InstanceType="small")["InstanceId"]
    stack.progress()

    def attribute(name: str) -> dict[str, Any]:
        answer = dict(ec2.describe_instance_attribute(InstanceId=iid, Attribute=name))
        assert answer.pop("InstanceId") == iid
        answer.pop("ResponseMetadata")
        return answer

    assert attribute("instanceType") == {"InstanceType": {"Value": "small"}}
    assert attribute("disableApiTermination") == {"DisableApiTermination": {"Value": False}}
    assert attribute("instanceInitiatedShutdownBehavior") == {
        "InstanceInitiatedShutdownBehavior": {"Value": "stop"}}
    assert attribute("userData") == {"UserData": {}}
    assert attribute("rootDeviceName") == {"RootDeviceName": {"Value": "/dev/vda"}}
    [root] = attribute("blockDeviceMapping")["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/vda" and root["Ebs"]["VolumeId"].startswith("vol-")
    assert attribute("sourceDestCheck") == {"SourceDestCheck": {"Value": True}}
    for kw, code in (({"InstanceId": iid, "Attribute": "colour"}, "InvalidParameterValue"),
                     ({"InstanceId": "i-nope", "Attribute": "instanceType"},
                      "InvalidInstanceID.Malformed"),
                     ({"InstanceId": "i-0123456789abcdef0", "Attribute": "instanceType"},
                      "InvalidInstanceID.NotFound")):
        with pytest.raises(ClientError) as e:
            ec2.describe_instance_attribute(**kw)
        assert code_of(e) == code, kw
    with pytest.raises(ClientError) as e:
        stack.client("ak_bob").describe_instance_attribute(InstanceId=iid,
                                                           Attribute="instanceType")
    assert code_of(e) == "InvalidInstanceID.NotFound"
