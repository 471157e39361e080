"""EC2 tags (CreateTags, DeleteTags, DescribeTags, TagSpecification, tagSet, tag filters) and
pagination (MaxResults/NextToken, boto3's paginators), driven by boto3 against the HTTP app
over the fakes of `ec2_harness`."""

from typing import Any
from uuid import UUID

import pytest
from botocore.exceptions import ClientError

from kernel.cloud.vms import DeployVm
from tests.unit.services.ec2_harness import Stack, code_of, image_id


def tagged(tags: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


def instance_ids(answer: dict[str, Any]) -> list[str]:
    return [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]


def launch(ec2: Any, count: int = 1, **kw: Any) -> list[str]:
    run = ec2.run_instances(ImageId=image_id(ec2), MinCount=count, MaxCount=count, **kw)
    return [i["InstanceId"] for i in run["Instances"]]


def spec(kind: str, **tags: str) -> dict[str, Any]:
    return {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def test_tags_given_at_creation_show_in_every_describe_and_filters_select(stack: Stack) -> None:
    ec2 = stack.client()
    run = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1, TagSpecifications=[
        spec("instance", Name="web", env="prod"), spec("volume", backup="daily")])
    [instance] = run["Instances"]
    iid = instance["InstanceId"]
    assert tagged(instance["Tags"]) == {"Name": "web", "env": "prod"}
    [other] = launch(ec2, TagSpecifications=[spec("instance", Name="db")])
    stack.progress()
    [described] = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert tagged(described["Tags"]) == {"Name": "web", "env": "prod"}
    by_name = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["w*"]}])
    assert instance_ids(by_name) == [iid]
    assert instance_ids(ec2.describe_instances(Filters=[{"Name": "tag:env",
                                                         "Values": ["prod"]}])) == [iid]
    assert instance_ids(ec2.describe_instances(Filters=[{"Name": "tag-key",
                                                         "Values": ["env"]}])) == [iid]
    assert sorted(instance_ids(ec2.describe_instances(Filters=[
        {"Name": "tag-key", "Values": ["Name"]}]))) == sorted([iid, other])
    assert instance_ids(ec2.describe_instances(Filters=[{"Name": "tag:Name",
                                                         "Values": ["nothing"]}])) == []

    # the root volume got the volume specification
    [root] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                            "Values": [iid]}])["Volumes"]
    assert tagged(root["Tags"]) == {"backup": "daily"}
    [selected] = ec2.describe_volumes(Filters=[{"Name": "tag:backup",
                                                "Values": ["daily"]}])["Volumes"]
    assert selected["VolumeId"] == root["VolumeId"]

    volume = ec2.create_volume(Size=1, AvailabilityZone="zone-1",
                               TagSpecifications=[spec("volume", Name="data")])
    assert tagged(volume["Tags"]) == {"Name": "data"}
    stack.progress()
    [data] = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["Name"]}])["Volumes"]
    assert data["VolumeId"] == volume["VolumeId"] and tagged(data["Tags"]) == {"Name": "data"}
    snap = ec2.create_snapshot(VolumeId=volume["VolumeId"],
                               TagSpecifications=[spec("snapshot", keep="yes")])
    assert tagged(snap["Tags"]) == {"keep": "yes"}
    stack.progress()
    [snapshot] = ec2.describe_snapshots(Filters=[{"Name": "tag:keep",
                                                  "Values": ["yes"]}])["Snapshots"]
    assert snapshot["SnapshotId"] == snap["SnapshotId"]
    assert tagged(snapshot["Tags"]) == {"keep": "yes"}

    # a specification for a type the action does not create is refused, and nothing is made
    before = len(stack.platform.sent)
    with pytest.raises(ClientError) as e:
        ec2.create_volume(Size=1, AvailabilityZone="zone-1",
                          TagSpecifications=[spec("instance", Name="x")])
    assert code_of(e) == "InvalidParameterValue"
    assert len(stack.platform.sent) == before


