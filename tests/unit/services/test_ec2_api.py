"""The EC2 service's HTTP side driven by boto3, over the fakes of `ec2_harness`."""

import asyncio
from uuid import UUID

import pytest
from botocore.exceptions import ClientError

from services.ec2.auth import Authenticator, Caller
from tests.unit.services.ec2_harness import REGION, FakeAcl, Stack, code_of, image_id


def test_a_whole_lifecycle_through_boto3(stack: Stack) -> None:
    ec2 = stack.client()
    [zone] = ec2.describe_availability_zones()["AvailabilityZones"]
    assert zone["ZoneName"] == "zone-1" and zone["RegionName"] == REGION
    key = ec2.create_key_pair(KeyName="mine")
    assert key["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    run = ec2.run_instances(ImageId=image_id(ec2), InstanceType="small", MinCount=1,
                            MaxCount=1, KeyName="mine", ClientToken="launch-1",
                            Placement={"AvailabilityZone": "zone-1"})
    [instance] = run["Instances"]
    iid = instance["InstanceId"]
    vm_id = UUID(hex=iid.removeprefix("i-"))
    assert instance["State"] == {"Code": 0, "Name": "pending"}
    assert stack.cloud.get(vm_id).state.value == "Allocated"
    # the same ClientToken again launches nothing more
    again = ec2.run_instances(ImageId=image_id(ec2), InstanceType="small", MinCount=1,
                              MaxCount=1, KeyName="mine", ClientToken="launch-1")
    assert [i["InstanceId"] for i in again["Instances"]] == [iid]
    assert again["ReservationId"] == run["ReservationId"]
    assert len(stack.cloud.ids("vm.Allocated")) == 1

    stack.progress()
    [reservation] = ec2.describe_instances()["Reservations"]
    [described] = reservation["Instances"]
    assert described["State"]["Name"] == "running" and described["KeyName"] == "mine"
    assert stack.cloud.get(vm_id).state.value == "Running"
    [root] = described["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/vda"
    running = ec2.describe_instances(Filters=[{"Name": "instance-state-name",
                                               "Values": ["running"]}])
    assert len(running["Reservations"]) == 1
    assert ec2.describe_instances(Filters=[{"Name": "instance-state-name",
                                            "Values": ["stopped"]}])["Reservations"] == []

    stop = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert stop["PreviousState"]["Name"] == "running"
    assert stop["CurrentState"]["Name"] == "stopping"
    stack.progress()
    assert stack.cloud.get(vm_id).state.value == "Stopped"
    # (Force: other bytes. The same bytes signed in the same second would be a replay, and
    # get the first stop's answer.)
    again_stop = ec2.stop_instances(InstanceIds=[iid], Force=False)["StoppingInstances"][0]
    assert again_stop["PreviousState"]["Name"] == again_stop["CurrentState"]["Name"] == \
        "stopped"
    start = ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
    assert (start["PreviousState"]["Code"], start["CurrentState"]["Code"]) == (80, 0)
    stack.progress()
    assert stack.cloud.get(vm_id).state.value == "Running"

    volume = ec2.create_volume(Size=3, AvailabilityZone="zone-1")
    vol = volume["VolumeId"]
    assert volume["Size"] == 3 and volume["State"] == "creating"
    stack.progress()
    [ready] = ec2.describe_volumes(VolumeIds=[vol])["Volumes"]
    assert ready["State"] == "available" and ready["Attachments"] == []
    attach = ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf")
    assert attach["Device"] == "/dev/sdf" and attach["State"] in ("attaching", "attached")
    stack.progress()
    platform_volume = stack.cloud.get(UUID(hex=vol.removeprefix("vol-")))
    assert platform_volume.vm_id == vm_id
    [attached] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                                "Values": [iid]}, {"Name": "size",
                                                                   "Values": ["3"]}])["Volumes"]
    assert attached["State"] == "in-use"
    assert attached["Attachments"][0]["Device"] == "/dev/sdf"
    ec2.detach_volume(VolumeId=vol)
    stack.progress()
    assert stack.cloud.get(platform_volume.id).vm_id is None
    snap = ec2.create_snapshot(VolumeId=vol, Description="before")
    stack.progress()
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"]
    assert snapshot["State"] == "completed" and snapshot["VolumeId"] == vol

    end = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert end["PreviousState"]["Name"] == "running"
    assert end["CurrentState"]["Name"] == "shutting-down"
    stack.progress()
    assert stack.cloud.get(vm_id).state.value == "Expunged"
    [gone] = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert gone["State"] == {"Code": 48, "Name": "terminated"}


