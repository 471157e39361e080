"""The EC2 service's HTTP side and its platform adapter.

`Ec2Http.handle` serves one EC2 Query request: it answers 503 `Unavailable` while the admin
has the service disabled, authenticates the SigV4 signature through the ACL service, reads
the `Action`, runs it and renders the XML (or EC2's error document). `RuntimePlatform` is the
platform as actions see it, over a `ServiceRuntime`: commands go to the intake with the
caller's bearer token, and `settle` waits until the tenant view caught up with a command.
"""

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

from aiohttp import web

from gateways.services.ec2 import catalog, instances, keypairs, tagging, volumes
from gateways.services.ec2.auth import Authenticator, Caller
from gateways.services.ec2.context import Action, Outcome, Refused, Request
from gateways.services.ec2.protocol import (
    Ec2Error,
    Params,
    error_response,
    response,
)
from gateways.services.ec2.store import Ec2Store
from gateways.services.framework import CommandRefusedError, ServiceRuntime
from gateways.services.tenant_view import TenantView, ViewEvent
from gateways.services.wire import UNAVAILABLE

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
XML = "text/xml"

ACTIONS: dict[str, Action] = {
    "RunInstances": instances.run_instances,
    "DescribeInstances": instances.describe_instances,
    "StartInstances": instances.start_instances,
    "StopInstances": instances.stop_instances,
    "TerminateInstances": instances.terminate_instances,
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
    "CreateTags": tagging.create_tags,
    "DeleteTags": tagging.delete_tags,
    "DescribeTags": tagging.describe_tags,
}


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

    def _caught_up(self, outcome: Outcome) -> bool:
        result = outcome.result if isinstance(outcome.result, Mapping) else {}
        operation_id = result.get("operation_id")
        if operation_id and self.view.operation(UUID(str(operation_id))) is not None:
            return True  # the operation's Accepted follows its command's entity events
        return self.view.position >= max(outcome.positions, default=0)

    async def settle(self, outcome: Outcome, timeout: float = 5.0) -> None:
        """Wait until the view shows the command's events (at most `timeout` seconds)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self._caught_up(outcome))
        except TimeoutError:
            log.info("ec2: the view is behind command %s after %.0f s", outcome, timeout)


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
        """One request: auth, action, XML."""
        request_id = str(uuid4())
        try:
            action, body = await self._serve(request, request_id)
            return web.Response(body=response(action, request_id, body), content_type=XML,
                                headers={"x-amzn-RequestId": request_id})
        except Ec2Error as e:
            return _error(e, request_id)
        except web.HTTPRequestEntityTooLarge:
            return _error(Ec2Error("InvalidParameterValue", "the request body is too large"),
                          request_id)
        except Exception:
            log.exception("ec2: request %s failed", request_id)
            return _error(Ec2Error("InternalError", "An internal error has occurred", 500),
                          request_id)

    async def _serve(self, request: web.Request, request_id: str) -> tuple[str, dict[str, Any]]:
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
        return action, await handler(Request(params, caller, request_id, self.platform))


def _error(error: Ec2Error, request_id: str) -> web.Response:
    return web.Response(status=error.status, body=error_response(error, request_id),
                        content_type=XML, headers={"x-amzn-RequestId": request_id})
