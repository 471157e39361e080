"""The EC2 service's HTTP app over fakes of what it reaches through NATS, shared by the EC2
unit tests: signatures are checked by a fake ACL (with the real SigV4 helpers), and commands
run on the in-memory engine of the operation tests (its subsystems answered by their harness),
whose public events feed the tenant view as the relay and the durable consumer would."""

import asyncio
import http.client
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import boto3
import msgspec
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from aggregates.errors import (
    DomainRuleError,
    IdempotencyKeyReusedError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from gateways.ownership import names_target, owner_of, store_lookup
from kernel.cloud.networks import (
    CreateNetworkCommand,
    ImplementNetworkCommand,
    ShutdownNetworkCommand,
)
from kernel.cloud.vms import DeployVm, DestroyVm, StartVm, StopVm
from kernel.cloud.volume_copies import SnapshotVolumeCommand
from kernel.cloud.volume_moves import DeleteVolumeCommand
from kernel.cloud.volumes import AttachVolumeCommand, CreateVolumeCommand, DetachVolumeCommand
from kernel.event_feed import EventFeed
from services.acl.client import AclPrincipal, SigV4Check
from services.acl.sigv4 import signature as sigv4_signature
from services.ec2.auth import Authenticator, Caller
from services.ec2.context import Refused
from services.ec2.service import Ec2Http
from services.ec2.store import Ec2Store
from services.framework.tenant_view import TenantView
from tests.unit.operations._volume_cloud import VolumeCloud, make_cloud
from tests.unit.services.test_tenant_view import Event, wanted

REGION = "test-1"
COMMANDS: dict[str, type[Any]] = {
    "vm.deploy": DeployVm, "vm.start": StartVm, "vm.stop": StopVm, "vm.destroy": DestroyVm,
    "volume.create": CreateVolumeCommand, "volume.attach": AttachVolumeCommand,
    "volume.detach": DetachVolumeCommand, "volume.snapshot": SnapshotVolumeCommand,
    "volume.delete": DeleteVolumeCommand, "network.create": CreateNetworkCommand,
    "network.implement": ImplementNetworkCommand, "network.shutdown": ShutdownNetworkCommand}
KEYS = {"ak_alice": ("alice-secret", "alice"), "ak_bob": ("bob-secret", "bob"),
        "ak_root": ("root-secret", "root")}
ROOT_ADMINS = {"root"}  # a root admin belongs to no account


class FakeAcl:
    """Checks signatures as the ACL responder does, with known secrets: an unknown or revoked
    key is refused, and a signature seen before is refused (`verify_sigv4`) or reported
    (`check_sigv4`)."""

    def __init__(self) -> None:
        self.calls = 0
        self.revoked: set[str] = set()
        self.seen: set[str] = set()

    def _check(self, access_key_id: str, date: str, region: str, service: str,
               string_to_sign: str, signature: str) -> SigV4Check:
        self.calls += 1
        if access_key_id not in KEYS:
            raise UnauthenticatedError(f"unknown access key id {access_key_id!r}")
        secret, user = KEYS[access_key_id]
        if sigv4_signature(secret, date, region, service, string_to_sign) != signature:
            raise UnauthenticatedError("the SigV4 signature does not match the request")
        if access_key_id in self.revoked:
            raise UnauthenticatedError(f"key {access_key_id} was revoked")
        replayed = signature in self.seen
        self.seen.add(signature)
        root = user in ROOT_ADMINS
        return SigV4Check(token=f"token-{user}", replayed=replayed, principal=AclPrincipal(
            actor=user, account=None if root else user, role="root_admin" if root else "user",
            domain="ROOT", key_id=access_key_id))

    async def verify_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                           string_to_sign: str, signature: str) -> tuple[str, AclPrincipal]:
        found = self._check(access_key_id, date, region, service, string_to_sign, signature)
        if found.replayed:
            raise UnauthenticatedError("this signature was used before: a replayed request "
                                       "is refused (sign every request anew)")
        return found.token, found.principal

    async def check_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                          string_to_sign: str, signature: str) -> SigV4Check:
        return self._check(access_key_id, date, region, service, string_to_sign, signature)


@dataclass
class Done:
    result: Any
    positions: tuple[int, ...]


class EnginePlatform:
    """The platform as the service sees it, over the in-memory engine."""

    def __init__(self, cloud: VolumeCloud, view: TenantView, store: Ec2Store) -> None:
        self.cloud, self.view, self.store, self.region = cloud, view, store, REGION
        self.sent: list[tuple[str, str]] = []
        self.denied: set[str] = set()  # command tags the ACL refuses (a deny rule)
        self.steps = False  # whether a wait lets the subsystems answer (else none does)

    def feed(self) -> None:
        found = [Event(e) for e in EventFeed(self.cloud.app).read(self.view.position, 100_000)]
        for event in wanted(self.view, found):
            self.view.apply(event)

    async def command(self, caller: Caller, tag: str, body: Mapping[str, Any], *,
                      idempotency_key: str) -> Done:
        self.sent.append((tag, idempotency_key))
        try:  # as the intake decodes a command: a body that is no command is invalid
            command = msgspec.json.decode(msgspec.json.encode(dict(body)), type=COMMANDS[tag])
        except msgspec.ValidationError as e:
            raise Refused("invalid", str(e)) from None
        try:
            owner = owner_of(command, store_lookup(self.cloud.app.repository))
            if tag in self.denied:
                raise Refused("forbidden", f"{caller.principal.actor} may not send {tag}")
            root = caller.account is None
            if owner is not None and owner != caller.account and not root:
                raise Refused("forbidden", f"{caller.principal.actor} may not touch {owner}'s")
            if owner is None and not names_target(command) and not root:  # as the ACL does
                raise Refused("forbidden", f"{caller.principal.actor} may not send {tag} "
                              "without naming the owning account: only a root admin may")
            out = self.cloud.engine.execute(command, actor=caller.principal.actor,
                                            idempotency_key=f"{caller.principal.actor}/"
                                                            f"{idempotency_key}")
        except NotFoundError as e:
            raise Refused("not_found", str(e)) from None
        except IdempotencyKeyReusedError as e:
            raise Refused("idempotency_key_reused", str(e)) from None
        except (ValidationError, DomainRuleError) as e:
            raise Refused("invalid", str(e)) from None
        return Done(msgspec.json.decode(out.result), out.positions)

    async def settle(self, outcome: Any, timeout: float = 5.0) -> None:
        self.feed()

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        if self.steps:
            self.cloud.run()
        self.feed()
        return ready()

    async def authorize(self, caller: Caller, tag: str, owner: str | None) -> None:
        if tag in self.denied:
            raise Refused("forbidden", f"{caller.principal.actor} may not send {tag}: denied")
        if owner != caller.account and caller.account is not None:
            raise Refused("forbidden", f"{caller.principal.actor} may not send {tag} for {owner}")


