"""VPCs, subnets and ImportKeyPair (issue 20), driven by boto3 over the fakes of
`ec2_harness`; the cloud answers the network guru's and element's steps, so CreateSubnet's
`network.create` and `network.implement` and DeleteSubnet's `network.shutdown` run."""

import base64
import hashlib
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from support.sample import load_sample_with_ready_template

from aggregates.network import Network
from kernel.steps.network import (
    DesignNetwork,
    ElementShutDown,
    ImplementNetwork,
    NetworkDesign,
    ShutdownElement,
    ShutdownNetwork,
    VlanAssigned,
    VlanReleased,
)
from kernel.store.testing import scratch_application
from subsystems.networkguru.design import design_network
from tests.unit.operations.test_vm_moves import NicCloud
from tests.unit.services.ec2_harness import (
    FakeAcl,
    Stack,
    close_service,
    code_of,
    image_id,
    open_service,
)


class NetCloud(NicCloud):
    """The NIC harness answering the guru's design, implement and shutdown too."""

    vlans = count(200)

    def _networkguru_design(self, raw: msgspec.Raw) -> NetworkDesign:
        return design_network(msgspec.json.decode(raw, type=DesignNetwork), [])

    def _networkguru_implement(self, raw: msgspec.Raw) -> VlanAssigned:
        args = msgspec.json.decode(raw, type=ImplementNetwork)
        network: Network = self.get(args.network_id)
        return VlanAssigned(network_id=network.id, zone_id=network.zone_id,
                            vlan=next(self.vlans), pooled=True)

    def _networkelement_shutdown(self, raw: msgspec.Raw) -> ElementShutDown:
        args = msgspec.json.decode(raw, type=ShutdownElement)
        return ElementShutDown(network_id=args.network_id, host_uri=args.host_uri,
                               existed=True)

    def _networkguru_shutdown(self, raw: msgspec.Raw) -> VlanReleased:
        args = msgspec.json.decode(raw, type=ShutdownNetwork)
        network: Network = self.get(args.network_id)
        return VlanReleased(network_id=network.id, zone_id=network.zone_id, vlan=network.vlan)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Stack, Network]]:
    """A stack whose cloud answers the network steps, with one implemented network."""
    app = scratch_application()
    load_sample_with_ready_template(app)
    cloud = NetCloud(app)
    zone_id = next(iter(cloud.ids("zone.Created")))
    network = Network.create(name="guests", zone_id=zone_id, cidr="10.9.0.0/24",
                             gateway="10.9.0.1", reserved_ranges=(("10.9.0.2", "10.9.0.9"),))
    network.implement()
    network.implemented(vlan=100)
    app.save(network)
    acl, enabled = FakeAcl(), [True]
    platform, served = open_service(cloud, acl, tmp_path / "ec2", enabled)
    platform.steps = True  # a wait lets the subsystems answer
    yield Stack(cloud, platform, acl, served, enabled), network
    close_service(platform, served)
    app.close()


def subnet_of(network: Network) -> str:
    return "subnet-" + network.id.hex


def error(call: Any) -> str:
    with pytest.raises(ClientError) as e:
        call()
    return code_of(e)


# ------------------------------------------------------------------ subnets


