"""The EC2 API service on a real stack, driven by boto3.

PostgreSQL (the platform's log and the ACL's), a real nats-server, the kernel with real workers
on libvirt's test driver, the relay, the command intake and the ACL responder run in this
process; the EC2 service runs as its own process (`python -m services.ec2`), talking
to them only over NATS. boto3 signs with an ACL user's key.

The lifecycle test checks the platform's own store at each step (its instance is launched into
the implemented guest network, so it has a NIC, whose address and MAC boto3 sees, and it asks
the calls tools make first: DescribeInstanceTypes, DescribeAccountAttributes,
DescribeInstanceStatus, DescribeInstanceAttribute; its network is a subnet, CreateVpc,
CreateSubnet refused to a tenant by the ACL, ImportKeyPair); the restart test kills the
service (SIGKILL), changes things through the intake meanwhile, and restarts it: its durable
consumer resumes and its view shows every change, while orchestration never stopped, and the
tags (the service's own data) are still there.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import nats
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from support.cloud import Cloud, Prepared, prepare, running_cloud, write_inventory
from support.services import free_port, platform_edges

from gateways.access import ApiKey, Keyring, keys_path
from gateways.service_keys import issue_service_key
from gateways.stream.intake import COMMANDS_PREFIX
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.event_feed import EventFeed
from kernel.settings import Settings, load_settings
from services.acl.client import AclClient
from services.acl.service import AclService
from services.framework.tenant_view import TenantView

ROOT = Path(__file__).resolve().parents[2]
REGION = "test-region-1"
WAIT = 30.0


@dataclass
class Users:
    """The ACL's accounts, users and their SigV4 keys."""

    alice: tuple[str, str]
    bob: tuple[str, str]
    admin: ApiKey  # a platform admin's key (the keyring's), for the admin's switch


def setup(tmp_path: Path, pg_dsn: str, nats_url: str,
          libvirt_host_factory: Callable[..., str]) -> tuple[Settings, Path, Path, Users]:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=8, memory_mib=16384) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data", ec2_port=free_port(), ec2_region=REGION,
                        service_heartbeat_seconds=0.5)
    migrate_all(settings)
    config = tmp_path / "cloudkernel.toml"
    config.write_text("\n".join([
        'store = "postgres"', f"postgres_dsn = {json.dumps(pg_dsn)}",
        f"nats_urls = [{json.dumps(nats_url)}]", f"data_dir = {json.dumps(str(settings.data_dir))}",
        f"ec2_port = {settings.ec2_port}", f'ec2_region = "{REGION}"',
        "service_heartbeat_seconds = 0.5", 'log_level = "INFO"']) + "\n")
    acl = AclService.open(settings)
    try:
        keys = {}
        for account, user in (("acme", "alice"), ("globex", "bob")):
            acl.create_account(account, domain="ROOT")
            acl.create_user(user, account=account, role="user", password=f"{user}-password")
            key, secret = acl.create_key(user)
            keys[user] = (key.key_id, secret)
    finally:
        acl.close()
    admin = Keyring(keys_path(settings)).create(actor="admin", role="admin")
    return settings, config, write_inventory(tmp_path, uris), \
        Users(keys["alice"], keys["bob"], admin)


