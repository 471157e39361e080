"""The EC2 service on the real stack (issue 16, items 9, 10 and 13), driven by boto3 and by
requests botocore signed and sent as they are: a signature is bound to its key id, a replayed
change runs once, a revocation takes effect at once; DryRun changes nothing; a launch no host
can take is refused up front; AWS-shaped ids that name nothing are NotFound.

The stack is the one of `test_ec2_boto3`: PostgreSQL, a real nats-server, the kernel with real
workers on libvirt's test driver, the relay, the intake and the ACL responder in this process,
and the EC2 service as its own process, talking to them only over NATS.
"""

import asyncio
import http.client
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from support.cloud import Cloud, running_cloud
from support.services import platform_edges

from kernel.settings import Settings
from services.acl.service import AclService
from tests.integration.test_ec2_boto3 import (
    Ec2Process,
    Users,
    call,
    client,
    code_of,
    eventually,
    prepare,
    reach_state,
    setup,
)


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return found.group(1).decode() if found else None

    def text(self, element: str) -> list[str]:
        pattern = rb"<%s>([^<]*)</%s>" % (element.encode(), element.encode())
        return [m.decode() for m in re.findall(pattern, self.body)]


@dataclass
class Signed:
    headers: dict[str, str]
    body: bytes


def sign(settings: Settings, key: tuple[str, str], params: dict[str, str]) -> Signed:
    """An EC2 POST signed by botocore, to send as it is (and again)."""
    url = f"http://127.0.0.1:{settings.ec2_port}/"
    body = urlencode({"Version": "2016-11-15", **params}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(*key), "ec2", settings.ec2_region).add_auth(request)
    return Signed({k: str(v) for k, v in request.headers.items()}, body)


def send(settings: Settings, signed: Signed, *, authorization: str | None = None) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", settings.ec2_port, timeout=60)
    headers = dict(signed.headers)
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        connection.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
        for name, value in [("Host", f"127.0.0.1:{settings.ec2_port}"), *headers.items(),
                            ("Content-Length", str(len(signed.body)))]:
            connection.putheader(name, value)
        connection.endheaders(signed.body)
        answer = connection.getresponse()
        return Answer(answer.status, answer.read())
    finally:
        connection.close()


async def sent(settings: Settings, signed: Signed, **kw: Any) -> Answer:
    return await asyncio.to_thread(send, settings, signed, **kw)


def vms_of(cloud: Cloud) -> set[str]:
    """Every VM the platform allocated, as an EC2 id."""
    return {"i-" + v.hex for v in cloud.ids("vm.Allocated")}


def run_stack(tmp_path: Path, pg_dsn: str, nats_url: str,
              libvirt_host_factory: Callable[..., str],
              scenario: Callable[..., Any]) -> None:
    """Start the stack (the ACL service given to the edges, so a test can revoke a key) and
    the EC2 service, run `scenario(settings, cloud, ids, users, acl)`, stop them."""
    settings, config, inventory, users = setup(tmp_path, pg_dsn, nats_url, libvirt_host_factory)
    service = Ec2Process(config)

    async def main() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            acl = await cloud.call(AclService.open, settings)
            try:
                async with platform_edges(settings, cloud, acl):
                    await asyncio.to_thread(service.start)
                    try:
                        await scenario(settings, cloud, ids, users, acl)
                    finally:
                        assert await asyncio.to_thread(service.stop) == 0, \
                            "".join(service.output)
            finally:
                acl.close()

    asyncio.run(main())


