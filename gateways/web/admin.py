"""What `cloudkernel up` needs for the web page: the mount, and the banner it prints.

`mount_web_page` is the one call that adds the page to an admin API application; the first
admin to log in with is the ACL's (`services.acl.first_admin`).
"""

from collections.abc import Sequence

from aiohttp import web

from gateways.web.routes import Login, add_web_routes


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
