"""LDAP login against a real slapd: works, fails cleanly on a bad password and fast when the
server is unreachable."""

import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.ldap import USER_DN, free_port

from aggregates.errors import UnauthenticatedError
from kernel.store.testing import scratch_application
from services.acl.access import AclAccess
from services.acl.ldap import LdapLogin, LdapUnavailableError
from services.acl.secrets import CredentialStore, MasterKey
from services.acl.service import AclService


def service_for(url: str, tmp_path: Path) -> AclService:
    service = AclService(scratch_application(), MasterKey(b"l" * 32),
                         CredentialStore(tmp_path / "creds.json"),
                         ldap=LdapLogin(url, USER_DN, timeout=2), ldap_account="staff")
    service.create_account("staff", domain="ROOT")
    return service


def test_ldap_login_works_and_provisions_the_user(slapd: Any, tmp_path: Path) -> None:
    service = service_for(slapd.url, tmp_path)
    token = service.login("lara", "lara-secret")
    principal = AclAccess(service).authenticate_bearer(token)
    assert (principal.actor, principal.account) == ("lara", "staff")
    user = service.user("lara")
    assert (user.source, user.role, user.account) == ("ldap", "user", "staff")
    assert service.login("lara", "lara-secret")  # the second login finds the user


def test_bad_password_and_unknown_user_fail_cleanly(slapd: Any, tmp_path: Path) -> None:
    service = service_for(slapd.url, tmp_path)
    for user, password in (("lara", "wrong"), ("lara", ""), ("nobody", "x"),
                           ("lara", "leo-secret")):
        with pytest.raises(UnauthenticatedError, match=r"^invalid credentials$"):
            service.login(user, password)
    assert "lara" not in service.directory.users


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    service = service_for(f"ldap://127.0.0.1:{free_port()}", tmp_path)
    started = time.monotonic()
    with pytest.raises(LdapUnavailableError, match="unreachable"):
        service.login("lara", "lara-secret")
    assert time.monotonic() - started < 5