def test_create_delete_and_describe_tags(stack: Stack) -> None:
    ec2 = stack.client()
    a, b = launch(ec2, 2)
    stack.progress()
    vol = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                         "Values": [a]}])["Volumes"][0]["VolumeId"]
    ec2.create_tags(Resources=[a, b, vol], Tags=[{"Key": "team", "Value": "blue"},
                                                 {"Key": "empty"}])
    ec2.create_tags(Resources=[a], Tags=[{"Key": "team", "Value": "red"}])  # overwrites
    answer = ec2.describe_tags()["Tags"]
    found = {(t["ResourceId"], t["Key"]): (t["ResourceType"], t["Value"]) for t in answer}
    assert found == {(a, "team"): ("instance", "red"), (a, "empty"): ("instance", ""),
                     (b, "team"): ("instance", "blue"), (b, "empty"): ("instance", ""),
                     (vol, "team"): ("volume", "blue"), (vol, "empty"): ("volume", "")}
    only = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["volume"]}])
    assert {t["ResourceId"] for t in only["Tags"]} == {vol}
    only = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [b]},
                                      {"Name": "key", "Values": ["te*"]}])
    assert [(t["ResourceId"], t["Value"]) for t in only["Tags"]] == [(b, "blue")]
    only = ec2.describe_tags(Filters=[{"Name": "value", "Values": ["red"]}])
    assert [t["ResourceId"] for t in only["Tags"]] == [a]

    # by key and value: a tag with another value stays
    ec2.delete_tags(Resources=[a, b], Tags=[{"Key": "team", "Value": "blue"}])
    assert tagged(ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]
                  ["Tags"]) == {"team": "red", "empty": ""}
    assert tagged(ec2.describe_instances(InstanceIds=[b])["Reservations"][0]["Instances"][0]
                  ["Tags"]) == {"empty": ""}
    # an empty value deletes only a tag whose value is empty; a key alone, whatever its value
    ec2.delete_tags(Resources=[a], Tags=[{"Key": "team", "Value": ""}, {"Key": "empty",
                                                                       "Value": ""}])
    ec2.delete_tags(Resources=[vol], Tags=[{"Key": "team"}])
    assert {(t["ResourceId"], t["Key"]) for t in ec2.describe_tags()["Tags"]} == {
        (a, "team"), (b, "empty"), (vol, "empty")}
    # no Tag: every tag of the resource
    ec2.delete_tags(Resources=[a, vol])
    assert {(t["ResourceId"], t["Key"]) for t in ec2.describe_tags()["Tags"]} == {(b, "empty")}
    assert stack.platform.sent[-1][0] == "vm.deploy"  # tags never reach the platform


def test_ec2s_tag_limits_are_kept_and_a_refusal_changes_nothing(stack: Stack) -> None:
    ec2 = stack.client()
    a, b = launch(ec2, 2)
    stack.progress()
    ec2.create_tags(Resources=[a], Tags=[{"Key": f"k{n}", "Value": "v"} for n in range(49)])
    with pytest.raises(ClientError) as e:  # b has room, a has not: neither is tagged
        ec2.create_tags(Resources=[b, a], Tags=[{"Key": "x", "Value": "1"},
                                                {"Key": "y", "Value": "2"}])
    assert code_of(e) == "TagLimitExceeded"
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [b]}])["Tags"] == []
    ec2.create_tags(Resources=[a], Tags=[{"Key": "k0", "Value": "again"}, {"Key": "x",
                                                                           "Value": "1"}])
    assert len(ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [a]}])["Tags"]) \
        == 50
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[b], Tags=[{"Key": f"k{n}", "Value": "v"}
                                             for n in range(51)])
    assert code_of(e) == "TagLimitExceeded"

    ec2.create_tags(Resources=[b], Tags=[{"Key": "k" * 128, "Value": "v" * 256}])
    for tags in ([{"Key": "k" * 129, "Value": "v"}], [{"Key": "k", "Value": "v" * 257}],
                 [{"Key": "aws:cloudformation:stack", "Value": "v"}], [{"Key": "",
                                                                        "Value": "v"}]):
        with pytest.raises(ClientError) as e:
            ec2.create_tags(Resources=[b], Tags=tags)
        assert code_of(e) == "InvalidParameterValue", tags
    with pytest.raises(ClientError) as e:
        ec2.delete_tags(Resources=[b], Tags=[{"Key": "AWS:x"}])
    assert code_of(e) == "InvalidParameterValue"
    assert [t["Key"] for t in ec2.describe_tags(Filters=[
        {"Name": "resource-id", "Values": [b]}])["Tags"]] == ["k" * 128]

    sent = len(stack.platform.sent)
    for specs in ([spec("instance", **{"aws:x": "1"})],
                  [spec("instance", **{f"k{n}": "v" for n in range(51)})],
                  [spec("instance", a="1"), spec("instance", b="2")],
                  [spec("image", a="1")]):
        with pytest.raises(ClientError) as e:
            launch(ec2, TagSpecifications=specs)
        assert code_of(e) in ("InvalidParameterValue", "TagLimitExceeded")
    assert len(stack.platform.sent) == sent  # nothing was launched