class Ec2Process:
    """`python -m services.ec2` in its own process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> None:
        # the platform issues the service's key before it starts, as `up` does
        issue_service_key(load_settings(config_path=self.config), "ec2")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CLOUDKERNEL_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.ec2", "--config", str(self.config)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if "ec2 serving" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise AssertionError("the ec2 service did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, as `up` stops it; its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else int(self.proc.returncode)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return int(self.proc.wait(20))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the ec2 service ignored SIGTERM:\n"
                                 + "".join(self.output)) from None


def client(settings: Settings, key: tuple[str, str], secret: str | None = None) -> Any:
    return boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{settings.ec2_port}",
                        region_name=settings.ec2_region, aws_access_key_id=key[0],
                        aws_secret_access_key=secret or key[1],
                        config=Config(retries={"max_attempts": 2}))


async def call(fn: Callable[..., Any], **kw: Any) -> Any:
    """A blocking boto3 call, off the loop that runs the platform."""
    return await asyncio.to_thread(fn, **kw)


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `check` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: still {last!r} after {timeout:.0f} s")


async def instance_state(ec2: Any, iid: str) -> str:
    found = await call(ec2.describe_instances, InstanceIds=[iid])
    return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])


async def reach_state(ec2: Any, iid: str, state: str) -> None:
    async def check() -> bool:
        return await instance_state(ec2, iid) == state
    await eventually(check, f"instance {iid} {state}")


def platform_id(ec2_id: str) -> UUID:
    return UUID(hex=ec2_id.split("-", 1)[1])


def code_of(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


async def lifecycle(settings: Settings, cloud: Cloud, ids: Prepared, users: Users) -> None:
    ec2 = client(settings, users.alice)
    [image] = (await call(ec2.describe_images, ImageIds=["ami-" + ids.template_id.hex]))["Images"]
    assert image["State"] == "available" and image["Name"] == "tiny"
    assert ids.network_id is not None
    subnet = "subnet-" + ids.network_id.hex  # the guest network, as RunInstances takes it
    run = await call(ec2.run_instances, ImageId=image["ImageId"], InstanceType="small",
                     MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "z1"},
                     SubnetId=subnet,
                     TagSpecifications=[tag_spec("instance", Name="web", env="test"),
                                        tag_spec("volume", backup="daily")])
    [instance] = run["Instances"]
    iid, vm_id = instance["InstanceId"], platform_id(instance["InstanceId"])
    assert instance["State"]["Name"] == "pending" and run["OwnerId"] == "acme"
    assert tags_of(instance) == {"Name": "web", "env": "test"}
    vm = await cloud.get(vm_id)
    assert vm.account == "acme" and vm.template_id == ids.template_id
    await reach_state(ec2, iid, "running")
    assert (await cloud.get(vm_id)).state.value == "Running"
    running = await call(ec2.describe_instances, Filters=[
        {"Name": "instance-state-name", "Values": ["running"]}])
    assert [i["InstanceId"] for r in running["Reservations"] for i in r["Instances"]] == [iid]
    await check_private_address(ec2, cloud, iid, subnet)
    await check_first_calls(ec2, cloud, ids, iid)
    await check_tags(ec2, iid)
    await check_vpcs_and_keys(ec2, cloud, subnet)

    stopped = await call(ec2.stop_instances, InstanceIds=[iid])
    assert stopped["StoppingInstances"][0]["PreviousState"]["Name"] == "running"
    await reach_state(ec2, iid, "stopped")
    assert (await cloud.get(vm_id)).state.value == "Stopped"
    await call(ec2.start_instances, InstanceIds=[iid])
    await reach_state(ec2, iid, "running")
    assert (await cloud.get(vm_id)).state.value == "Running"

    volume = await call(ec2.create_volume, Size=1, AvailabilityZone="z1")
    vol, volume_id = volume["VolumeId"], platform_id(volume["VolumeId"])

    async def volume_state(state: str) -> bool:
        found = (await call(ec2.describe_volumes, VolumeIds=[vol]))["Volumes"][0]
        return found["State"] == state and (state != "in-use" or
                                            found["Attachments"][0]["State"] == "attached")
    await eventually(lambda: volume_state("available"), "volume available")
    assert (await cloud.get(volume_id)).state.value == "Ready"
    await call(ec2.attach_volume, VolumeId=vol, InstanceId=iid, Device="/dev/sdf")
    await eventually(lambda: volume_state("in-use"), "volume attached")
    assert (await cloud.get(volume_id)).vm_id == vm_id
    assert volume_id in (await cloud.get(vm_id)).disks.values()
    described = (await call(ec2.describe_instances, InstanceIds=[iid]))["Reservations"]
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"]
               for m in described[0]["Instances"][0]["BlockDeviceMappings"]}
    assert devices["/dev/sdf"] == vol and "/dev/vda" in devices
    await call(ec2.detach_volume, VolumeId=vol)
    await eventually(lambda: volume_state("available"), "volume detached")
    assert (await cloud.get(volume_id)).vm_id is None
    snap = await call(ec2.create_snapshot, VolumeId=vol, Description="first")

    async def snapshot_done() -> bool:
        found = await call(ec2.describe_snapshots, SnapshotIds=[snap["SnapshotId"]])
        return found["Snapshots"][0]["State"] == "completed"
    await eventually(snapshot_done, "snapshot completed")
    assert (await cloud.get(platform_id(snap["SnapshotId"]))).volume_id == volume_id

    # another account sees none of it; errors have EC2's codes
    bob = client(settings, users.bob)
    with pytest.raises(ClientError) as e:
        await call(bob.describe_instances, InstanceIds=[iid])
    assert code_of(e) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as e:
        await call(bob.create_tags, Resources=[iid], Tags=[{"Key": "Name", "Value": "his"}])
    assert code_of(e) == "InvalidInstanceID.NotFound"
    # (the guest network belongs to no account: bob sees it, with its Name, as alice does)
    assert [t["ResourceType"] for t in (await call(bob.describe_tags))["Tags"]] == ["subnet"]
    assert (await call(bob.describe_volumes))["Volumes"] == []
    with pytest.raises(ClientError) as e:
        await call(ec2.describe_vpn_gateways)
    assert code_of(e) == "InvalidAction"
    with pytest.raises(ClientError) as e:
        await call(client(settings, users.alice, secret="0" * 40).describe_instances)
    assert code_of(e) == "SignatureDoesNotMatch"

    # the admin's switch: disabled, the service answers Unavailable; enabled, it serves again
    await admin_send(settings, users.admin, "service.disable",
                     {"name": "ec2", "reason": "maintenance"})

    async def answer() -> str:
        try:
            await call(ec2.describe_regions)
            return "ok"
        except ClientError as e:
            return str(e.response["Error"]["Code"])
    await eventually(lambda: _is(answer, "Unavailable"), "ec2 disabled")
    await admin_send(settings, users.admin, "service.enable", {"name": "ec2"})
    await eventually(lambda: _is(answer, "ok"), "ec2 enabled again")

    ended = await call(ec2.terminate_instances, InstanceIds=[iid])
    assert ended["TerminatingInstances"][0]["PreviousState"]["Name"] == "running"
    await reach_state(ec2, iid, "terminated")
    assert (await cloud.get(vm_id)).state.value in ("Destroyed", "Expunging", "Expunged")


async def check_private_address(ec2: Any, cloud: Cloud, iid: str, subnet: str) -> None:
    """The instance shows the address and MAC its NIC has in the platform's store."""
    vm = await cloud.get(platform_id(iid))
    [nic_id] = vm.nics.values()
    nic = await cloud.get(nic_id)
    assert nic.ip is not None and nic.state.value == "Reserved"
    [shown] = (await call(ec2.describe_instances, InstanceIds=[iid]))["Reservations"][0][
        "Instances"]
    assert shown["PrivateIpAddress"] == nic.ip and shown["SubnetId"] == subnet
    assert shown["PrivateDnsName"] == vm.name  # the name the network's DNS answers
    [eni] = shown["NetworkInterfaces"]
    assert (eni["NetworkInterfaceId"], eni["MacAddress"], eni["PrivateIpAddress"]) == (
        "eni-" + nic_id.hex, nic.mac, nic.ip)
    assert eni["Attachment"]["DeviceIndex"] == 0
    found = await call(ec2.describe_instances, Filters=[
        {"Name": "private-ip-address", "Values": [nic.ip]}])
    assert ids_of(found) == [iid]