def test_describe_subnets_shows_the_platform_networks(net: tuple[Stack, Network]) -> None:
    stack, network = net
    ec2 = stack.client()
    [subnet] = ec2.describe_subnets()["Subnets"]
    [vpc] = ec2.describe_vpcs()["Vpcs"]  # the account's VPC of the zone
    assert subnet["SubnetId"] == subnet_of(network) and subnet["VpcId"] == vpc["VpcId"]
    assert subnet["CidrBlock"] == "10.9.0.0/24" and subnet["State"] == "available"
    assert subnet["AvailabilityZone"] == "zone-1" and subnet["OwnerId"] == "alice"
    # 254 usable, less the gateway and the 8 reserved
    assert subnet["AvailableIpAddressCount"] == 245
    assert subnet["DefaultForAz"] is False and subnet["MapPublicIpOnLaunch"] is False
    assert subnet["Tags"] == [{"Key": "Name", "Value": "guests"}]  # the platform name
    # the zone's guest CIDR (10.1.0.0/16) and its network's
    assert vpc["CidrBlock"] == "10.0.0.0/12" and vpc["IsDefault"] is False
    assert vpc["State"] == "available"
    # a shared subnet's tags are every account's: only a root admin changes them
    assert error(lambda: ec2.create_tags(Resources=[subnet_of(network)], Tags=[
        {"Key": "env", "Value": "x"}])) == "UnauthorizedOperation"
    stack.client("ak_root").create_tags(Resources=[subnet_of(network)],
                                        Tags=[{"Key": "env", "Value": "lab"}])
    ec2.create_tags(Resources=[vpc["VpcId"]], Tags=[{"Key": "mine", "Value": "yes"}])
    # bob sees the network too (networks belong to no account), in a VPC of his own
    bob = stack.client("ak_bob")
    [his] = bob.describe_subnets()["Subnets"]
    assert his["SubnetId"] == subnet_of(network) and his["VpcId"] != vpc["VpcId"]
    assert his["Tags"] == [{"Key": "Name", "Value": "guests"}, {"Key": "env", "Value": "lab"}]
    assert bob.describe_vpcs()["Vpcs"][0].get("Tags", []) == []  # alice's VPC tag is hers
    # a launch into it takes an address: one fewer is free
    [instance] = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1,
                                   SubnetId=subnet_of(network))["Instances"]
    assert instance["SubnetId"] == subnet_of(network) and instance["PrivateIpAddress"]
    stack.progress()
    assert ec2.describe_subnets(SubnetIds=[subnet_of(network)])["Subnets"][0][
        "AvailableIpAddressCount"] == 244


def test_describe_subnets_filters_pages_and_refuses(net: tuple[Stack, Network]) -> None:
    stack, network = net
    ec2 = stack.client()
    [vpc] = ec2.describe_vpcs()["Vpcs"]
    for name, value, found in (("subnet-id", subnet_of(network), 1),
                               ("vpc-id", vpc["VpcId"], 1), ("vpc-id", "vpc-0000", 0),
                               ("cidr-block", "10.9.0.0/24", 1), ("cidrBlock", "10.9.*", 1),
                               ("availability-zone", "zone-1", 1),
                               ("availability-zone", "zone-9", 0), ("state", "available", 1),
                               ("state", "pending", 0), ("tag:Name", "guests", 1),
                               ("tag:Name", "other", 0)):
        assert len(ec2.describe_subnets(Filters=[{"Name": name, "Values": [value]}])[
            "Subnets"]) == found, (name, value)
    for n in range(6):  # more networks, then pages of 5
        more = Network.create(name=f"n{n}", zone_id=network.zone_id, cidr=f"10.8.{n}.0/24",
                              gateway=f"10.8.{n}.1")
        stack.cloud.app.save(more)
    stack.platform.feed()
    pages = list(ec2.get_paginator("describe_subnets").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["Subnets"]) for p in pages] == [5, 2]
    assert {s["State"] for p in pages for s in p["Subnets"]} == {"available", "pending"}
    for kw, code in (({"SubnetIds": ["subnet-nope"]}, "InvalidSubnetID.Malformed"),
                     ({"SubnetIds": ["subnet-0123456789abcdef0"]}, "InvalidSubnetID.NotFound"),
                     ({"SubnetIds": [subnet_of(network)], "MaxResults": 5},
                      "InvalidParameterCombination"),
                     ({"Filters": [{"Name": "colour", "Values": ["x"]}]},
                      "InvalidParameterValue")):
        assert error(lambda kw=kw: ec2.describe_subnets(**kw)) == code, kw


def test_a_tenant_may_not_create_or_delete_a_subnet(net: tuple[Stack, Network]) -> None:
    stack, network = net
    ec2 = stack.client()
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    head = stack.head()
    with pytest.raises(ClientError) as e:
        ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")
    assert code_of(e) == "UnauthorizedOperation"
    assert "only a root admin" in e.value.response["Error"]["Message"]
    assert error(lambda: ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24",
                                           DryRun=True)) == "UnauthorizedOperation"
    assert error(lambda: ec2.delete_subnet(SubnetId=subnet_of(network))) \
        == "UnauthorizedOperation"
    assert stack.head() == head  # nothing was made
    assert len(ec2.describe_subnets()["Subnets"]) == 1


