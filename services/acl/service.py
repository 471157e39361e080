"""AclService: every ACL admin action, validated and saved on the ACL's own log.

The service also logs users in (local password or LDAP) and records denials. Secrets stay
out of the log (see services.acl.secrets).
"""

import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError

from aggregates.base import SYSTEM_ACTOR, audit_context
from aggregates.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from kernel.settings import Settings
from kernel.store.application import KernelApplication
from services.acl.application import open_acl_application
from services.acl.entities import AclDirectory
from services.acl.ldap import LdapLogin
from services.acl.model import AccessDenial, AclAccount, AclApiKey, AclDomain, AclRule, AclUser
from services.acl.model.rules import ROOT_DOMAIN, require_username
from services.acl.secrets import (
    CREDENTIALS_FILE,
    MASTER_KEY_FILE,
    CredentialStore,
    MasterKey,
    check_password,
    hash_password,
    issue_token,
)

MIN_PASSWORD = 8
LIMIT_TARGETS = ("account", "domain")


class AclService:
    """The ACL's write side and login; `directory` is its always-current read side."""

    def __init__(self, app: KernelApplication, master: MasterKey, credentials: CredentialStore,
                 *, ldap: LdapLogin | None = None, ldap_account: str = "",
                 ldap_role: str = "user", token_hours: float = 8.0,
                 clock: Callable[[], float] = time.time):
        self.app, self.master, self.credentials = app, master, credentials
        self.ldap, self.ldap_account, self.ldap_role = ldap, ldap_account, ldap_role
        self.token_lifetime = token_hours * 3600
        self.clock = clock
        self.directory = AclDirectory(app)
        self.ensure_root()

    @classmethod
    def open(cls, settings: Settings, *, create_table: bool = False,
             clock: Callable[[], float] = time.time) -> "AclService":
        """The service on the configured store, secrets in the data dir."""
        app = open_acl_application(settings, create_table=create_table)
        ldap = None
        if settings.acl_ldap_url:
            ldap = LdapLogin(settings.acl_ldap_url, settings.acl_ldap_user_dn,
                             timeout=settings.acl_ldap_timeout_seconds)
        data = settings.data_dir
        return cls(app, MasterKey.load_or_create(data / MASTER_KEY_FILE),
                   CredentialStore(data / CREDENTIALS_FILE), ldap=ldap,
                   ldap_account=settings.acl_ldap_account, ldap_role=settings.acl_ldap_role,
                   token_hours=settings.acl_token_hours, clock=clock)

    def close(self) -> None:
        """Close the application's store."""
        self.app.close()

    def _save(self, *aggregates: Any) -> None:
        try:
            self.app.save(*aggregates)
        except IntegrityError as e:
            raise ConflictError(f"another writer changed the ACL first: {e}") from e
        self.directory.refresh()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # ----------------------------------------------------------------------- lookups

    def domain(self, path: str) -> AclDomain:
        """The domain at `path` (ROOT/...)."""
        self.directory.refresh()
        found = self.directory.domains.get(path)
        if found is None:
            raise NotFoundError(f"no domain {path!r} (paths look like ROOT/eng)")
        return found

    def account(self, name: str) -> AclAccount:
        """The account called `name`."""
        self.directory.refresh()
        found = self.directory.accounts.get(name)
        if found is None:
            raise NotFoundError(f"no account {name!r}")
        return found

    def user(self, username: str) -> AclUser:
        """The user called `username`."""
        self.directory.refresh()
        found = self.directory.users.get(username)
        if found is None:
            raise NotFoundError(f"no user {username!r}")
        return found

    def key(self, key_id: str) -> AclApiKey:
        """The API key with this id."""
        self.directory.refresh()
        found = self.directory.keys.get(key_id)
        if found is None:
            raise NotFoundError(f"no ACL key {key_id!r}")
        return found

    # ----------------------------------------------------------------------- admin actions

    def ensure_root(self) -> None:
        """Create the ROOT domain unless the log has it."""
        self.directory.refresh()
        if ROOT_DOMAIN not in self.directory.domains:
            with audit_context(SYSTEM_ACTOR):
                root = AclDomain.create_root()
            try:
                self._save(root)
            except ConflictError:
                self.directory.refresh()  # another process made it first

    def create_domain(self, name: str, *, parent: str = ROOT_DOMAIN,
                      actor: str = SYSTEM_ACTOR) -> AclDomain:
        """A new domain under `parent` (a path)."""
        parent_domain = self.domain(parent)
        with audit_context(actor):
            domain = AclDomain.create(name=name, parent=parent_domain)
        if domain.path in self.directory.domains:
            raise ValidationError(f"domain {domain.path} already exists")
        self._save(domain)
        return domain

    def create_account(self, name: str, *, domain: str, actor: str = SYSTEM_ACTOR) -> AclAccount:
        """A new account in the domain at path `domain`."""
        in_domain = self.domain(domain)
        with audit_context(actor):
            account = AclAccount.create(name=name, domain=in_domain)
        if name in self.directory.accounts:
            raise ValidationError(f"account {name} already exists (in "
                                  f"{self.directory.accounts[name].domain_path})")
        self._save(account)
        return account

    def create_user(self, username: str, *, account: str, role: str,
                    password: str | None = None, source: str = "local",
                    actor: str = SYSTEM_ACTOR) -> AclUser:
        """A new user of `account`, with a local password if given."""
        of_account = self.account(account)
        with audit_context(actor):
            user = AclUser.create(username=username, account=of_account, role=role,
                                  source=source)
        if username in self.directory.users:
            raise ValidationError(f"user {username} already exists")
        if password is not None:
            _check_new_password(password)
            self.credentials.set(username, hash_password(password))
            with audit_context(actor):
                user.password_set()
        self._save(user)
        return user

    def set_password(self, username: str, password: str, *,
                     actor: str = SYSTEM_ACTOR) -> None:
        """Set a local user's password."""
        user = self.user(username)
        if user.source != "local":
            raise ValidationError(f"user {username} logs in through LDAP: its password is "
                                  "the directory's")
        _check_new_password(password)
        with audit_context(actor):
            user.password_set()
        self.credentials.set(username, hash_password(password))
        self._save(user)

    def disable_user(self, username: str, *, actor: str = SYSTEM_ACTOR) -> None:
        """Disable a user: no login, no keys."""
        user = self.user(username)
        with audit_context(actor):
            user.disable()
        self._save(user)

    def create_key(self, username: str, *, scope: tuple[str, ...] = (), read_only: bool = False,
                   expires_in_days: float | None = None,
                   actor: str = SYSTEM_ACTOR) -> tuple[AclApiKey, str]:
        """Issue an API key to a user; returns it with its secret (shown once)."""
        user = self.user(username)
        key_id = "ak_" + secrets.token_hex(8)
        with audit_context(actor):
            key = AclApiKey.issue(key_id=key_id, user=user, scope=tuple(scope),
                                  read_only=read_only, expires_in_days=expires_in_days,
                                  now=self._now())
        self._save(key)
        return key, self.master.key_secret(key_id)

    def revoke_key(self, key_id: str, *, actor: str = SYSTEM_ACTOR) -> tuple[AclApiKey, bool]:
        """Revoke a key; returns it and whether it was active."""
        key = self.key(key_id)
        with audit_context(actor):
            changed = key.revoke(self._now())
        if changed:
            self._save(key)
        return key, changed

    def set_limits(self, target: str, name: str, limits: Mapping[str, object], *,
                   actor: str = SYSTEM_ACTOR) -> dict[str, int]:
        """Replace the limits of an account or a domain (by path); returns them."""
        if target not in LIMIT_TARGETS:
            raise ValidationError(f"limits apply to an account or a domain, got {target!r}")
        entity: AclAccount | AclDomain = self.account(name) if target == "account" \
            else self.domain(name)
        with audit_context(actor):
            entity.set_limits(dict(limits))
        self._save(entity)
        return dict(entity.limits)

    def add_rule(self, *, target_kind: str, target: str, effect: str, pattern: str,
                 actor: str = SYSTEM_ACTOR) -> AclRule:
        """Add an allow or deny rule for a role or an account."""
        with audit_context(actor):
            rule = AclRule.add(target_kind=target_kind, target=target, effect=effect,
                               pattern=pattern)
        if target_kind == "account":
            self.account(target)
        self.directory.refresh()
        if rule.id in self.directory.rules:
            raise ValidationError(f"that rule exists already ({effect} {pattern} for "
                                  f"{target_kind} {target})")
        self._save(rule)
        return rule

    def record_denial(self, *, principal: str, key_id: str, command: str, owner: str | None,
                      reason: str) -> None:
        """Record an AccessDenied event on the ACL log."""
        with audit_context(principal if principal else SYSTEM_ACTOR):
            denial = AccessDenial(principal=principal, key_id=key_id, command=command,
                                  owner=owner, reason=reason[:500])
        self.app.save(denial)

    # ----------------------------------------------------------------------- login

    def login(self, username: str, password: str) -> str:
        """A bearer token for a right user name and password (local or LDAP)."""
        try:
            user = self._check_login(username, password)
        except UnauthenticatedError as e:
            self.record_denial(principal=str(username)[:100], key_id="", command="acl.login",
                               owner=None, reason=str(e))
            raise
        return issue_token(self.master, user.username, now=self.clock(),
                           lifetime=self.token_lifetime)

    def _check_login(self, username: str, password: str) -> AclUser:
        require_username(username)
        self.directory.refresh()
        user = self.directory.users.get(username)
        if user is not None and user.source == "local":
            stored = self.credentials.get(username)
            if stored is None or not check_password(str(password), stored) or user.disabled:
                raise UnauthenticatedError("invalid credentials")
            return user
        if self.ldap is None:
            raise UnauthenticatedError("invalid credentials")
        self.ldap.authenticate(username, password)
        if user is None:
            user = self._provision_ldap_user(username)
        if user.disabled:
            raise UnauthenticatedError("invalid credentials")
        return user

    def _provision_ldap_user(self, username: str) -> AclUser:
        if not self.ldap_account or self.ldap_account not in self.directory.accounts:
            raise ConfigError(f"setting acl_ldap_account: LDAP users need an existing ACL "
                              f"account, got {self.ldap_account!r}")
        return self.create_user(username, account=self.ldap_account, role=self.ldap_role,
                                source="ldap", actor="acl:ldap")


def _check_new_password(password: object) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD or len(password) > 1024:
        raise ValidationError(f"a password must be {MIN_PASSWORD} to 1024 characters")