async def check_first_calls(ec2: Any, cloud: Cloud, ids: Prepared, iid: str) -> None:
    """DescribeInstanceTypes, DescribeAccountAttributes, DescribeInstanceStatus and
    DescribeInstanceAttribute answer as EC2 does, from what the platform knows."""
    offering = await cloud.get(ids.offering_id)
    [kind] = (await call(ec2.describe_instance_types, InstanceTypes=[offering.name]))[
        "InstanceTypes"]
    assert kind["VCpuInfo"]["DefaultVCpus"] == offering.cpu_cores
    assert kind["MemoryInfo"]["SizeInMiB"] == offering.memory_mib
    attributes = {a["AttributeName"]: [v["AttributeValue"] for v in a["AttributeValues"]]
                  for a in (await call(ec2.describe_account_attributes))["AccountAttributes"]}
    assert attributes["supported-platforms"] == ["VPC"]
    assert attributes["default-vpc"] == ["none"] and attributes["max-instances"]
    [status] = (await call(ec2.describe_instance_status, InstanceIds=[iid]))[
        "InstanceStatuses"]
    assert (status["InstanceState"]["Name"], status["SystemStatus"]["Status"],
            status["InstanceStatus"]["Status"]) == ("running", "ok", "ok")
    assert status["AvailabilityZone"] == "z1"
    attribute = await call(ec2.describe_instance_attribute, InstanceId=iid,
                           Attribute="instanceType")
    assert attribute["InstanceType"] == {"Value": offering.name}
    assert (await call(ec2.describe_instance_attribute, InstanceId=iid,
                       Attribute="userData"))["UserData"] == {}
    with pytest.raises(ClientError) as e:
        await call(ec2.describe_instance_attribute, InstanceId=iid, Attribute="colour")
    assert code_of(e) == "InvalidParameterValue"