def test_a_root_admin_creates_a_subnet_in_an_accounts_vpc_and_deletes_it(
        net: tuple[Stack, Network]) -> None:
    stack, _network = net
    alice, root = stack.client(), stack.client("ak_root")
    vpc = alice.create_vpc(CidrBlock="10.1.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "main"}]}])["Vpc"]
    assert vpc["CidrBlock"] == "10.1.0.0/16" and vpc["OwnerId"] == "alice"
    assert vpc["Tags"] == [{"Key": "Name", "Value": "main"}]
    assert error(lambda: root.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.1.1.0/24",
                                            DryRun=True)) == "DryRunOperation"
    subnet = root.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.1.1.0/24",
                                AvailabilityZone="zone-1", TagSpecifications=[
                                    {"ResourceType": "subnet",
                                     "Tags": [{"Key": "tier", "Value": "web"}]}])["Subnet"]
    assert subnet["State"] == "available" and subnet["VpcId"] == vpc["VpcId"]
    assert subnet["OwnerId"] == "alice" and subnet["AvailableIpAddressCount"] == 253
    network: Network = stack.cloud.get(UUID(hex=subnet["SubnetId"].removeprefix("subnet-")))
    assert (network.cidr, network.state.value) == ("10.1.1.0/24", "Implemented")
    # alice sees it in her VPC, with its tags; bob does not see it
    [mine] = alice.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
        "Subnets"]
    assert mine["SubnetId"] == subnet["SubnetId"] and mine["Tags"] == [
        {"Key": "tier", "Value": "web"}]
    bob = stack.client("ak_bob")
    assert subnet["SubnetId"] not in [s["SubnetId"] for s in bob.describe_subnets()["Subnets"]]
    assert error(lambda: bob.describe_subnets(SubnetIds=[subnet["SubnetId"]])) \
        == "InvalidSubnetID.NotFound"
    # the VPC holds it: not deleted; a conflicting or outside block is refused
    assert error(lambda: alice.delete_vpc(VpcId=vpc["VpcId"], DryRun=False)) \
        == "DependencyViolation"
    for cidr, code in (("10.1.1.128/25", "InvalidSubnet.Conflict"),
                       ("10.30.0.0/24", "InvalidSubnet.Range"),
                       ("10.1.2.0/29", "InvalidSubnet.Range"),
                       ("10.1.2.1/24", "InvalidParameterValue")):
        assert error(lambda cidr=cidr: root.create_subnet(VpcId=vpc["VpcId"],
                                                          CidrBlock=cidr)) == code, cidr
    # alice launches into it; while the instance holds an address it cannot be deleted
    [instance] = alice.run_instances(ImageId=image_id(alice), MinCount=1, MaxCount=1,
                                     SubnetId=subnet["SubnetId"])["Instances"]
    assert instance["SubnetId"] == subnet["SubnetId"]
    stack.progress()
    # (DryRun=False: not the same signed bytes as the last call, which would be a replay)
    assert error(lambda: root.delete_subnet(SubnetId=subnet["SubnetId"], DryRun=False)) \
        == "DependencyViolation"
    alice.terminate_instances(InstanceIds=[instance["InstanceId"]])
    stack.progress()
    assert error(lambda: root.delete_subnet(SubnetId=subnet["SubnetId"], DryRun=True)) \
        == "DryRunOperation"
    root.delete_subnet(SubnetId=subnet["SubnetId"])
    stack.progress()
    assert stack.cloud.get(network.id).state.value == "Shutdown"
    assert error(lambda: alice.describe_subnets(SubnetIds=[subnet["SubnetId"]])) \
        == "InvalidSubnetID.NotFound"
    alice.delete_vpc(VpcId=vpc["VpcId"])
    assert vpc["VpcId"] not in [v["VpcId"] for v in alice.describe_vpcs()["Vpcs"]]


def test_a_root_admin_creates_a_shared_subnet_in_a_zones_vpc(
        net: tuple[Stack, Network]) -> None:
    stack, _network = net
    root = stack.client("ak_root")
    [zone_vpc] = root.describe_vpcs()["Vpcs"]
    subnet = root.create_subnet(VpcId=zone_vpc["VpcId"], CidrBlock="10.1.5.0/24")["Subnet"]
    assert subnet["AvailabilityZone"] == "zone-1" and subnet["OwnerId"] == ""
    # not placed in any account's VPC: every account sees it, in its own VPC of the zone
    for key in ("ak_alice", "ak_bob"):
        ec2 = stack.client(key)
        [vpc] = ec2.describe_vpcs()["Vpcs"]
        found = ec2.describe_subnets(SubnetIds=[subnet["SubnetId"]])["Subnets"]
        assert [s["VpcId"] for s in found] == [vpc["VpcId"]]
    assert error(lambda: root.create_subnet(VpcId=zone_vpc["VpcId"], CidrBlock="10.1.6.0/24",
                                            AvailabilityZone="zone-9")) \
        == "InvalidParameterValue"
    assert error(lambda: root.delete_vpc(VpcId=zone_vpc["VpcId"])) == "DependencyViolation"