def test_only_the_owners_resources_are_tagged(stack: Stack) -> None:
    alice, bob = stack.client(), stack.client("ak_bob")
    [iid] = launch(alice, TagSpecifications=[spec("instance", Name="hers")])
    stack.progress()
    vol = alice.describe_volumes()["Volumes"][0]["VolumeId"]
    snap = alice.create_snapshot(VolumeId=vol)["SnapshotId"]
    stack.progress()
    [mine] = launch(bob)
    stack.progress()
    for resource, code in ((iid, "InvalidInstanceID.NotFound"),
                           (vol, "InvalidVolume.NotFound"),
                           (snap, "InvalidSnapshot.NotFound"),
                           ("i-" + "0" * 32, "InvalidInstanceID.NotFound"),
                           ("i-zzz", "InvalidInstanceID.Malformed"),
                           ("ami-" + "0" * 32, "InvalidID"), ("sg-123", "InvalidID")):
        with pytest.raises(ClientError) as e:
            bob.create_tags(Resources=[mine, resource], Tags=[{"Key": "Name", "Value": "his"}])
        assert code_of(e) == code, resource
        with pytest.raises(ClientError) as e:
            bob.delete_tags(Resources=[resource])
        assert code_of(e) == code, resource
    assert bob.describe_tags()["Tags"] == []  # nothing half-applied to his own instance
    assert [(t["ResourceId"], t["Value"]) for t in alice.describe_tags()["Tags"]] == [
        (iid, "hers")]
    with pytest.raises(ClientError) as e:
        bob.create_tags(Resources=[mine], Tags=[])
    assert code_of(e) == "MissingParameter"


def test_a_platform_name_is_a_default_name_tag_until_changed(stack: Stack) -> None:
    ec2 = stack.client()
    view = stack.platform.view
    [zone] = view.zones()
    template = next(t for t in view.templates() if t.state == "Ready")
    offering = view.offerings("service")[0]
    stack.cloud.engine.execute(DeployVm(
        name="made-elsewhere", account="alice", zone_id=zone.id,
        service_offering_id=offering.id, template_id=template.id), actor="alice",
        idempotency_key="deploy-elsewhere")
    stack.progress()
    iid = "i-" + UUID(str(stack.platform.view.vms("alice")[0].id)).hex
    selected = ec2.describe_instances(Filters=[{"Name": "tag:Name",
                                                "Values": ["made-elsewhere"]}])
    assert instance_ids(selected) == [iid]
    [root] = ec2.describe_volumes()["Volumes"]
    assert tagged(root["Tags"]) == {"Name": "ROOT-made-elsewhere"}
    ec2.delete_tags(Resources=[iid], Tags=[{"Key": "Name"}])
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"] == []
    assert instance_ids(ec2.describe_instances(Filters=[{"Name": "tag-key",
                                                         "Values": ["Name"]}])) == []
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "Name", "Value": "renamed"}])
    [instance] = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert tagged(instance["Tags"]) == {"Name": "renamed"}