async def check_vpcs_and_keys(ec2: Any, cloud: Cloud, subnet: str) -> None:
    """The network the instance runs in is a subnet of the account's VPC of the zone; a VPC
    CreateVpc made is the service's; a tenant may not create a network (the real ACL says
    so); ImportKeyPair keeps a public key DescribeKeyPairs shows."""
    network = await cloud.get(platform_id(subnet))
    [shown] = (await call(ec2.describe_subnets, SubnetIds=[subnet]))["Subnets"]
    assert (shown["CidrBlock"], shown["State"], shown["AvailabilityZone"]) == (
        network.cidr, "available", "z1")
    assert shown["AvailableIpAddressCount"] == network.free_ip_count
    assert shown["Tags"] == [{"Key": "Name", "Value": network.name}]
    vpc = (await call(ec2.create_vpc, CidrBlock="10.1.0.0/16"))["Vpc"]
    vpcs = {v["VpcId"]: v for v in (await call(ec2.describe_vpcs))["Vpcs"]}
    assert shown["VpcId"] in vpcs and vpc["VpcId"] in vpcs
    with pytest.raises(ClientError) as e:
        await call(ec2.create_subnet, VpcId=vpc["VpcId"], CidrBlock="10.1.200.0/24")
    assert code_of(e) == "UnauthorizedOperation"
    await call(ec2.delete_vpc, VpcId=vpc["VpcId"])
    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOgyx4FZYFx6MSnv+ak1JzelWKDdBnCdVREXnWs/6e6t "
           "me@laptop")
    imported = await call(ec2.import_key_pair, KeyName="laptop", PublicKeyMaterial=key.encode())
    [pair] = (await call(ec2.describe_key_pairs, KeyNames=["laptop"]))["KeyPairs"]
    assert (pair["KeyType"], pair["KeyFingerprint"]) == ("ed25519", imported["KeyFingerprint"])