def test_run_instances_refuses_a_subnet_it_cannot_see(net: tuple[Stack, Network]) -> None:
    stack, _network = net
    ec2 = stack.client()
    for subnet, code in (("subnet-" + "0" * 32, "InvalidSubnetID.NotFound"),
                         ("subnet-0123456789abcdef0", "InvalidSubnetID.NotFound"),
                         ("subnet-x", "InvalidSubnetID.Malformed")):
        assert error(lambda subnet=subnet: ec2.run_instances(
            ImageId=image_id(ec2), MinCount=1, MaxCount=1, SubnetId=subnet)) == code


# ------------------------------------------------------------------ VPCs


def test_vpcs_describe_filter_page_and_delete(net: tuple[Stack, Network]) -> None:
    stack, _network = net
    ec2 = stack.client()
    [zone_vpc] = ec2.describe_vpcs()["Vpcs"]
    made = [ec2.create_vpc(CidrBlock=f"10.{30 + n}.0.0/16")["Vpc"]["VpcId"] for n in range(5)]
    assert error(lambda: ec2.create_vpc(CidrBlock="10.50.0.0/16")) == "VpcLimitExceeded"
    every = [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]]
    assert every == [zone_vpc["VpcId"], *made]
    pages = list(ec2.get_paginator("describe_vpcs").paginate(PaginationConfig={"PageSize": 5}))
    assert [v["VpcId"] for p in pages for v in p["Vpcs"]] == every
    assert [len(p["Vpcs"]) for p in pages] == [5, 1]
    for name, value, found in (("vpc-id", made[0], [made[0]]), ("is-default", "true", []),
                               ("cidr", "10.31.0.0/16", [made[1]]),
                               ("state", "available", every)):
        assert [v["VpcId"] for v in ec2.describe_vpcs(
            Filters=[{"Name": name, "Values": [value]}])["Vpcs"]] == found, name
    ec2.create_tags(Resources=[made[2]], Tags=[{"Key": "env", "Value": "prod"}])
    assert [v["VpcId"] for v in ec2.describe_vpcs(
        Filters=[{"Name": "tag:env", "Values": ["prod"]}])["Vpcs"]] == [made[2]]
    assert [v["VpcId"] for v in ec2.describe_vpcs(VpcIds=[made[3]])["Vpcs"]] == [made[3]]
    # bob sees none of alice's
    bob = stack.client("ak_bob")
    assert error(lambda: bob.describe_vpcs(VpcIds=[made[0]])) == "InvalidVpcID.NotFound"
    assert error(lambda: bob.delete_vpc(VpcId=made[0])) == "InvalidVpcID.NotFound"
    assert len(bob.describe_vpcs()["Vpcs"]) == 1
    for call, code in ((lambda: ec2.describe_vpcs(VpcIds=["vpc-zz"]), "InvalidVpcID.Malformed"),
                       (lambda: ec2.delete_vpc(VpcId="vpc-0123456789abcdef0"),
                        "InvalidVpcID.NotFound"),
                       (lambda: ec2.create_vpc(CidrBlock="10.0.0.0/8"), "InvalidVpc.Range"),
                       (lambda: ec2.create_vpc(CidrBlock="nope"), "InvalidParameterValue"),
                       (lambda: stack.client("ak_root").create_vpc(CidrBlock="10.9.0.0/16"),
                        "UnauthorizedOperation"),
                       (lambda: ec2.delete_vpc(VpcId=zone_vpc["VpcId"]),
                        "DependencyViolation")):  # it holds the zone's network
        assert error(call) == code
    assert error(lambda: ec2.delete_vpc(VpcId=made[4], DryRun=True)) == "DryRunOperation"
    ec2.delete_vpc(VpcId=made[4])
    assert error(lambda: ec2.describe_vpcs(VpcIds=[made[4]])) == "InvalidVpcID.NotFound"
    assert stack.platform.sent == []  # VPCs are the service's own: nothing sent


