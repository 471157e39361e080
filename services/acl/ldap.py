"""LDAP login: a simple bind as the user against the configured server (ldap3).

The user's DN comes from a template (`uid={username},ou=people,dc=example,dc=org`), with the
name escaped as an RDN value. A wrong password raises UnauthenticatedError("invalid
credentials"); a server that cannot be reached within the timeout raises
LdapUnavailableError (a KernelError, HTTP 503-like), so a down directory never reads as a
wrong password.
"""

from aggregates.errors import ConfigError, KernelError, UnauthenticatedError
from services.acl.model.rules import require_username


class LdapUnavailableError(KernelError):
    """The LDAP server could not be reached or failed (HTTP 503)."""

    code = "ldap_unavailable"


class LdapLogin:
    """Checks a user name and password by binding to LDAP as that user."""

    def __init__(self, url: str, user_dn_template: str, *, timeout: float = 3.0):
        if "{username}" not in user_dn_template:
            raise ConfigError("setting acl_ldap_user_dn: it must contain {username}, e.g. "
                              "uid={username},ou=people,dc=example,dc=org")
        self.url, self.user_dn_template, self.timeout = url, user_dn_template, timeout

    def user_dn(self, username: str) -> str:
        """The DN of a user name."""
        from ldap3.utils.dn import escape_rdn

        return self.user_dn_template.format(username=escape_rdn(username))

    def authenticate(self, username: str, password: str) -> str:
        """The user's DN if the password is right; UnauthenticatedError otherwise."""
        import ldap3
        from ldap3.core import exceptions as lx

        require_username(username)
        # An empty password would be an unauthenticated bind, which LDAP servers accept.
        if not isinstance(password, str) or not password:
            raise UnauthenticatedError("invalid credentials")
        dn = self.user_dn(username)
        try:
            server = ldap3.Server(self.url, connect_timeout=self.timeout, get_info=ldap3.NONE)
            conn = ldap3.Connection(server, user=dn, password=password,
                                    receive_timeout=self.timeout, raise_exceptions=False)
            try:
                ok = conn.bind()
                result = dict(conn.result or {})
            finally:
                conn.unbind()
        except lx.LDAPSocketOpenError as e:
            raise LdapUnavailableError(f"LDAP server {self.url} is unreachable: {e}") from e
        except lx.LDAPException as e:
            raise LdapUnavailableError(f"LDAP server {self.url} failed: "
                                       f"{type(e).__name__}: {e}") from e
        if ok:
            return dn
        if result.get("description") in ("invalidCredentials", "noSuchObject",
                                          "inappropriateAuthentication"):
            raise UnauthenticatedError("invalid credentials")
        raise LdapUnavailableError(f"LDAP server {self.url} refused the bind: "
                                   f"{result.get('description')} {result.get('message', '')}")