def tag_spec(kind: str, **tags: str) -> dict[str, Any]:
    return {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def tags_of(described: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in described.get("Tags", [])}


def ids_of(answer: dict[str, Any]) -> list[str]:
    return [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]


async def check_tags(ec2: Any, iid: str) -> None:
    """The tags given at launch: in DescribeInstances, selected by tag filters, on the root
    volume; CreateTags and DeleteTags change them; boto3's paginator walks DescribeTags."""
    [described] = (await call(ec2.describe_instances, InstanceIds=[iid]))["Reservations"][0][
        "Instances"]
    assert tags_of(described) == {"Name": "web", "env": "test"}
    for filters, expected in (([{"Name": "tag:env", "Values": ["test"]}], [iid]),
                              ([{"Name": "tag:Name", "Values": ["w?b"]}], [iid]),
                              ([{"Name": "tag-key", "Values": ["env"]}], [iid]),
                              ([{"Name": "tag:env", "Values": ["prod"]}], [])):
        assert ids_of(await call(ec2.describe_instances, Filters=filters)) == expected
    [root] = (await call(ec2.describe_volumes, Filters=[
        {"Name": "tag:backup", "Values": ["daily"]}]))["Volumes"]
    assert root["Attachments"][0]["InstanceId"] == iid
    await call(ec2.create_tags, Resources=[iid, root["VolumeId"]],
               Tags=[{"Key": "owner", "Value": "alice"}])
    await call(ec2.delete_tags, Resources=[iid], Tags=[{"Key": "env"}])
    found = (await call(ec2.describe_tags, Filters=[{"Name": "key", "Values": ["owner"]}]))
    assert sorted((t["ResourceType"], t["ResourceId"]) for t in found["Tags"]) == [
        ("instance", iid), ("volume", root["VolumeId"])]
    assert ids_of(await call(ec2.describe_instances, Filters=[
        {"Name": "tag-key", "Values": ["env"]}])) == []
    await call(ec2.create_tags, Resources=[iid], Tags=[{"Key": "env", "Value": "test"},
                                                       {"Key": "tier", "Value": "web"}])
    pages = await asyncio.to_thread(lambda: list(ec2.get_paginator("describe_tags").paginate(
        PaginationConfig={"PageSize": 5})))
    # six on the instance and its volume, and the subnet's Name (its network's name)
    assert [len(p["Tags"]) for p in pages] == [5, 2]


async def _is(check: Callable[[], Any], expected: str) -> bool:
    return bool(await check() == expected)


async def admin_send(settings: Settings, key: ApiKey, tag: str, body: dict[str, Any]) -> None:
    """A command through the intake signed with a platform admin's key."""
    subject, data, idem = COMMANDS_PREFIX + tag, json.dumps(body).encode(), uuid.uuid4().hex
    ts = str(int(time.time()))
    nc = await nats.connect(settings.nats_urls[0])
    try:
        msg = await nc.request(subject, data, timeout=20, headers={
            IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(key.secret, timestamp=ts, subject=subject,
                                   idempotency_key=idem, body=data)})
    finally:
        await nc.close()
    reply = json.loads(msg.data)
    assert reply["ok"], reply


def test_boto3_drives_a_whole_lifecycle_through_the_ec2_service(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    settings, config, inventory, users = setup(tmp_path, pg_dsn, nats_url, libvirt_host_factory)
    service = Ec2Process(config)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)  # a guest network: the instance gets a NIC
            async with platform_edges(settings, cloud):
                await asyncio.to_thread(service.start)
                try:
                    await lifecycle(settings, cloud, ids, users)
                finally:
                    assert await asyncio.to_thread(service.stop) == 0, "".join(service.output)

    asyncio.run(scenario())


async def send_as(nc: Any, token: str, tag: str, body: dict[str, Any]) -> dict[str, Any]:
    """A command through the intake with a user's bearer token."""
    msg = await nc.request(COMMANDS_PREFIX + tag, json.dumps(body).encode(), timeout=20,
                           headers={IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex,
                                    "Authorization": f"Bearer {token}"})
    reply: dict[str, Any] = json.loads(msg.data)
    assert reply["ok"], reply
    return reply


def test_a_killed_service_resumes_from_its_durable_consumer_and_misses_nothing(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    settings, config, inventory, users = setup(tmp_path, pg_dsn, nats_url, libvirt_host_factory)
    service = Ec2Process(config)
    view_file = settings.data_dir / "services" / "ec2" / "view.db"

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            async with platform_edges(settings, cloud):
                await asyncio.to_thread(service.start)
                ec2 = client(settings, users.alice)
                run = await call(ec2.run_instances, ImageId="ami-" + ids.template_id.hex,
                                 MinCount=1, MaxCount=1,
                                 TagSpecifications=[tag_spec("instance", role="api")])
                first = run["Instances"][0]["InstanceId"]
                await reach_state(ec2, first, "running")
                await call(ec2.create_tags, Resources=[first],
                           Tags=[{"Key": "Name", "Value": "api-1"}])
                await asyncio.to_thread(service.kill)
                # The ACL refuses a signature seen before, and the new process cannot know
                # what the old one verified: no request after the restart may be signed in
                # the same second as one before it (boto3 signs to the second).
                await asyncio.sleep(1.1)

                # the platform goes on without the service: a deploy and a stop, as alice
                nc = await nats.connect(nats_url)
                try:
                    token, _ = await AclClient(nc).login("alice", "alice-password")
                    deployed = await send_as(nc, token, "vm.deploy", {
                        "name": "made-meanwhile", "account": "acme", "zone_id": str(ids.zone_id),
                        "service_offering_id": str(ids.offering_id),
                        "template_id": str(ids.template_id)})
                    stopping = await send_as(nc, token, "vm.stop",
                                             {"vm_id": str(platform_id(first))})
                finally:
                    await nc.close()
                for reply in (deployed, stopping):
                    op = await cloud.finished(reply["result"]["operation_id"], WAIT)
                    assert op.state.value == "Succeeded", op.state
                second = "i-" + UUID(deployed["result"]["vm_id"]).hex
                view = TenantView(view_file)
                try:
                    durable = view.durable("ec2-tenant-view")
                    behind = view.position
                finally:
                    view.close()

                await asyncio.to_thread(service.start)
                try:
                    await reach_state(ec2, first, "stopped")
                    await reach_state(ec2, second, "running")
                except AssertionError as e:
                    raise AssertionError(f"{e}\n{''.join(service.output)}") from None
                # the tags survived the restart, and tag filters select with them
                [described] = (await call(ec2.describe_instances, InstanceIds=[first]))[
                    "Reservations"][0]["Instances"]
                assert tags_of(described) == {"Name": "api-1", "role": "api"}
                assert ids_of(await call(ec2.describe_instances, Filters=[
                    {"Name": "tag:role", "Values": ["api"]}])) == [first]
                # a VM made outside EC2 has its name as its Name tag
                assert ids_of(await call(ec2.describe_instances, Filters=[
                    {"Name": "tag:Name", "Values": ["made-meanwhile"]}])) == [second]
                assert await asyncio.to_thread(service.stop) == 0, "".join(service.output)

                # the same durable consumer went on, and the view has every change
                nc = await nats.connect(nats_url)
                try:
                    info = await nc.jetstream().consumer_info("EVENTS", durable)
                    assert info.num_pending == 0 and info.num_ack_pending == 0
                finally:
                    await nc.close()
                view = TenantView(view_file)
                try:
                    assert view.position > behind and view.durable("ec2-tenant-view") == durable
                    for row in view.vms("acme"):
                        assert row.state == (await cloud.get(row.id)).state.value, row
                    wanted = [e.position for e in EventFeed(cloud.app).read(0, 100_000)
                              if e.subject.startswith(("cloudkernel.events.vm.",
                                                       "cloudkernel.events.volume."))]
                    assert view.position >= max(wanted)
                    assert {v.name for v in view.vms("acme")} >= {first, "made-meanwhile"}
                finally:
                    view.close()

    try:
        asyncio.run(scenario())
    finally:
        with contextlib.suppress(Exception):
            service.stop()