# ------------------------------------------------------------------ ImportKeyPair


def openssh(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH))


def test_import_key_pair_keeps_rsa_ed25519_and_ecdsa_keys(stack: Stack) -> None:
    ec2 = stack.client()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    md5 = hashlib.md5(der, usedforsecurity=False).hexdigest()
    answer = ec2.import_key_pair(KeyName="laptop",
                                 PublicKeyMaterial=openssh(rsa_key) + b" me@laptop")
    assert answer["KeyFingerprint"] == ":".join(md5[i:i + 2] for i in range(0, 32, 2))
    assert answer["KeyName"] == "laptop" and answer["KeyPairId"].startswith("key-")
    ed = ed25519.Ed25519PrivateKey.generate()
    blob = base64.b64decode(openssh(ed).split()[1])
    answer = ec2.import_key_pair(KeyName="ed", PublicKeyMaterial=openssh(ed), TagSpecifications=[
        {"ResourceType": "key-pair", "Tags": [{"Key": "who", "Value": "me"}]}])
    assert answer["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert answer["Tags"] == [{"Key": "who", "Value": "me"}]
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        ec2.import_key_pair(KeyName=curve.name, PublicKeyMaterial=openssh(
            ec.generate_private_key(curve)))
    shown = {k["KeyName"]: k for k in ec2.describe_key_pairs()["KeyPairs"]}
    assert {n: k["KeyType"] for n, k in shown.items()} == {
        "laptop": "rsa", "ed": "ed25519", "secp256r1": "ecdsa", "secp384r1": "ecdsa",
        "secp521r1": "ecdsa"}
    assert shown["ed"]["Tags"] == [{"Key": "who", "Value": "me"}]
    [pair] = stack.platform.store.key_pairs("alice")[:1]  # the public key kept, no comment
    assert pair.public_key.startswith(("ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-"))
    assert "me@laptop" not in pair.public_key
    assert error(lambda: ec2.import_key_pair(KeyName="laptop", PublicKeyMaterial=openssh(
        ed))) == "InvalidKeyPair.Duplicate"
    assert stack.client("ak_bob").describe_key_pairs()["KeyPairs"] == []
    # launched with it, the instance names it
    [instance] = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1,
                                   KeyName="ed")["Instances"]
    assert instance["KeyName"] == "ed"


def test_import_key_pair_refuses_what_is_no_key(stack: Stack) -> None:
    ec2 = stack.client()
    good = openssh(ed25519.Ed25519PrivateKey.generate())
    kind, body = good.split()[:2]
    blob = base64.b64decode(body)
    for material in (b"hello", b"ssh-ed25519", b"ssh-ed25519 !!!",
                     kind + b" " + base64.b64encode(blob[:-1]),  # cut short
                     kind + b" " + base64.b64encode(blob + b"\0\0\0\0"),  # trailing field
                     b"ssh-rsa " + body,  # the blob names another type
                     b"ssh-dss " + body, b"-----BEGIN PUBLIC KEY-----"):
        assert error(lambda m=material: ec2.import_key_pair(
            KeyName="k", PublicKeyMaterial=m)) == "InvalidKey.Format", material
    p256 = openssh(ec.generate_private_key(ec.SECP256R1()))
    fields = base64.b64decode(p256.split()[1])
    bent = fields[:-1] + bytes([fields[-1] ^ 1])  # a point off the curve
    assert error(lambda: ec2.import_key_pair(KeyName="k", PublicKeyMaterial=(
        b"ecdsa-sha2-nistp256 " + base64.b64encode(bent)))) == "InvalidKey.Format"
    assert error(lambda: ec2.import_key_pair(KeyName="", PublicKeyMaterial=good)) in (
        "MissingParameter", "InvalidParameterValue")
    assert error(lambda: ec2.import_key_pair(KeyName="k", PublicKeyMaterial=good,
                                             DryRun=True)) == "DryRunOperation"
    assert error(lambda: stack.client("ak_root").import_key_pair(
        KeyName="k", PublicKeyMaterial=good)) == "UnauthorizedOperation"
    assert ec2.describe_key_pairs()["KeyPairs"] == []