def test_boto3_paginators_walk_every_page(stack: Stack) -> None:
    ec2 = stack.client()
    ids = launch(ec2, 7, TagSpecifications=[spec("instance", fleet="a")])
    stack.progress()
    pages = list(ec2.get_paginator("describe_instances").paginate(
        PaginationConfig={"PageSize": 5}))
    walked = [instance_ids(p) for p in pages]
    assert [len(w) for w in walked] == [5, 2]
    assert sorted(i for w in walked for i in w) == sorted(ids)
    assert "NextToken" in pages[0] and "NextToken" not in pages[1]
    volumes = list(ec2.get_paginator("describe_volumes").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["Volumes"]) for p in volumes] == [5, 2]
    assert len({v["VolumeId"] for p in volumes for v in p["Volumes"]}) == 7
    tags = list(ec2.get_paginator("describe_tags").paginate(PaginationConfig={"PageSize": 5}))
    assert [len(p["Tags"]) for p in tags] == [5, 2]
    for vol in [v["VolumeId"] for p in volumes for v in p["Volumes"]][:6]:
        ec2.create_snapshot(VolumeId=vol)
    stack.progress()
    snapshots = list(ec2.get_paginator("describe_snapshots").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in snapshots] == [5, 1]
    # filters apply before paging; a page after a change still starts where it left off
    first = ec2.describe_instances(MaxResults=5, Filters=[{"Name": "tag:fleet",
                                                           "Values": ["a"]}])
    ec2.terminate_instances(InstanceIds=[instance_ids(first)[0]])
    stack.progress()
    rest = ec2.describe_instances(MaxResults=5, NextToken=first["NextToken"],
                                  Filters=[{"Name": "tag:fleet", "Values": ["a"]}])
    assert sorted(instance_ids(first) + instance_ids(rest)) == sorted(ids)


def test_bad_pagination_parameters_are_refused(stack: Stack) -> None:
    ec2 = stack.client()
    ids = launch(ec2, 6)
    stack.progress()
    first = ec2.describe_instances(MaxResults=5)
    token = first["NextToken"]
    for kw, code in (({"MaxResults": 4}, "InvalidParameterValue"),
                     ({"MaxResults": 1001}, "InvalidParameterValue"),
                     ({"MaxResults": 5, "InstanceIds": ids[:1]},
                      "InvalidParameterCombination"),
                     ({"NextToken": "not-a-token"}, "InvalidParameterValue"),
                     ({"NextToken": token[:-3] + "abc"}, "InvalidParameterValue"),
                     ({"NextToken": token, "Filters": [{"Name": "instance-type",
                                                        "Values": ["small"]}]},
                      "InvalidParameterValue")):
        with pytest.raises(ClientError) as e:
            ec2.describe_instances(**kw)
        assert code_of(e) == code, kw
    with pytest.raises(ClientError) as e:  # another action's token
        ec2.describe_volumes(NextToken=token)
    assert code_of(e) == "InvalidParameterValue"
    assert len(instance_ids(ec2.describe_instances(NextToken=token, MaxResults=1000))) == 1


def test_instance_and_volume_filters(stack: Stack) -> None:
    ec2 = stack.client()
    ami = image_id(ec2)
    [a] = launch(ec2, InstanceType="small")
    stack.progress()
    for name, value, expected in (("instance-id", a, [a]), ("instance-id", "i-0", []),
                                  ("image-id", ami, [a]), ("image-id", "ami-0", []),
                                  ("instance-type", "small", [a]),
                                  ("instance-type", "large", []),
                                  ("availability-zone", "zone-1", [a]),
                                  ("availability-zone", "zone-9", [])):
        answer = ec2.describe_instances(Filters=[{"Name": name, "Values": [value]}])
        assert instance_ids(answer) == expected, (name, value)
    volume = ec2.create_volume(Size=1, AvailabilityZone="zone-1")["VolumeId"]
    stack.progress()
    in_use = ec2.describe_volumes(Filters=[{"Name": "status", "Values": ["in-use"]}])
    available = ec2.describe_volumes(Filters=[{"Name": "status", "Values": ["available"]}])
    assert [v["VolumeId"] for v in available["Volumes"]] == [volume]
    [root] = in_use["Volumes"]
    assert root["Attachments"][0]["InstanceId"] == a
    assert ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                          "Values": ["i-" + "1" * 32]}])["Volumes"] == []
