"""AclAccess: the AccessControl of the ACL service (roles, domains, scoped keys, tokens).

Decisions, in order (the first refusal wins, and every refusal is an AccessDenied event):

1. the key's scope: a scoped key sends only the commands its globs match, a read-only key only
   read tags (`*.list`, `*.get`, ...);
2. deny rules for the principal's role or account (deny wins over any allow);
3. the role: a root admin may send everything; a domain admin and a user the tenant commands
   (`TENANT_COMMANDS`) plus what allow rules grant, never `ROOT_ONLY` ones;
4. the owner: a root admin reaches every account; a domain admin the accounts of its domain's
   subtree (never a parent's or a sibling's); a user only its own account. A mutating command
   with no owning account is for a root admin only.

Signed requests are CK1-HMAC-SHA256 (kernel.contracts.access) with the key's derived secret. A
signature is accepted once: a bounded in-memory cache remembers those seen within the skew
window, so a captured request cannot be replayed even with a new idempotency key.
"""

import fnmatch
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError
from kernel.contracts.access import (
    MAX_SKEW_SECONDS,
    Principal,
    SignedRequest,
    require_signature_headers,
    verify,
)
from services.acl.entities import AclDirectory
from services.acl.model import AclAccount, AclApiKey, AclUser
from services.acl.model.rules import (
    LIMIT_NAMES,
    ROLE_DOMAIN_ADMIN,
    ROLE_ROOT_ADMIN,
    USAGE_OF_LIMIT,
)
from services.acl.secrets import TokenClaims, read_token
from services.acl.service import AclService

TENANT_COMMANDS: tuple[str, ...] = ("vm.*", "volume.*", "network.*", "snapshot.*", "backup.*",
                                    "address.allocate", "address.release",
                                    "operation.cancel")
# Reads of the platform's own read models (the admin API names them `<model>.list|get`).
PLATFORM_READS: tuple[str, ...] = tuple(f"{model}.{verb}"
                                        for model in ("hosts", "operations", "audit")
                                        for verb in ("list", "get"))
# console.redeem is the console service's (its keyring key) and a root admin's: a tenant
# holding a console link must not spend it past the console service's own checks (Origin).
ROOT_ONLY: tuple[str, ...] = ("vm.migrate", "volume.migrate", "console.redeem",
                              *PLATFORM_READS)
READ_VERBS = frozenset({"list", "get", "show", "read", "events", "watch"})
TOKEN_KEY_PREFIX = "token:"


def is_read_only(command_tag: str) -> bool:
    """Whether a tag only reads (its last part is list, get, show, read, events or watch)."""
    return command_tag.rsplit(".", 1)[-1] in READ_VERBS


def _matches(tag: str, patterns: tuple[str, ...] | list[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(tag, p)), None)


class ReplayCache:
    """Signatures seen within the window; bounded, oldest forgotten first."""

    def __init__(self, window: float, capacity: int = 100_000):
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, signature: str, now: float) -> bool:
        """Remember the signature; False if it was seen within the window."""
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if at > now - self.window and len(self._seen) < self.capacity:
                    break
                del self._seen[oldest]
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True


class RefusalAudit:
    """Records refused credentials as `AccessDenied` events in the ACL log, at most one a
    second per key: a flood of bad requests is not an event storm."""

    def __init__(self, service: AclService) -> None:
        """Audit into this ACL service's log."""
        self.service = service
        self._last: dict[str, float] = {}

    def __call__(self, actor: str, key_id: str, command: str, reason: str, now: float, *,
                 bucket: str | None = None) -> None:
        """Record one refusal of `key_id`'s request for `command`, unless one of its `bucket`
        (the key, by default) was this second."""
        bucket = key_id if bucket is None else bucket
        if now - self._last.get(bucket, float("-inf")) < 1.0:
            return
        self._last[bucket] = now
        self.service.record_denial(principal=actor, key_id=key_id, command=command[:200],
                                   owner=None, reason=reason)


def token_user(directory: AclDirectory, claims: TokenClaims, now: float) -> AclUser:
    """The enabled user a token's claims name; a token a SigV4 check issued for an API key
    ends when that key is revoked or expires."""
    directory.refresh()
    user = directory.users.get(claims.sub)
    if user is None or user.disabled:
        raise UnauthenticatedError(f"user {claims.sub} no longer exists or is disabled")
    if claims.key is not None:
        key = directory.keys.get(claims.key)
        if key is None or key.revoked or (key.expires_at is not None
                                          and key.expires_at.timestamp() <= now):
            raise UnauthenticatedError(f"the bearer token was issued for key {claims.key}, "
                                       "which is revoked or expired")
    return user