def test_errors_have_ec2s_codes(stack: Stack) -> None:
    ec2 = stack.client()
    missing = "i-" + "0" * 32
    with pytest.raises(ClientError) as e:
        ec2.describe_instances(InstanceIds=[missing])
    assert code_of(e) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.stop_instances(InstanceIds=["i-nope"])
    assert code_of(e) == "InvalidInstanceID.Malformed"
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId="ami-" + "0" * 32, MinCount=1, MaxCount=1)
    assert code_of(e) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1, InstanceType="huge")
    assert code_of(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId="vol-" + "1" * 32, InstanceId=missing, Device="/dev/sdf")
    assert code_of(e) == "InvalidVolume.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.describe_vpn_gateways()
    assert code_of(e) == "InvalidAction"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        # (KeyType: other bytes; the same ones in the same second would be a replay)
        ec2.create_key_pair(KeyName="dup") and ec2.create_key_pair(KeyName="dup", KeyType="rsa")
    assert code_of(e) == "InvalidKeyPair.Duplicate"
    assert stack.platform.sent == []  # nothing reached the platform


def test_bad_credentials_are_refused_before_anything_runs(stack: Stack) -> None:
    with pytest.raises(ClientError) as e:
        stack.client(secret="wrong").describe_instances()
    assert code_of(e) == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as e:
        stack.client(key="ak_nobody").run_instances(ImageId="ami-" + "0" * 32, MinCount=1,
                                                    MaxCount=1)
    assert code_of(e) == "AuthFailure"
    assert stack.platform.sent == []


def test_a_disabled_service_answers_unavailable(stack: Stack) -> None:
    stack.enabled[0] = False
    with pytest.raises(ClientError) as e:
        stack.client().describe_instances()
    assert code_of(e) == "Unavailable"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    stack.enabled[0] = True
    assert stack.client().describe_instances()["Reservations"] == []


def test_a_tenant_sees_and_touches_only_its_own_account(stack: Stack) -> None:
    alice, bob = stack.client(), stack.client("ak_bob")
    run = alice.run_instances(ImageId=image_id(alice), MinCount=2, MaxCount=2)
    ids = [i["InstanceId"] for i in run["Instances"]]
    assert len(ids) == 2 and [i["AmiLaunchIndex"] for i in run["Instances"]] == [0, 1]
    stack.progress()
    [reservation] = alice.describe_instances()["Reservations"]
    assert sorted(i["InstanceId"] for i in reservation["Instances"]) == sorted(ids)
    assert reservation["OwnerId"] == "alice"
    assert bob.describe_instances()["Reservations"] == []
    for call in (lambda: bob.describe_instances(InstanceIds=[ids[0]]),
                 lambda: bob.stop_instances(InstanceIds=[ids[0]]),
                 lambda: bob.terminate_instances(InstanceIds=ids)):
        with pytest.raises(ClientError) as e:
            call()
        assert code_of(e) == "InvalidInstanceID.NotFound"
    assert bob.describe_volumes()["Volumes"] == []
    assert len(alice.describe_volumes()["Volumes"]) == 2
    assert all(stack.cloud.get(UUID(hex=i[2:])).state.value == "Running" for i in ids)


def test_every_signed_request_is_checked_by_the_acl_and_a_replay_is_named() -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    acl = FakeAcl()
    auth = Authenticator(acl, region=REGION)  # type: ignore[arg-type]
    body = b"Action=DescribeRegions&Version=2016-11-15"
    request = AWSRequest(method="POST", url="http://127.0.0.1:1/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials("ak_alice", "alice-secret"), "ec2", REGION).add_auth(request)
    headers = [("Host", "127.0.0.1:1"), *request.headers.items()]

    async def twice() -> list[Caller]:
        return [await auth.caller("POST", "/", "", headers, body) for _ in range(2)]

    first, second = asyncio.run(twice())
    assert first.principal == second.principal and first.principal.actor == "alice"
    assert (first.replayed, second.replayed, acl.calls) == (False, True, 2)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    with pytest.raises(Exception) as e:
        asyncio.run(auth.caller("POST", "/", "", headers, body + b"&x=1"))
    assert getattr(e.value, "code", "") == "SignatureDoesNotMatch" and acl.calls == 3


def test_a_presigned_get_is_authenticated_and_served(stack: Stack) -> None:
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def presigned(secret: str) -> str:
        url = f"http://127.0.0.1:{stack.served.port}/?Action=DescribeRegions&Version=2016-11-15"
        request = AWSRequest(method="GET", url=url)
        SigV4QueryAuth(Credentials("ak_alice", secret), "ec2", REGION, expires=60) \
            .add_auth(request)
        return str(request.url)

    with urllib.request.urlopen(presigned("alice-secret"), timeout=10) as answer:
        assert answer.status == 200 and b"<regionName>test-1</regionName>" in answer.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(presigned("not-her-secret"), timeout=10)
    assert e.value.code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in e.value.read()
