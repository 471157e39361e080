"""Signatures in the EC2 service (issue 16, item 9): a signed request is bound to its access
key id, a revocation takes effect at once, and a replayed mutating request never runs twice
(it gets its first answer, or a refusal); a replayed read is served."""

from pathlib import Path

from tests.unit.services.ec2_harness import (
    FakeAcl,
    Stack,
    close_service,
    image_id,
    open_service,
    sign,
)

DESCRIBE = {"Action": "DescribeInstances"}


def launch(stack: Stack) -> dict[str, str]:
    """RunInstances parameters without a ClientToken (boto3 always adds one; a raw client
    need not)."""
    return {"Action": "RunInstances", "ImageId": image_id(stack.client()), "MinCount": "1",
            "MaxCount": "1"}


def test_a_signature_is_bound_to_its_access_key_id(stack: Stack) -> None:
    request = sign(DESCRIBE)
    assert stack.send(request).status == 200
    for other in ("ak_nobody", "ak_bob"):  # the same signed bytes under another key id
        answer = stack.send(request.under(other))
        assert answer.status in (401, 403), answer
        assert answer.code in ("AuthFailure", "SignatureDoesNotMatch"), answer
    run = sign(launch(stack))
    assert stack.send(run).status == 200
    assert stack.send(run.under("ak_nobody")).code == "AuthFailure"
    assert len(stack.vms()) == 1


def test_a_revoked_key_is_refused_at_once_also_for_bytes_it_signed_before(
        stack: Stack) -> None:
    read, change = sign(DESCRIBE), sign({"Action": "CreateKeyPair", "KeyName": "k"})
    assert stack.send(read).status == 200
    stack.acl.revoked.add("ak_alice")
    for request in (read, change, sign(DESCRIBE)):
        answer = stack.send(request)
        assert (answer.status, answer.code) == (401, "AuthFailure"), answer
    assert stack.platform.store.key_pairs("alice") == []


def test_a_replayed_run_instances_gets_its_first_answer_and_launches_once(
        stack: Stack) -> None:
    run = sign(launch(stack))
    first = stack.send(run)
    assert first.status == 200, first
    [instance] = first.text("instanceId")
    again = stack.send(run)
    assert again.status == 200 and again.body == first.body
    assert len(stack.vms()) == 1 and stack.vms()[0].hex == instance.removeprefix("i-")


def test_a_replayed_change_to_the_services_own_data_never_runs_twice(stack: Stack) -> None:
    """Tags and key pairs are the service's own data: a replay after a later change would undo
    that change if it ran again."""
    ec2 = stack.client()
    iid = ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"]
    stack.progress()
    first = sign({"Action": "CreateTags", "ResourceId.1": iid, "Tag.1.Key": "env",
                  "Tag.1.Value": "test"})
    assert stack.send(first).status == 200
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "env", "Value": "prod"}])
    assert stack.send(first).status == 200  # its first answer...
    tags = ec2.describe_tags()["Tags"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("env", "prod")]  # ...not run again

    delete = sign({"Action": "DeleteKeyPair", "KeyName": "mine"})
    ec2.create_key_pair(KeyName="mine")
    assert stack.send(delete).status == 200
    ec2.create_key_pair(KeyName="mine", KeyType="ed25519")  # (other bytes than the first)
    assert stack.send(delete).status == 200
    [pair] = ec2.describe_key_pairs()["KeyPairs"]
    assert (pair["KeyName"], pair["KeyType"]) == ("mine", "ed25519")


def test_a_replayed_create_key_pair_is_refused_and_never_shows_the_private_key(
        stack: Stack) -> None:
    """Its answer holds the private key: a replayer must not get it."""
    create = sign({"Action": "CreateKeyPair", "KeyName": "k"})
    first = stack.send(create)
    assert first.status == 200 and b"PRIVATE KEY" in first.body
    again = stack.send(create)
    assert (again.status, again.code) == (401, "AuthFailure") and b"PRIVATE" not in again.body
    assert len(stack.platform.store.key_pairs("alice")) == 1


def test_a_replayed_read_is_served(stack: Stack) -> None:
    request = sign(DESCRIBE)
    answers = [stack.send(request) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]


def test_a_replay_to_another_instance_of_the_service_never_launches_twice(
        stack: Stack, tmp_path: Path) -> None:
    """More EC2 services on one platform, each with its own store: a replay sent to another
    is refused while the ACL remembers the signature, and when it does not (a restarted ACL),
    the platform's idempotency answers the first launch again."""
    others = [open_service(stack.cloud, stack.acl, tmp_path / name) for name in ("b", "c")]
    try:
        run = sign(launch(stack))
        first = stack.send(run)
        [instance] = first.text("instanceId")
        refused = stack.send(run, others[0][1])
        assert (refused.status, refused.code) == (401, "AuthFailure"), refused
        assert stack.send(run, others[0][1]).body == refused.body  # and so it stays
        stack.acl.seen.clear()  # the ACL restarted: it remembers no signature
        again = stack.send(run, others[1][1])
        assert again.status == 200, again
        assert again.text("instanceId") == [instance]
        assert len(stack.vms()) == 1
    finally:
        for platform, served in others:
            close_service(platform, served)


def test_the_fake_acl_refuses_replays_as_the_acl_does() -> None:
    """(The harness:) verify_sigv4 refuses a replay; check_sigv4 reports it."""
    import asyncio

    from services.acl.sigv4 import signed_request

    acl = FakeAcl()
    request = sign(DESCRIBE)
    signed = signed_request("POST", "/", "", [("Host", "127.0.0.1"), *request.headers.items()],
                            request.body)

    async def twice() -> list[bool]:
        return [(await acl.check_sigv4(**signed.verification())).replayed for _ in range(2)]

    assert asyncio.run(twice()) == [False, True]
