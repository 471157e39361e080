"""Who calls the End User API: a bearer token checked by the ACL service, cached briefly.

Each check is a NATS request to `cloudkernel.acl.authenticate`; a page that calls a few routes
at once would ask the ACL as often, so an answer is kept `ttl` seconds (5 by default). A token
revoked by disabling its user is thus refused at most that long after.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from aggregates.errors import KernelError
from services.acl.client import AclPrincipal
from services.enduser.errors import ApiError, from_acl

CACHE_SECONDS = 5.0
MAX_CACHED = 10_000
BEARER = "bearer "


class Acl(Protocol):
    """What the service asks the ACL (`services.acl.client.AclClient` is one)."""

    async def login(self, username: str, password: str) -> tuple[str, AclPrincipal]:
        """A token and its principal for a user name and password."""
        ...

    async def authenticate(self, token: str) -> AclPrincipal:
        """The principal of a token."""
        ...


@dataclass(frozen=True)
class Caller:
    """An authenticated tenant: its principal, the account it acts in, and its token."""

    principal: AclPrincipal
    account: str
    token: str


class Authenticator:
    """Turns a request's `Authorization: Bearer` header into a Caller, or a 401/403."""

    def __init__(self, acl: Acl, *, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.acl, self.ttl, self.clock = acl, ttl, clock
        self._cache: OrderedDict[str, tuple[float, AclPrincipal]] = OrderedDict()

    async def caller(self, request: web.Request) -> Caller:
        """The tenant that sent the request."""
        header = request.headers.get("Authorization", "")
        if header[:len(BEARER)].lower() != BEARER or not header[len(BEARER):].strip():
            raise ApiError(401, "unauthenticated", "header Authorization: Bearer <token> is "
                           "required (POST /v1/login gives a token)",
                           headers={"WWW-Authenticate": 'Bearer realm="cloudkernel"'})
        token = header[len(BEARER):].strip()
        principal = await self.principal(token)
        if principal.account is None:
            raise ApiError(403, "forbidden", f"{principal.actor} is a root admin, of no tenant "
                           "account: use the admin API")
        return Caller(principal=principal, account=principal.account, token=token)

    async def principal(self, token: str) -> AclPrincipal:
        """The token's principal, from the cache or the ACL."""
        now = self.clock()
        found = self._cache.get(token)
        if found is not None and found[0] > now:
            return found[1]
        try:
            principal = await self.acl.authenticate(token)
        except KernelError as e:  # refused, or the ACL did not answer
            self._cache.pop(token, None)
            raise from_acl(e) from None
        self._cache[token] = (now + self.ttl, principal)
        self._cache.move_to_end(token)
        while len(self._cache) > MAX_CACHED or (
                self._cache and next(iter(self._cache.values()))[0] <= now):
            self._cache.popitem(last=False)
        return principal

    async def login(self, username: str, password: str) -> tuple[str, AclPrincipal]:
        """A token for a user name and password, through the ACL."""
        try:
            return await self.acl.login(username, password)
        except KernelError as e:
            raise from_acl(e, login=True) from None