class Served:
    """The service's HTTP app on loopback, in a thread of its own."""

    def __init__(self, http: Ec2Http) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(http.app())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Answer:
    """An HTTP answer of the service: status, body, and the error code if any."""

    status: int
    body: bytes

    @property
    def code(self) -> str | None:
        """The EC2 error code of an error answer."""
        found = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return found.group(1).decode() if found else None

    def text(self, element: str) -> list[str]:
        """Every value of an element (e.g. instanceId), in order."""
        return [m.decode() for m in re.findall(rb"<%s>([^<]*)</%s>" % (element.encode(),
                                                                        element.encode()),
                                                self.body)]


@dataclass
class Signed:
    """A request signed by botocore, to send as is (and again: a replay)."""

    headers: dict[str, str]
    body: bytes

    def under(self, key_id: str) -> "Signed":
        """The same bytes and signature, the Credential naming another access key id."""
        auth = re.sub(r"Credential=[^/]+/", f"Credential={key_id}/",
                      self.headers["Authorization"])
        return Signed({**self.headers, "Authorization": auth}, self.body)


def sign(params: Mapping[str, str], key: str = "ak_alice", secret: str | None = None) -> Signed:
    """An EC2 POST of these parameters, signed with SigV4 by botocore."""
    body = urlencode({"Version": "2016-11-15", **params}).encode()
    request = AWSRequest(method="POST", url="http://127.0.0.1/", data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(key, secret or KEYS.get(key, ("x",))[0]), "ec2", REGION) \
        .add_auth(request)
    return Signed({k: str(v) for k, v in request.headers.items()}, body)


def open_service(cloud: VolumeCloud, acl: FakeAcl, folder: Path,
                 enabled: list[bool] | None = None) -> tuple[EnginePlatform, Served]:
    """One EC2 service (its own view and store in `folder`) on the cloud, served."""
    folder.mkdir(parents=True, exist_ok=True)
    view, store = TenantView(folder / "view.db"), Ec2Store(folder / "ec2.db")
    platform = EnginePlatform(cloud, view, store)
    platform.feed()
    switch = enabled if enabled is not None else [True]
    served = Served(Ec2Http(platform, Authenticator(acl, region=REGION),  # type: ignore[arg-type]
                            enabled=lambda: switch[0]))
    return platform, served


def close_service(platform: EnginePlatform, served: Served) -> None:
    """Stop serving and close the view and store."""
    served.close()
    platform.view.close()
    platform.store.close()


@dataclass
class Stack:
    cloud: VolumeCloud
    platform: EnginePlatform
    acl: FakeAcl
    served: Served
    enabled: list[bool]

    def client(self, key: str = "ak_alice", secret: str | None = None) -> Any:
        return boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{self.served.port}",
                            region_name=REGION, aws_access_key_id=key,
                            aws_secret_access_key=secret or KEYS.get(key, ("x",))[0],
                            config=Config(retries={"max_attempts": 1}))

    def send(self, signed: Signed, served: Served | None = None) -> Answer:
        """Send a signed request as it is (the Host header is the one botocore signed)."""
        port = (served or self.served).port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
            for name, value in [("Host", "127.0.0.1"), *signed.headers.items(),
                                ("Content-Length", str(len(signed.body)))]:
                connection.putheader(name, value)
            connection.endheaders(signed.body)
            answer = connection.getresponse()
            return Answer(answer.status, answer.read())
        finally:
            connection.close()

    def head(self) -> int:
        """The platform log's head (its last notification id)."""
        return int(self.cloud.app.recorder.max_notification_id() or 0)

    def vms(self) -> list[UUID]:
        """Every VM the platform allocated."""
        return self.cloud.ids("vm.Allocated")

    def progress(self) -> None:
        """The subsystems answer every step; the view follows."""
        self.cloud.run()
        self.platform.feed()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    cloud = make_cloud()
    acl, enabled = FakeAcl(), [True]
    platform, served = open_service(cloud, acl, tmp_path / "ec2", enabled)
    yield Stack(cloud, platform, acl, served, enabled)
    close_service(platform, served)
    cloud.app.close()


def code_of(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def image_id(ec2: Any) -> str:
    images = ec2.describe_images(Filters=[{"Name": "state", "Values": ["available"]}])
    [image] = images["Images"]
    assert image["Name"] == "empty-qcow2"
    return str(image["ImageId"])
