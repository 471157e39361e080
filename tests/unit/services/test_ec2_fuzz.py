"""The EC2 service fuzzed at the protocol level (issue 16): random actions and parameters,
signed by botocore (now and then with a wrong secret, another user's key or an unknown key
id), sent over HTTP to the service on the in-memory engine. Every answer is EC2's XML with no
5xx and an error code among those the service documents (`services.ec2.protocol.CODES`); no
refused request moves the platform's log head; a DryRun never answers 200; and every error
code the service's code can raise is a documented one."""

import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ec2.protocol import CODES
from services.ec2.service import ACTIONS
from tests.unit.services.ec2_harness import Stack, image_id, sign

SERVICE_DIR = Path(__file__).resolve().parents[3] / "services" / "ec2"
_RAISED = re.compile(r'Ec2Error\(\s*"([A-Za-z.]+)"|(?:invalid|code)="([A-Za-z.]+)"|'
                     r'"((?:Invalid|Incorrect)[A-Za-z]*(?:\.[A-Za-z]+)?)"')


def test_every_code_the_service_raises_is_documented() -> None:
    found = {code for path in SERVICE_DIR.glob("*.py")
             for groups in _RAISED.findall(path.read_text()) for code in groups if code}
    assert found, "the pattern found no code"
    assert found <= CODES, found - CODES


def seeded(stack: Stack) -> dict[str, list[str]]:
    """Resources to aim at: a running instance, an available volume, a snapshot, a key."""
    ec2 = stack.client()
    iid = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"]
    vol = ec2.create_volume(Size=1, AvailabilityZone="zone-1")["VolumeId"]
    stack.progress()
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    stack.progress()
    ec2.create_key_pair(KeyName="k1")
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "env", "Value": "test"}])
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    return {"i-": [iid], "vol-": [vol], "snap-": [snap], "ami-": [image_id(ec2)],
            "vpc-": [vpc]}


def weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of the strategies, each as often as its weight says."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda n: table[n])


