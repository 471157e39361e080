"""The EC2 Query protocol pieces: parameters, XML, errors, ids and state mapping."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from services.ec2.auth import auth_error
from services.ec2.ids import (
    IMAGE,
    INSTANCE,
    SNAPSHOT,
    VOLUME,
    device_name,
    from_ec2,
    instance_state,
    not_found,
    reservation_of,
    to_ec2,
)
from services.ec2.protocol import (
    NAMESPACE,
    Ec2Error,
    Params,
    error_response,
    response,
    timestamp,
)
from services.ec2.store import Ec2Store, generate

NS = {"ec2": NAMESPACE}


def test_lists_structures_and_filters_are_read_as_ec2_numbers_them() -> None:
    p = Params([("Action", "DescribeInstances"), ("InstanceId.2", "i-b"), ("InstanceId.1", "i-a"),
                ("InstanceId.10", "i-j"), ("Filter.1.Name", "instance-state-name"),
                ("Filter.1.Value.2", "stopped"), ("Filter.1.Value.1", "running"),
                ("Filter.2.Name", "key-name"), ("Filter.2.Value.1", "k*"),
                ("Placement.AvailabilityZone", "z1")])
    assert p.action == "DescribeInstances"
    assert p.members("InstanceId") == ["i-a", "i-b", "i-j"]
    assert [(f.name, f.values) for f in p.filters()] == [
        ("instance-state-name", ("running", "stopped")), ("key-name", ("k*",))]
    assert p.get("Placement.AvailabilityZone") == "z1"


@pytest.mark.parametrize(("items", "call", "code"), [
    ([], lambda p: p.action, "MissingAction"),
    ([("Action", "X")], lambda p: p.required("ImageId"), "MissingParameter"),
    ([("MinCount", "two")], lambda p: p.integer("MinCount"), "InvalidParameterValue"),
    ([("MinCount", "0")], lambda p: p.integer("MinCount", low=1), "InvalidParameterValue"),
    ([("Force", "yes")], lambda p: p.boolean("Force"), "InvalidParameterValue"),
    ([("Filter.1.Name", "x")], lambda p: p.filters(), "InvalidParameterValue"),
])
def test_bad_parameters_get_ec2_client_errors(items: list[tuple[str, str]], call: object,
                                              code: str) -> None:
    with pytest.raises(Ec2Error) as e:
        call(Params(items))  # type: ignore[operator]
    assert e.value.code == code and e.value.status == 400


def test_a_response_is_namespaced_xml_with_sets_of_items() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    doc = response("DescribeThings", "req-1", {"thingSet": [{"id": "a&b", "on": True,
                                                             "at": when}], "none": None})
    root = ET.fromstring(doc)
    assert root.tag == f"{{{NAMESPACE}}}DescribeThingsResponse"
    assert root.findtext("ec2:requestId", namespaces=NS) == "req-1"
    item = root.find("ec2:thingSet/ec2:item", NS)
    assert item is not None and item.findtext("ec2:id", namespaces=NS) == "a&b"
    assert item.findtext("ec2:on", namespaces=NS) == "true"
    assert item.findtext("ec2:at", namespaces=NS) == "2026-01-02T03:04:05.678Z"
    assert root.find("ec2:none", NS) is None


def test_an_error_is_ec2s_error_document_with_its_status() -> None:
    error = Ec2Error("InvalidInstanceID.NotFound", "no <such> instance")
    root = ET.fromstring(error_response(error, "req-2"))
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "InvalidInstanceID.NotFound"
    assert root.findtext("Errors/Error/Message") == "no <such> instance"
    assert root.findtext("RequestID") == "req-2"
    assert error.status == 400
    assert Ec2Error("AuthFailure", "x").status == 401
    assert Ec2Error("Unavailable", "x").status == 503


def test_ids_map_back_to_platform_ids_and_malformed_ones_are_refused() -> None:
    uid = uuid4()
    for prefix in (INSTANCE, VOLUME, SNAPSHOT, IMAGE):
        ec2_id = to_ec2(prefix, uid)
        assert ec2_id == prefix + uid.hex and from_ec2(prefix, ec2_id) == uid
    for bad, code in (("vol-" + uid.hex, "InvalidInstanceID.Malformed"),
                      ("i-xyz", "InvalidInstanceID.Malformed"),
                      ("i-" + uid.hex[:-1], "InvalidInstanceID.Malformed")):
        with pytest.raises(Ec2Error) as e:
            from_ec2(INSTANCE, bad)
        assert e.value.code == code
    with pytest.raises(Ec2Error) as e:
        from_ec2(IMAGE, "ami-1")
    assert e.value.code == "InvalidAMIID.Malformed"
    assert not_found(VOLUME, "vol-x").code == "InvalidVolume.NotFound"
    assert not_found(INSTANCE, "i-x").code == "InvalidInstanceID.NotFound"
    assert reservation_of("a") == reservation_of("a") != reservation_of("b")
    assert device_name(0) == "/dev/vda" and device_name(1) == "/dev/vdb"


@pytest.mark.parametrize(("state", "terminating", "expected"), [
    ("Allocated", False, (0, "pending")), ("Starting", False, (0, "pending")),
    ("Running", False, (16, "running")), ("Migrating", False, (16, "running")),
    ("Stopping", False, (64, "stopping")), ("Stopped", False, (80, "stopped")),
    ("Stopping", True, (32, "shutting-down")), ("Stopped", True, (32, "shutting-down")),
    ("Destroyed", True, (48, "terminated")), ("Expunged", False, (48, "terminated")),
])
def test_vm_states_are_ec2_instance_states(state: str, terminating: bool,
                                           expected: tuple[int, str]) -> None:
    assert instance_state(state, terminating) == expected


def test_acl_refusals_become_ec2_auth_codes() -> None:
    assert auth_error("the SigV4 signature does not match the request").code == \
        "SignatureDoesNotMatch"
    assert auth_error("unknown access key id 'x'").code == "AuthFailure"
    assert auth_error("X-Amz-Date ... behind the server clock").code == "RequestExpired"


def test_key_pairs_are_per_account_and_keep_no_private_key(tmp_path: object) -> None:
    from pathlib import Path
    store = Ec2Store(Path(str(tmp_path)) / "ec2.db")
    pair, private = store.create_key_pair("alice", "k1")
    assert private.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert len(pair.fingerprint.split(":")) == 20 and pair.public_key.startswith("ssh-rsa ")
    with pytest.raises(Ec2Error) as e:
        store.create_key_pair("alice", "k1")
    assert e.value.code == "InvalidKeyPair.Duplicate"
    store.create_key_pair("bob", "k1", "ed25519")
    assert [p.name for p in store.key_pairs("alice")] == ["k1"]
    assert [p.key_type for p in store.key_pairs("bob")] == ["ed25519"]
    assert private not in (tmp_path / "ec2.db").read_text(errors="ignore")  # type: ignore
    assert store.delete_key_pair("alice", name="k1") and not store.key_pairs("alice")
    store.close()


def test_generated_keys_load_with_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    private, public, _ = generate("rsa")
    key = serialization.load_pem_private_key(private.encode(), None)
    assert key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() == public


def test_timestamps_are_written_in_ec2s_form() -> None:
    assert timestamp("2026-11-24T09:34:16.713292Z") == "2026-11-24T09:34:16.713Z"
    assert timestamp(None) is None


def test_an_expired_presigned_request_is_refused() -> None:
    import time
    from urllib.parse import urlsplit

    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from services.ec2.auth import presigned_request

    request = AWSRequest(method="GET", url="http://h:1/?Action=DescribeRegions")
    SigV4QueryAuth(Credentials("ak_a", "s"), "ec2", "r-1", expires=60).add_auth(request)
    query = urlsplit(str(request.url)).query
    fresh = presigned_request("GET", "/", query, [("Host", "h:1")], b"")
    assert fresh.authorization.access_key_id == "ak_a" and fresh.amz_date in query
    with pytest.raises(Ec2Error) as e:
        presigned_request("GET", "/", query, [("Host", "h:1")], b"", now=time.time() + 120)
    assert e.value.code == "RequestExpired"


def test_numbered_structures_are_read_as_one_params_each() -> None:
    p = Params([("TagSpecification.2.ResourceType", "volume"),
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.2.Key", "b"), ("TagSpecification.1.Tag.1.Key", "a"),
                ("TagSpecification.1.Tag.1.Value", ""), ("TagSpecificationX.1.Tag", "no")])
    first, second = p.structures("TagSpecification")
    assert first.get("ResourceType") == "instance" and second.get("ResourceType") == "volume"
    assert [(t.get("Key"), t.get("Value")) for t in first.structures("Tag")] == [
        ("a", ""), ("b", None)]
    assert second.structures("Tag") == []


def test_page_tokens_hold_the_last_key_and_refuse_another_query() -> None:
    from services.ec2.pages import page_of, paginate

    asked = Params([("Action", "DescribeVolumes"), ("MaxResults", "5"),
                    ("Filter.1.Name", "size"), ("Filter.1.Value.1", "1")])
    items = [f"{n:02d}" for n in range(12)]
    walked, page = [], page_of("DescribeVolumes", asked)
    while True:
        shown, token = paginate(items, lambda i: (i,), page)
        walked.append(shown)
        if token is None:
            break
        page = page_of("DescribeVolumes", Params([*asked.values.items(), ("NextToken", token)]))
    assert walked == [items[:5], items[5:10], items[10:]]
    _, token = paginate(items, lambda i: (i,), page_of("DescribeVolumes", asked))
    assert token is not None and "05" not in token  # opaque
    for other in (Params([("Action", "DescribeVolumes"), ("NextToken", token)]),
                  Params([("Action", "DescribeSnapshots"), ("NextToken", token),
                          ("Filter.1.Name", "size"), ("Filter.1.Value.1", "1")]),
                  Params([("NextToken", "%%%")]), Params([("NextToken", "W10")])):
        with pytest.raises(Ec2Error) as e:
            page_of(str(other.get("Action", "DescribeVolumes")), other)
        assert e.value.code == "InvalidParameterValue"


def test_tags_are_kept_in_the_store_across_a_reopen(tmp_path: object) -> None:
    from pathlib import Path
    path = Path(str(tmp_path)) / "ec2.db"
    store = Ec2Store(path)
    store.set_tags({"i-1": ("alice", {"Name": "web"}), "vol-1": ("alice", {})}, {"env": "a"})
    store.delete_tags({"i-1": ("alice", {"Name": "web"})}, {"Name": None})
    store.close()
    store = Ec2Store(path)
    assert store.tags(["i-1", "vol-1", "snap-1"]) == {
        "i-1": {"Name": None, "env": "a"}, "vol-1": {"env": "a"}, "snap-1": {}}
    store.close()