def test_a_signature_is_bound_to_its_key_a_replay_runs_once_and_revocation_is_at_once(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    async def scenario(settings: Settings, cloud: Cloud, ids: Any, users: Users,
                       acl: AclService) -> None:
        ec2 = client(settings, users.alice)
        # a raw RunInstances without ClientToken, sent twice: one instance, the first answer
        run = sign(settings, users.alice, {
            "Action": "RunInstances", "ImageId": "ami-" + ids.template_id.hex,
            "MinCount": "1", "MaxCount": "1"})
        first = await sent(settings, run)
        assert first.status == 200, first
        [instance] = first.text("instanceId")
        again = await sent(settings, run)
        assert (again.status, again.body) == (200, first.body)
        assert vms_of(cloud) == {instance}
        # the same bytes under another key id are not alice's
        for key_id in (users.bob[0], "ak0000000000000000"):
            forged = run.headers["Authorization"].replace(users.alice[0], key_id)
            answer = await sent(settings, run, authorization=forged)
            assert answer.code in ("AuthFailure", "SignatureDoesNotMatch"), answer
        assert vms_of(cloud) == {instance}
        # a replayed read is served; what the ACL costs per request
        read = sign(settings, users.alice, {"Action": "DescribeInstances"})
        assert [(await sent(settings, read)).status for _ in range(2)] == [200, 200]
        started = time.perf_counter()
        for _ in range(20):
            await call(ec2.describe_regions)
        print(f"DescribeRegions, each checked by the ACL: "
              f"{(time.perf_counter() - started) / 20 * 1000:.1f} ms a request")
        # revoked: at once, for bytes signed before too, on reads and changes
        change = sign(settings, users.alice, {"Action": "CreateKeyPair", "KeyName": "late"})
        await cloud.call(acl.revoke_key, users.alice[0])
        for request in (read, change, run):
            answer = await sent(settings, request)
            assert (answer.status, answer.code) == (401, "AuthFailure"), answer
        with pytest.raises(ClientError) as e:
            await call(ec2.describe_instances)
        assert code_of(e) == "AuthFailure"
        assert vms_of(cloud) == {instance}

    run_stack(tmp_path, pg_dsn, nats_url, libvirt_host_factory, scenario)


def test_dry_run_asks_the_acl_and_changes_nothing(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    async def scenario(settings: Settings, cloud: Cloud, ids: Any, users: Users,
                       acl: AclService) -> None:
        ec2 = client(settings, users.alice)
        ami = "ami-" + ids.template_id.hex
        head = await cloud.call(cloud.app.recorder.max_notification_id)
        with pytest.raises(ClientError) as e:
            await call(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1, DryRun=True)
        assert code_of(e) == "DryRunOperation"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        assert vms_of(cloud) == set()
        assert await cloud.call(cloud.app.recorder.max_notification_id) == head
        run = await call(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1)
        iid = run["Instances"][0]["InstanceId"]
        with pytest.raises(ClientError) as e:
            await call(ec2.terminate_instances, InstanceIds=[iid], DryRun=True)
        assert code_of(e) == "DryRunOperation"
        # a deny rule for users: the ACL would refuse it, so the dry run is unauthorized
        await cloud.call(lambda: acl.add_rule(target_kind="role", target="user",
                                              effect="deny", pattern="vm.destroy"))
        with pytest.raises(ClientError) as e:
            await call(ec2.terminate_instances, InstanceIds=[iid], DryRun=True)
        assert code_of(e) == "UnauthorizedOperation"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as e:  # and so it is for real
            await call(ec2.terminate_instances, InstanceIds=[iid])
        assert code_of(e) == "UnauthorizedOperation"
        described = await call(ec2.describe_instances, InstanceIds=[iid])
        assert described["Reservations"][0]["Instances"][0]["State"]["Name"] != \
            "shutting-down"  # a refused terminate leaves it as it was
        with pytest.raises(ClientError) as e:  # bob does not see alice's instance
            await call(client(settings, users.bob).stop_instances, InstanceIds=[iid],
                       DryRun=True)
        assert code_of(e) == "InvalidInstanceID.NotFound"
        assert vms_of(cloud) == {iid}

    run_stack(tmp_path, pg_dsn, nats_url, libvirt_host_factory, scenario)


def test_a_launch_no_host_can_take_is_refused_and_an_aws_shaped_id_is_not_found(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    from kernel.cloud.hosts import CancelHostMaintenance, PrepareHostMaintenance

    async def scenario(settings: Settings, cloud: Cloud, ids: Any, users: Users,
                       acl: AclService) -> None:
        ec2 = client(settings, users.alice)
        once = Config(retries={"max_attempts": 1})  # InsufficientInstanceCapacity is a 500
        ec2_once = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{settings.ec2_port}",
                                region_name=settings.ec2_region,
                                aws_access_key_id=users.alice[0],
                                aws_secret_access_key=users.alice[1], config=once)
        ami = "ami-" + ids.template_id.hex
        hosts = cloud.ids("host.Registered")
        for host_id in hosts:
            done = await cloud.command(PrepareHostMaintenance(host_id=host_id))
            assert done["resource_state"] == "Maintenance", done
        with pytest.raises(ClientError) as e:
            await call(ec2_once.run_instances, ImageId=ami, MinCount=1, MaxCount=1)
        assert code_of(e) == "InsufficientInstanceCapacity", e.value.response["Error"]
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        [vm_id] = cloud.ids("vm.Allocated")

        async def gone() -> bool:
            vm = await cloud.get(vm_id)
            return vm.state.value in ("Destroyed", "Expunging", "Expunged")
        await eventually(gone, "the refused launch's VM destroyed")
        listed = await call(ec2.describe_instances)
        assert all(i["State"]["Name"] == "terminated" for r in listed["Reservations"]
                   for i in r["Instances"]), listed
        # hosts back: a launch runs
        for host_id in hosts:
            await cloud.command(CancelHostMaintenance(host_id=host_id))
        run = await call(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1)
        await reach_state(ec2, run["Instances"][0]["InstanceId"], "running")
        # AWS-shaped ids that name nothing: NotFound, not Malformed
        for fn, kw, code in (
                (ec2.describe_instances, {"InstanceIds": ["i-0123456789abcdef0"]},
                 "InvalidInstanceID.NotFound"),
                (ec2.describe_volumes, {"VolumeIds": ["vol-0123456789abcdef0"]},
                 "InvalidVolume.NotFound"),
                (ec2.describe_snapshots, {"SnapshotIds": ["snap-0123456789abcdef0"]},
                 "InvalidSnapshot.NotFound"),
                (ec2.describe_images, {"ImageIds": ["ami-0123456789abcdef0"]},
                 "InvalidAMIID.NotFound"),
                (ec2.describe_instances, {"InstanceIds": ["i-xyz"]},
                 "InvalidInstanceID.Malformed")):
            with pytest.raises(ClientError) as e:
                await call(fn, **kw)
            assert code_of(e) == code

    run_stack(tmp_path, pg_dsn, nats_url, libvirt_host_factory, scenario)