def ids(prefix: str, known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """Mostly a resource that is there; else an id naming nothing, or junk."""
    return weighted(
        (6, st.sampled_from(known.get(prefix, []) or [prefix + "0" * 32])),
        (2, st.sampled_from([prefix + "0123456789abcdef0", prefix + "1234abcd",
                             prefix + "f" * 32])),
        (1, st.text(max_size=12).map(lambda t: prefix + t)), (1, st.text(max_size=20)))


def values(known: dict[str, list[str]]) -> dict[str, st.SearchStrategy[str]]:
    """Each parameter (as sent) and what it may be: good values, near misses and junk."""
    number = weighted((10, st.just("1")), (3, st.integers(1, 3).map(str)),
                      (2, st.integers(-2, 25).map(str)),
                      (1, st.integers(-2**40, 2**40).map(str)),
                      (1, st.sampled_from(["", "x", "1.5", "1e3"])))
    boolean = st.sampled_from(["true", "false", "false", "True", "yes", ""])
    text = st.text(max_size=40)
    instance, volume, snapshot = ids("i-", known), ids("vol-", known), ids("snap-", known)
    image = ids("ami-", known)
    return {
        "ImageId": image, "ImageId.1": image, "InstanceId": instance,
        "InstanceId.1": instance, "InstanceId.2": instance, "VolumeId": volume,
        "VolumeId.1": volume, "SnapshotId": snapshot, "SnapshotId.1": snapshot,
        "ResourceId.1": st.one_of(instance, volume, snapshot), "ResourceId.2": instance,
        "MinCount": number, "MaxCount": number, "Size": number, "MaxResults": number,
        "DryRun": boolean, "Force": boolean,
        "InstanceType": weighted((4, st.just("small")),
                                 (1, st.sampled_from(["large", "t2.micro", ""])), (1, text)),
        "AvailabilityZone": weighted((4, st.just("zone-1")), (1, st.just("zone-9")),
                                     (1, text)),
        "Placement.AvailabilityZone": weighted((4, st.just("zone-1")),
                                               (1, st.just("zone-9")), (1, text)),
        "Device": weighted((4, st.sampled_from(["/dev/sdf", "/dev/xvdb"])), (1, text)),
        "KeyName": weighted((4, st.sampled_from(["k1", "k2"])), (1, text)),
        "KeyName.1": weighted((4, st.sampled_from(["k1", "k2"])), (1, text)),
        "KeyType": st.sampled_from(["rsa", "ed25519", "dsa"]), "KeyFormat": st.just("ppk"),
        "ClientToken": text, "NextToken": text, "Description": text,
        "SubnetId": st.sampled_from(["subnet-0123456789abcdef0", "subnet-" + "0" * 32,
                                     "subnet-x"]),
        "SubnetId.1": st.sampled_from(["subnet-0123456789abcdef0", "subnet-x"]),
        "VpcId": st.sampled_from([*known.get("vpc-", []), "vpc-0123456789abcdef0", "vpc-x"]),
        "VpcId.1": st.sampled_from([*known.get("vpc-", []), "vpc-x"]),
        "CidrBlock": st.sampled_from(["10.1.0.0/16", "10.1.3.0/24", "10.0.0.0/8", "nope"])
        | text,
        "PublicKeyMaterial": st.sampled_from([
            "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU9neXg0RlpZRng2TVNu"
            "dithazFKemVsV0tEZEJuQ2RWUkVYbldzLzZlNnQ=", "aGVsbG8=", ""]) | text,
        "Tag.1.Key": weighted((4, st.sampled_from(["env", "Name"])),
                              (1, st.sampled_from(["aws:x", ""])), (1, text)),
        "Tag.1.Value": text,
        "Filter.1.Name": st.sampled_from(["instance-state-name", "tag:env", "tag-key",
                                          "status", "key-name", "resource-id", "bogus"]),
        "Filter.1.Value.1": st.sampled_from(["running", "test", "*", "k?"]) | text,
        "TagSpecification.1.ResourceType": weighted(
            (4, st.sampled_from(["instance", "volume", "snapshot"])), (1, st.just("vpc"))),
        "TagSpecification.1.Tag.1.Key": weighted((4, st.just("env")), (1, text)),
        "TagSpecification.1.Tag.1.Value": text,
        "Owner.1": st.sampled_from(["self", "amazon", "x"]),
        "ZoneName.1": st.sampled_from(["zone-1", "nowhere"]),
    }


PAGED = ("Filter.1.Name", "Filter.1.Value.1", "MaxResults", "NextToken")
TAGGED = ("TagSpecification.1.ResourceType", "TagSpecification.1.Tag.1.Key",
          "TagSpecification.1.Tag.1.Value")
# each action's own parameters (DryRun for every one), those it needs first: each of those is
# sent 5 times in 6, the others once in 3
NEEDED = {"RunInstances": 3, "StartInstances": 1, "StopInstances": 1, "TerminateInstances": 1,
          "CreateVolume": 2, "AttachVolume": 3, "DetachVolume": 1, "DeleteVolume": 1,
          "CreateSnapshot": 1, "CreateKeyPair": 1, "DeleteKeyPair": 1, "CreateTags": 1,
          "DeleteTags": 1, "ImportKeyPair": 2, "DeleteVpc": 1, "CreateVpc": 1,
          "CreateSubnet": 2, "DeleteSubnet": 1}
RELEVANT: dict[str, tuple[str, ...]] = {
    "RunInstances": ("ImageId", "MinCount", "MaxCount", "InstanceType", "KeyName",
                     "Placement.AvailabilityZone", "ClientToken", *TAGGED),
    "DescribeInstances": ("InstanceId.1", "InstanceId.2", *PAGED),
    "StartInstances": ("InstanceId.1", "InstanceId.2"),
    "StopInstances": ("InstanceId.1", "Force"),
    "TerminateInstances": ("InstanceId.1", "InstanceId.2"),
    "DescribeImages": ("ImageId.1", "Owner.1", "Filter.1.Name", "Filter.1.Value.1"),
    "DescribeAvailabilityZones": ("ZoneName.1",),
    "DescribeRegions": (),
    "CreateVolume": ("AvailabilityZone", "Size", "SnapshotId", "ClientToken", *TAGGED),
    "AttachVolume": ("VolumeId", "InstanceId", "Device"),
    "DetachVolume": ("VolumeId", "InstanceId"),
    "DeleteVolume": ("VolumeId",),
    "DescribeVolumes": ("VolumeId.1", *PAGED),
    "CreateSnapshot": ("VolumeId", "Description", *TAGGED),
    "DescribeSnapshots": ("SnapshotId.1", *PAGED),
    "CreateKeyPair": ("KeyName", "KeyType", "KeyFormat"),
    "DescribeKeyPairs": ("KeyName.1", "Filter.1.Name", "Filter.1.Value.1"),
    "DeleteKeyPair": ("KeyName",),
    "CreateTags": ("ResourceId.1", "Tag.1.Key", "Tag.1.Value", "ResourceId.2"),
    "DeleteTags": ("ResourceId.1", "Tag.1.Key", "Tag.1.Value"),
    "DescribeTags": PAGED,
    "ImportKeyPair": ("KeyName", "PublicKeyMaterial", *TAGGED),
    "DescribeVpcs": ("VpcId.1", *PAGED),
    "CreateVpc": ("CidrBlock", *TAGGED),
    "DeleteVpc": ("VpcId",),
    "DescribeSubnets": ("SubnetId.1", *PAGED),
    "CreateSubnet": ("VpcId", "CidrBlock", "AvailabilityZone", *TAGGED),
    "DeleteSubnet": ("SubnetId",),
}
ACTION = st.sampled_from(sorted(ACTIONS) * 8 + ["DescribeVpnGateways", "", "runinstances"])
WHO = st.sampled_from([("ak_alice", None)] * 8 + [("ak_bob", None), ("ak_alice", "wrong"),
                                                  ("ak_nobody", "x")])


def checked(stack: Stack, request: dict[str, str], who: tuple[str, str | None],
            again: bool) -> None:
    """Send the request (twice: a replay), and check its answers."""
    signed = sign(request, *who)
    before = stack.head()
    answer = stack.send(signed)
    assert answer.status < 500, (request, who, answer)
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'), answer
    if answer.status != 200:
        assert answer.code in CODES, (request, answer)
        assert stack.head() == before, ("a refused request moved the log head", request,
                                        answer)
    elif request.get("DryRun", "").lower() == "true":
        raise AssertionError(f"a dry run answered 200: {request}")
    if not again:
        return
    after = stack.head()
    replay = stack.send(signed)
    assert replay.status < 500 and stack.head() == after, ("a replay ran again", request)
    if request.get("Action") in ACTIONS and not request["Action"].startswith("Describe") \
            and answer.status == 200 and request.get("Action") != "CreateKeyPair":
        assert replay.body == answer.body, ("a replayed change got another answer", request)


def test_random_signed_requests_get_ec2_answers_and_refusals_change_nothing(
        stack: Stack) -> None:
    known = seeded(stack)
    pool = values(known)
    names = sorted(pool)

    @settings(max_examples=500, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(action=ACTION, who=WHO, data=st.data())
    def fuzz(action: str, who: tuple[str, str | None], data: Any) -> None:
        request = {"Action": action} if action else {}
        own = RELEVANT.get(action, ())
        needed = NEEDED.get(action, 0)
        wanted = [n for i, n in enumerate(own)
                  if data.draw(st.integers(0, 5), label=n) < (5 if i < needed else 2)]
        if data.draw(st.integers(0, 3), label="extra?") == 0:
            wanted += data.draw(st.lists(st.sampled_from(names), max_size=2), label="extra")
        if data.draw(st.integers(0, 5), label="dry") == 0:
            wanted.append("DryRun")
        for name in dict.fromkeys(wanted):
            request[name] = data.draw(pool[name], label=name)
        checked(stack, request, who, again=data.draw(st.integers(0, 4), label="again") == 0)

    fuzz()
