"""The EC2 service's HTTP side and its platform adapter.

`Ec2Http.handle` serves one EC2 Query request: it answers 503 `Unavailable` while the admin
has the service disabled, authenticates the SigV4 signature through the ACL service, reads
the `Action`, runs it and renders the XML (or EC2's error document). A change (any action but
a Describe, unless DryRun) is served once per signed request: its answer is kept in the store
by the request's fingerprint, and a replay of the same signed bytes gets that answer again and
runs nothing; a replay this service never answered is refused. `RuntimePlatform` is the
platform as actions see it, over a `ServiceRuntime`: commands go to the intake with the
caller's bearer token, and `settle` waits until the tenant view caught up with a command.
"""

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

from aiohttp import web

from aggregates.errors import ForbiddenError, KernelError, UnauthenticatedError
from services.acl.client import AclClient, AclUnavailableError
from services.ec2 import (
    catalog,
    consoles,
    instance_status,
    instance_types,
    instances,
    keypairs,
    subnets,
    tagging,
    volumes,
    vpcs,
)
from services.ec2.auth import Authenticator, Caller
from services.ec2.context import Action, Outcome, Refused, Request, dry_run_operation
from services.ec2.protocol import (
    Ec2Error,
    Params,
    error_response,
    response,
)
from services.ec2.store import Ec2Store
from services.framework.framework import CommandRefusedError, ServiceRuntime
from services.framework.tenant_view import TenantView, ViewEvent
from services.framework.wire import UNAVAILABLE

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
XML = "text/xml"

ACTIONS: dict[str, Action] = {
    "RunInstances": instances.run_instances,
    "DescribeInstances": instances.describe_instances,
    "StartInstances": instances.start_instances,
    "StopInstances": instances.stop_instances,
    "TerminateInstances": instances.terminate_instances,
    "DescribeInstanceStatus": instance_status.describe_instance_status,
    "DescribeInstanceAttribute": instance_status.describe_instance_attribute,
    "DescribeInstanceTypes": instance_types.describe_instance_types,
    "DescribeAccountAttributes": instance_types.describe_account_attributes,
    "DescribeImages": catalog.describe_images,
    "DescribeAvailabilityZones": catalog.describe_availability_zones,
    "DescribeRegions": catalog.describe_regions,
    "CreateVolume": volumes.create_volume,
    "AttachVolume": volumes.attach_volume,
    "DetachVolume": volumes.detach_volume,
    "DeleteVolume": volumes.delete_volume,
    "DescribeVolumes": volumes.describe_volumes,
    "CreateSnapshot": volumes.create_snapshot,
    "DescribeSnapshots": volumes.describe_snapshots,
    "CreateKeyPair": keypairs.create_key_pair,
    "DescribeKeyPairs": keypairs.describe_key_pairs,
    "DeleteKeyPair": keypairs.delete_key_pair,
    "ImportKeyPair": keypairs.import_key_pair,
    "DescribeVpcs": vpcs.describe_vpcs,
    "CreateVpc": vpcs.create_vpc,
    "DeleteVpc": vpcs.delete_vpc,
    "DescribeSubnets": subnets.describe_subnets,
    "CreateSubnet": subnets.create_subnet,
    "DeleteSubnet": subnets.delete_subnet,
    "CreateTags": tagging.create_tags,
    "DeleteTags": tagging.delete_tags,
    "DescribeTags": tagging.describe_tags,
    "GetConsoleOutput": consoles.get_console_output,
    "GetConsoleScreenshot": consoles.get_console_screenshot,
}
# What only reads: a replay of one is served again. Every other action changes something, and
# is served once per signed request (a replay gets its first answer).
READS = frozenset(a for a in ACTIONS if a.startswith(("Describe", "GetConsole")))
# A change whose answer holds a secret (the private key): a replay is refused, not answered.
SECRET_ANSWERS = frozenset({"CreateKeyPair"})


class RuntimePlatform:
    """The platform through a ServiceRuntime, with the service's view and store."""

    def __init__(self, runtime: ServiceRuntime, view: TenantView, store: Ec2Store,
                 region: str) -> None:
        self.runtime, self.view, self.store, self.region = runtime, view, store, region
        self._changed = asyncio.Condition()

    async def apply(self, event: ViewEvent) -> None:
        """The consumer's handler: apply the event to the view and wake waiters."""
        await asyncio.to_thread(self.view.apply, event)
        async with self._changed:
            self._changed.notify_all()

    async def command(self, caller: Caller, tag: str, body: Mapping[str, Any], *,
                      idempotency_key: str) -> Outcome:
        """Send a command as the caller (its bearer token); Refused on a refusal."""
        try:
            outcome: Outcome = await self.runtime.command(
                tag, body, idempotency_key=idempotency_key, bearer_token=caller.token)
        except CommandRefusedError as e:
            if e.code == UNAVAILABLE:
                raise Ec2Error("Unavailable", f"the platform did not take {tag}: {e.message} "
                               "(retry with the same ClientToken)", 503) from None
            raise Refused(e.code, e.message, e.field) from None
        return outcome

    async def authorize(self, caller: Caller, tag: str, owner: str | None) -> None:
        """Ask the ACL whether the caller may send the command (EC2's DryRun); Refused if
        not, Ec2Error Unavailable if the ACL does not answer."""
        try:
            await AclClient(self.runtime.nc).authorize(caller.token, tag, owner)
        except ForbiddenError as e:
            raise Refused("forbidden", str(e)) from None
        except UnauthenticatedError as e:
            raise Refused("unauthenticated", str(e)) from None
        except (AclUnavailableError, KernelError) as e:
            raise Ec2Error("Unavailable", f"authorization is unavailable: {e}", 503) from None

    def _caught_up(self, outcome: Outcome) -> bool:
        result = outcome.result if isinstance(outcome.result, Mapping) else {}
        operation_id = result.get("operation_id")
        if operation_id and self.view.operation(UUID(str(operation_id))) is not None:
            return True  # the operation's Accepted follows its command's entity events
        return self.view.position >= max(outcome.positions, default=0)

    async def settle(self, outcome: Outcome, timeout: float = 5.0) -> None:
        """Wait until the view shows the command's events (at most `timeout` seconds)."""
        if not await self.wait_for(lambda: self._caught_up(outcome), timeout):
            log.info("ec2: the view is behind command %s after %.0f s", outcome, timeout)

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until `ready()`, asked again whenever the view
        changed; whether it became so."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(ready)
        except TimeoutError:
            return False
        return True


