"""The ACL's first administrator: made on the platform's first start, so someone can log in.

`ensure_admin_user` makes, on the first start only, a root admin user with a random password,
returned once to be printed (the ACL keeps only its hash).
"""

import secrets
from typing import Any

from services.acl.model.rules import ROLE_ROOT_ADMIN, ROOT_DOMAIN

ADMIN_USER = "admin"
ADMIN_ACCOUNT = "admin"


def ensure_admin_user(acl: Any, *, username: str = ADMIN_USER,
                      account: str = ADMIN_ACCOUNT) -> str | None:
    """The new password of a root admin `username` made now; None when the ACL has an
    enabled root admin already (nothing is made, and no password is shown again)."""
    acl.directory.refresh()
    if any(u.role == ROLE_ROOT_ADMIN and not u.disabled
           for u in acl.directory.users.values()):
        return None
    if account not in acl.directory.accounts:
        acl.create_account(account, domain=ROOT_DOMAIN)
    password = secrets.token_urlsafe(15)
    acl.create_user(username, account=account, role=ROLE_ROOT_ADMIN, password=password)
    return password