def live_user(directory: AclDirectory, key: AclApiKey, now: float) -> AclUser:
    """The enabled user of a key that is neither revoked nor expired; UnauthenticatedError
    naming why not."""
    if key.revoked:
        raise UnauthenticatedError(f"key {key.key_id} was revoked")
    if key.expires_at is not None and key.expires_at.timestamp() <= now:
        raise UnauthenticatedError(f"key {key.key_id} expired at {key.expires_at.isoformat()}")
    user = directory.users.get(key.username)
    if user is None or user.disabled:
        raise UnauthenticatedError(f"the user of key {key.key_id} is disabled")
    return user


def key_user(directory: AclDirectory, key: AclApiKey, replays: ReplayCache, signature: str,
             now: float) -> AclUser:
    """The enabled user of a live key whose (already checked) signature is used for the first
    time; UnauthenticatedError naming why not. The key's state is checked first, so a
    revoked key's signature is refused as revoked, never remembered as seen."""
    user = live_user(directory, key, now)
    if not replays.first_use(signature.lower(), now):
        raise UnauthenticatedError("this signature was used before: a replayed request is "
                                   "refused (sign every request anew)")
    return user


class AclAccess:
    """AccessControl backed by the ACL service."""

    def __init__(self, service: AclService, *, clock: Callable[[], float] = time.time,
                 max_skew: float = MAX_SKEW_SECONDS, replay_capacity: int = 100_000):
        self.service, self.clock, self.max_skew = service, clock, max_skew
        # A signature stays valid 2 x skew (timestamp from now-skew to now+skew).
        self.replays = ReplayCache(2 * max_skew + 1, replay_capacity)
        self._audit_refusal = RefusalAudit(service)

    # ----------------------------------------------------------------------- authentication

    def authenticate(self, request: SignedRequest) -> Principal:
        """The principal of a fresh, first-seen request signed with an active ACL key."""
        require_signature_headers(request)
        directory = self.service.directory
        directory.refresh()
        key = directory.keys.get(request.key_id)
        now = self.clock()
        if key is None:
            e = UnauthenticatedError(f"unknown key id {request.key_id[:64]!r}")
            # probes with made-up ids share one bucket: a flood of them is one event a second
            self._audit_refusal("", request.key_id[:64], request.subject, str(e), now,
                                bucket="(unknown key)")
            raise e
        try:
            verify(self.service.master.key_secret(key.key_id), request, now=now,
                   max_skew=self.max_skew)
            user = key_user(directory, key, self.replays, request.signature, now)
        except UnauthenticatedError as e:
            self._audit_refusal(key.username, key.key_id, request.subject, str(e), now)
            raise
        return _principal(user, key.key_id, key.scope)

    def authenticate_bearer(self, token: str) -> Principal:
        """The principal of a genuine, unexpired bearer token from `login` (or a SigV4 check)."""
        claims = read_token(self.service.master, token, now=self.clock())
        user = token_user(self.service.directory, claims, self.clock())
        return _principal(user, TOKEN_KEY_PREFIX + claims.jti, ())

    def audit_refusal(self, *, principal: str, key_id: str, command: str, reason: str,
                      credentials: bool) -> None:
        """Record a refusal another source of keys decided (the platform's keyring, beside
        the ACL): refused credentials as this source's own are (at most one a second per
        key), a refused command every time."""
        if credentials:
            self._audit_refusal(principal, key_id, command, reason, self.clock())
        else:
            self.service.record_denial(principal=principal, key_id=key_id, command=command,
                                       owner=None, reason=reason)

    # ----------------------------------------------------------------------- authorization

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        """Return if allowed; otherwise record an AccessDenied event and raise ForbiddenError."""
        try:
            self._decide(principal, command_tag, owner)
        except ForbiddenError as e:
            self.service.record_denial(principal=principal.actor, key_id=principal.key_id,
                                       command=command_tag, owner=owner, reason=str(e))
            raise

    def _decide(self, principal: Principal, tag: str, owner: str | None) -> None:
        user = self._user(principal)
        who = f"{user.username} ({user.role} of account {user.account})"
        key = self._key(principal)
        if key is not None:
            if key.scope and _matches(tag, key.scope) is None:
                raise ForbiddenError(f"key {key.key_id} of {who} is scoped to "
                                     f"{', '.join(key.scope)}: it may not send {tag}")
            if key.read_only and not is_read_only(tag):
                raise ForbiddenError(f"key {key.key_id} of {who} is read-only: it may not "
                                     f"send {tag}")
        rules = [r for r in self.service.directory.rules.values()
                 if (r.target_kind, r.target) in (("role", user.role),
                                                  ("account", user.account))]
        for rule in rules:
            if rule.effect == "deny" and fnmatch.fnmatchcase(tag, rule.pattern):
                raise ForbiddenError(f"{who} may not send {tag}: denied by rule "
                                     f"'deny {rule.pattern}' for {rule.target_kind} "
                                     f"{rule.target}")
        if user.role == ROLE_ROOT_ADMIN:
            return
        granted = [*TENANT_COMMANDS, *(r.pattern for r in rules if r.effect == "allow")]
        if _matches(tag, ROOT_ONLY) or (not is_read_only(tag) and _matches(tag, granted) is None):
            raise ForbiddenError(f"{who} may not send {tag}: only a root admin may")
        if owner is None:
            if not is_read_only(tag):
                raise ForbiddenError(f"{who} may not send {tag} without naming the owning "
                                     "account: only a root admin may")
            return
        visible = self._visible(user)
        if visible is not None and owner not in visible:
            scope = f"the accounts of domain {user.domain_path} and below" \
                if user.role == ROLE_DOMAIN_ADMIN else f"its own account {user.account}"
            raise ForbiddenError(f"{who} may not send {tag} for account {owner}: it may act "
                                 f"only on {scope}")

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        """None for a root admin, the subtree's accounts for a domain admin, else its own."""
        return self._visible(self._user(principal))

    def _visible(self, user: AclUser) -> frozenset[str] | None:
        if user.role == ROLE_ROOT_ADMIN:
            return None
        if user.role == ROLE_DOMAIN_ADMIN:
            domain = self.service.directory.domains.get(user.domain_path)
            return self.service.directory.accounts_under(domain) if domain \
                else frozenset({user.account})
        return frozenset({user.account})

    def _user(self, principal: Principal) -> AclUser:
        self.service.directory.refresh()
        user = self.service.directory.users.get(principal.actor)
        if user is None or user.disabled:
            raise ForbiddenError(f"{principal.actor} is not an enabled ACL user")
        return user

    def _key(self, principal: Principal) -> AclApiKey | None:
        return self.service.directory.keys.get(principal.key_id)

    # ----------------------------------------------------------------------- quotas

    def governs(self, account: str) -> bool:
        """Whether a limit applies to the account: its own, or a domain's above it. Without
        one there is nothing to check, and its usage is not counted (that reads every row of
        the account's VMs and volumes)."""
        directory = self.service.directory
        directory.refresh()
        found = directory.accounts.get(account)
        if found is None:
            return False
        if found.limits:
            return True
        domain = directory.domains.get(found.domain_path)
        return any((node := directory.domains.get(path)) is not None and bool(node.limits)
                   for path in (domain.ancestry() if domain else ()))

    def domain_accounts(self, account: str) -> dict[str, tuple[str, ...]]:
        """For each domain above the account (its own included) that has limits, every
        account of that domain's subtree: whose usage counts against the domain's limits."""
        directory = self.service.directory
        directory.refresh()
        found = directory.accounts.get(account)
        domain = None if found is None else directory.domains.get(found.domain_path)
        subtrees: dict[str, tuple[str, ...]] = {}
        for path in domain.ancestry() if domain else ():
            node = directory.domains.get(path)
            if node is not None and node.limits:
                subtrees[path] = tuple(sorted(
                    a.name for a in directory.accounts.values()
                    if a.domain_path == path or a.domain_path.startswith(path + "/")))
        return subtrees

    def check_limits(self, subject: Principal | str, usage: Mapping[str, int],
                     delta: Mapping[str, int], *,
                     domain_usage: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Raise ForbiddenError naming the first limit that `usage + delta` would pass.

        `usage` is the account's current usage by counter (vms, cpu_cores, memory_mib,
        volumes, volume_gib, public_addresses); `domain_usage` the usage of each domain's
        subtree by domain path (a domain missing there is checked against the account's
        usage, a lower bound).
        """
        name = subject.account if isinstance(subject, Principal) else subject
        if not name:
            raise ValidationError("check_limits needs an account (a root admin's principal "
                                  "names none: pass the owning account's name)")
        self.service.directory.refresh()
        account: AclAccount | None = self.service.directory.accounts.get(name)
        if account is None:
            raise ValidationError(f"no ACL account {name!r} to check limits for")
        scopes: list[tuple[str, Mapping[str, int], Mapping[str, int]]] = [
            (f"account {account.name}", account.limits, usage)]
        domain = self.service.directory.domains.get(account.domain_path)
        for path in domain.ancestry() if domain else ():
            node = self.service.directory.domains.get(path)
            if node is not None and node.limits:
                scopes.append((f"domain {path}", node.limits,
                               (domain_usage or {}).get(path, usage)))
        for label, limits, used in scopes:
            for limit in LIMIT_NAMES:
                counter = USAGE_OF_LIMIT[limit]
                extra = int(delta.get(counter, 0))
                if limit not in limits or extra <= 0:
                    continue
                after = int(used.get(counter, 0)) + extra
                if after > limits[limit]:
                    raise ForbiddenError(f"{label} would exceed its limit {limit} = "
                                         f"{limits[limit]} ({used.get(counter, 0)} in use, "
                                         f"{extra} more requested)")


def _principal(user: AclUser, key_id: str, scope: tuple[str, ...]) -> Principal:
    if user.role == ROLE_ROOT_ADMIN:
        return Principal(key_id=key_id, actor=user.username, role="admin", allowed=scope,
                         account=None)
    return Principal(key_id=key_id, actor=user.username, role="integrator",
                     allowed=scope or ("*",), account=user.account)