class Ec2Http:
    """Serves the EC2 Query API over a platform."""

    def __init__(self, platform: RuntimePlatform, auth: Authenticator,
                 enabled: Any = lambda: True) -> None:
        self.platform, self.auth, self.enabled = platform, auth, enabled

    def app(self) -> web.Application:
        """The aiohttp application: every path, GET and POST."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """One request: auth, action, XML; a change is served once per signed request."""
        request_id = str(uuid4())
        try:
            call = await self._read(request, request_id)
        except Exception as e:
            return _failure(e, request_id)
        if not call.changes:
            return await self._run(call)
        store, fingerprint = self.platform.store, call.req.caller.fingerprint
        kept = store.claim_answer(fingerprint, request_id)
        if kept is not None and kept.status is not None:
            log.info("ec2: %s %s is a replay: its first answer again (%s)", call.action,
                     request_id, kept.request_id)
            return web.Response(status=kept.status, body=kept.body, content_type=XML,
                                headers={"x-amzn-RequestId": kept.request_id})
        if kept is not None:
            return _error(_replay("while the first is still being served"), request_id)
        if call.req.caller.replayed:
            # The ACL saw this signature, this service never answered it (another instance
            # of the service did, or this one lost its store): it runs nowhere again.
            answer = _error(_replay("served elsewhere"), request_id)
        else:
            answer = await self._run(call)
        keep = _error(_replay("its answer is shown once"), request_id) \
            if call.action in SECRET_ANSWERS and answer.status == 200 else answer
        kept_body = keep.body
        assert isinstance(kept_body, bytes)  # every answer here is made of bytes
        store.keep_answer(fingerprint, keep.status, kept_body)
        return answer

    async def _read(self, request: web.Request, request_id: str) -> "Call":
        if not self.enabled():
            raise Ec2Error("Unavailable", "The EC2 service is disabled by the administrator",
                           503)
        body = await request.read()
        query = request.rel_url.raw_query_string
        items = parse_qsl(query, keep_blank_values=True)
        if request.method == "POST" and body:
            if not request.content_type.startswith("application/x-www-form-urlencoded"):
                raise Ec2Error("InvalidParameterValue", "the body must be "
                               "application/x-www-form-urlencoded")
            try:
                items += parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise Ec2Error("InvalidParameterValue", "the body is not UTF-8") from None
        params = Params(items)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        caller = await self.auth.caller(request.method, request.rel_url.raw_path, query,
                                        headers, body)
        action = params.action
        handler = ACTIONS.get(action)
        if handler is None:
            raise Ec2Error("InvalidAction", f"The action {action[:60]} is not valid for this "
                           "web service.")
        log.debug("ec2: %s by %s (%s)", action, caller.principal.actor, request_id)
        changes = action not in READS and not params.boolean("DryRun")
        return Call(action, handler, Request(params, caller, request_id, self.platform),
                    changes)

    async def _run(self, call: "Call") -> web.Response:
        request_id = call.req.request_id
        try:
            body = await call.handler(call.req)
            if call.req.dry_run:
                if call.action not in READS:  # it should have stopped before a change
                    raise RuntimeError(f"{call.action} did not check DryRun")
                raise dry_run_operation()  # a read: checked, and it would be answered
            return web.Response(body=response(call.action, request_id, body),
                                content_type=XML, headers={"x-amzn-RequestId": request_id})
        except Exception as e:
            return _failure(e, request_id)


@dataclass(frozen=True)
class Call:
    """A request read and authenticated: its action, and whether it changes anything."""

    action: str
    handler: Action
    req: Request
    changes: bool


def _replay(why: str) -> Ec2Error:
    return Ec2Error("AuthFailure", f"This signed request was used before ({why}): a replayed "
                    "change is not run again; sign every request anew")


def _failure(e: Exception, request_id: str) -> web.Response:
    if isinstance(e, Ec2Error):
        return _error(e, request_id)
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return _error(Ec2Error("InvalidParameterValue", "the request body is too large"),
                      request_id)
    log.error("ec2: request %s failed", request_id, exc_info=e)
    return _error(Ec2Error("InternalError", "An internal error has occurred", 500), request_id)


def _error(error: Ec2Error, request_id: str) -> web.Response:
    return web.Response(status=error.status, body=error_response(error, request_id),
                        content_type=XML, headers={"x-amzn-RequestId": request_id})
