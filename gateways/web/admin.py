"""What `cloudkernel up` needs for the web page: a first admin to log in with, and the mount.

`ensure_admin_user` makes, on the first start only, a root admin user of the ACL with a random
password, returned once to be printed (the ACL keeps only its hash). `mount_web_page` is the
one call that adds the page to an admin API application.
"""

import secrets
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from aggregates.acl.rules import ROLE_ROOT_ADMIN, ROOT_DOMAIN
from gateways.web.routes import Login, add_web_routes

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


def mount_web_page(app: web.Application, *, servers: Sequence[str],
                   login: Login | None) -> web.Application:
    """Add the web page to an admin API app made by `gateways.api.app.make_app`; returns it."""
    add_web_routes(app, servers=servers, login=login)
    return app


def banner(url: str, username: str, password: str | None) -> str:
    """What `up` prints: where the page is, and (on the first start) how to log in."""
    if password is None:
        return f"admin web page at {url}/ (log in as an ACL user)"
    return (f"admin web page at {url}/\n  log in as: {username}\n  password:  {password}\n"
            "  (shown once; the ACL keeps only its hash)")
