"""EC2 ids (issue 16, item 13): an AWS-shaped id (`i-` and 8 or 17 hex digits, as AWS makes
them) that names nothing here is NotFound, as AWS answers; only an id that is no EC2 id at all
is Malformed."""

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from services.ec2.ids import IMAGE, INSTANCE, SNAPSHOT, VOLUME, from_ec2
from services.ec2.protocol import Ec2Error
from tests.unit.services.ec2_harness import Stack, code_of, image_id

AWS_SHAPED = ("0123456789abcdef0", "1234abcd")


@pytest.mark.parametrize("digits", AWS_SHAPED)
@pytest.mark.parametrize(("call", "code"), [
    (lambda ec2, i: ec2.describe_instances(InstanceIds=["i-" + i]),
     "InvalidInstanceID.NotFound"),
    (lambda ec2, i: ec2.stop_instances(InstanceIds=["i-" + i]), "InvalidInstanceID.NotFound"),
    (lambda ec2, i: ec2.terminate_instances(InstanceIds=["i-" + i]),
     "InvalidInstanceID.NotFound"),
    (lambda ec2, i: ec2.create_tags(Resources=["i-" + i], Tags=[{"Key": "a"}]),
     "InvalidInstanceID.NotFound"),
    (lambda ec2, i: ec2.describe_volumes(VolumeIds=["vol-" + i]), "InvalidVolume.NotFound"),
    (lambda ec2, i: ec2.delete_volume(VolumeId="vol-" + i), "InvalidVolume.NotFound"),
    (lambda ec2, i: ec2.create_snapshot(VolumeId="vol-" + i), "InvalidVolume.NotFound"),
    (lambda ec2, i: ec2.describe_snapshots(SnapshotIds=["snap-" + i]),
     "InvalidSnapshot.NotFound"),
    (lambda ec2, i: ec2.describe_images(ImageIds=["ami-" + i]), "InvalidAMIID.NotFound"),
    (lambda ec2, i: ec2.run_instances(ImageId="ami-" + i, MinCount=1, MaxCount=1),
     "InvalidAMIID.NotFound"),
])
def test_an_aws_shaped_id_that_names_nothing_is_not_found(
        stack: Stack, digits: str, call: Callable[[Any, str], Any], code: str) -> None:
    with pytest.raises(ClientError) as e:
        call(stack.client(), digits)
    assert code_of(e) == code
    assert stack.platform.sent == []


def test_an_aws_shaped_subnet_or_attachment_names_nothing(stack: Stack) -> None:
    ec2 = stack.client()
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1,
                          SubnetId="subnet-0123456789abcdef0")
    assert code_of(e) == "InvalidSubnetID.NotFound"
    assert stack.platform.sent == []


@pytest.mark.parametrize("bad", ["i-xyz", "i-0123456789abcdef", "i-123", "vol-1234abcd",
                                 "i-0123456789ABCDEF0", "i-", "nope"])
def test_only_what_is_no_instance_id_at_all_is_malformed(stack: Stack, bad: str) -> None:
    with pytest.raises(ClientError) as e:
        stack.client().describe_instances(InstanceIds=[bad])
    assert code_of(e) == "InvalidInstanceID.Malformed"


def test_an_aws_shaped_id_maps_to_no_platform_id_of_ours() -> None:
    for prefix in (INSTANCE, VOLUME, SNAPSHOT, IMAGE):
        ours = from_ec2(prefix, prefix + "0" * 32)
        foreign = {from_ec2(prefix, prefix + d) for d in AWS_SHAPED}
        assert ours not in foreign and len(foreign) == 2
    with pytest.raises(Ec2Error) as e:
        from_ec2(VOLUME, "vol-xyz")
    assert e.value.code == "InvalidVolumeID.Malformed"
