"""What an EC2 action gets: the request, its caller, and the platform as the service sees it
(the tenant view, the EC2 store, and commands sent as the caller)."""

import fnmatch
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

from services.ec2.auth import Caller
from services.ec2.ids import from_ec2
from services.ec2.protocol import Ec2Error, Filter, Params
from services.ec2.store import Ec2Store
from services.framework.tenant_view import TenantView


class Outcome(Protocol):
    """A command's outcome (`services.framework.framework.CommandResult` has these)."""

    @property
    def result(self) -> Any: ...

    @property
    def positions(self) -> tuple[int, ...]: ...


class Refused(Exception):
    """The platform refused a command: its intake code, message and field."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field = code, message, field


class Platform(Protocol):
    """The platform as an action uses it."""

    view: TenantView
    store: Ec2Store
    region: str

    async def command(self, caller: Caller, tag: str, body: Mapping[str, Any], *,
                      idempotency_key: str) -> Outcome:
        """Send a command as the caller; Refused if the platform refuses it."""
        ...

    async def settle(self, outcome: Outcome, timeout: float = 5.0) -> None:
        """Wait (a bounded time) until the view shows what the command changed."""
        ...

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until `ready()`, asked again whenever the view
        changes; whether it became so."""
        ...

    async def authorize(self, caller: Caller, tag: str, owner: str | None) -> None:
        """Return if the caller may send the command on the owner's resources (the ACL
        decides, as the intake would); Refused (`forbidden`) if not. Nothing is sent."""
        ...


@dataclass(frozen=True)
class Request:
    """One EC2 request being served."""

    params: Params
    caller: Caller
    request_id: str
    platform: Platform

    @property
    def account(self) -> str | None:
        """The caller's account (None: a root admin, who sees every account)."""
        return self.caller.account

    @property
    def dry_run(self) -> bool:
        """Whether the request only asks if it would succeed (`DryRun=true`)."""
        return self.params.boolean("DryRun")

    async def check_dry_run(self, *commands: tuple[str, str | None]) -> None:
        """Nothing without DryRun. With it, called once the request is checked and before
        anything changes: UnauthorizedOperation if the ACL would refuse one of the commands
        (tag, owning account) it would send, else DryRunOperation, as EC2 answers."""
        if not self.dry_run:
            return
        for tag, owner in commands:
            try:
                await self.platform.authorize(self.caller, tag, owner)
            except Refused as e:
                raise refused(e) from None
        raise dry_run_operation()

    def owner(self) -> str:
        """The account new resources belong to; a root admin has none to create them in."""
        if self.caller.account is None:
            raise Ec2Error("UnauthorizedOperation", f"{self.caller.principal.actor} is a root "
                           "admin and belongs to no account: sign with a key of an account's "
                           "user to create resources")
        return self.caller.account

    def token(self) -> str:
        """The idempotency seed of this request: EC2's ClientToken, else the signed request's
        fingerprint, so a replay of the same signed bytes (to any instance of the service)
        is the same command to the platform, which runs it once."""
        client_token = self.params.get("ClientToken")
        if client_token:
            if len(client_token) > 64:
                raise Ec2Error("InvalidParameterValue", "ClientToken is at most 64 characters")
            return f"ct:{client_token}"
        if self.caller.fingerprint:
            return f"sg:{self.caller.fingerprint[:32]}"
        return f"rq:{self.request_id}"

    def key(self, action: str, *parts: object) -> str:
        """The idempotency key of one command of this request."""
        return ":".join(("ec2", action, self.token(), *(str(p) for p in parts)))

    def derived_id(self, action: str, *parts: object) -> UUID:
        """An id fixed by the request's idempotency seed (the same on a retry)."""
        return uuid5(NAMESPACE_URL, f"{self.account}/{self.key(action, *parts)}")


TAG_FILTER = "tag:"


def dry_run_operation() -> Ec2Error:
    """EC2's answer to a DryRun request that would have succeeded."""
    return Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")

Action = Callable[[Request], Awaitable[dict[str, Any]]]


def refused(e: Refused, *, invalid: str = "InvalidParameterValue",
            not_found: Ec2Error | None = None) -> Ec2Error:
    """The EC2 error for a platform refusal; `invalid` is the code of a refusal of the
    request's content or of the resource's state."""
    if e.code == "unauthenticated":
        return Ec2Error("AuthFailure", e.message)
    if e.code == "forbidden":
        return Ec2Error("UnauthorizedOperation", e.message)
    if e.code == "not_found":
        return not_found or Ec2Error("InvalidParameterValue", e.message)
    if e.code == "idempotency_key_reused":
        return Ec2Error("IdempotentParameterMismatch", "The client token was used before "
                        f"with other parameters ({e.message})")
    if e.code in ("invalid", "conflict"):
        return Ec2Error(invalid, e.message)
    return Ec2Error("InternalError", f"the platform failed: {e.message}", 500)


def matches(filters: Iterable[Filter], known: Mapping[str, Callable[[Any], Iterable[Any]]],
            item: Any) -> bool:
    """Whether the item passes every filter (values may use EC2's `*` and `?`); `tag:<key>`
    filters use the getter `tag:`, which gives the item's (key, value) pairs."""
    for f in filters:
        getter = known.get(f.name)
        if getter is not None:
            have = [str(v) for v in getter(item) if v is not None]
        elif f.name.startswith(TAG_FILTER) and len(f.name) > 4 and TAG_FILTER in known:
            key = f.name[len(TAG_FILTER):]
            have = [str(v) for k, v in known[TAG_FILTER](item) if k == key]
        else:
            raise Ec2Error("InvalidParameterValue", f"The filter '{f.name[:60]}' is invalid")
        if not any(fnmatch.fnmatchcase(h, pattern) for h in have for pattern in f.values):
            return False
    return True


def parse_ids(prefix: str, ec2_ids: list[str]) -> list[UUID]:
    """Platform ids of EC2 ids (malformed ones refused)."""
    return [from_ec2(prefix, i) for i in ec2_ids]
