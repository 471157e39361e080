"""The ACL's vocabulary: roles, resource limits, names and command patterns, with validation."""

import re
from collections.abc import Mapping

from aggregates.errors import ValidationError

ROOT_DOMAIN = "ROOT"
ROLE_ROOT_ADMIN = "root_admin"
ROLE_DOMAIN_ADMIN = "domain_admin"
ROLE_USER = "user"
ACL_ROLES: tuple[str, ...] = (ROLE_ROOT_ADMIN, ROLE_DOMAIN_ADMIN, ROLE_USER)
LIMIT_NAMES: tuple[str, ...] = ("max_vms", "max_cpu_cores", "max_memory_mib", "max_volumes",
                                "max_volume_gib", "max_public_addresses")
# A limit names the usage counter it bounds: max_vms bounds usage["vms"].
USAGE_OF_LIMIT: dict[str, str] = {name: name.removeprefix("max_") for name in LIMIT_NAMES}
MAX_LIMIT = 10**12

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,100}$")


def require_acl_name(what: str, name: object) -> str:
    """A domain or account name: 1-64 letters, digits or '_.-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(f"{what} name must be 1-64 letters, digits or '_.-', starting "
                              f"with a letter or digit, got {name!r}")
    return name


def require_username(name: object) -> str:
    """A user name: 1-100 letters, digits or '_.@-' (the actor recorded on events)."""
    if not isinstance(name, str) or not _USERNAME.match(name):
        raise ValidationError(f"user name must be 1-100 letters, digits or '_.@-', starting "
                              f"with a letter or digit, got {name!r}")
    return name


def require_role(role: object) -> str:
    """One of the ACL roles."""
    if role not in ACL_ROLES:
        raise ValidationError(f"role must be one of {', '.join(ACL_ROLES)}, got {role!r}")
    return str(role)


def require_pattern(pattern: object) -> str:
    """A command tag or glob like vm.* (letters, digits, '_.-*?[]')."""
    if not isinstance(pattern, str) or not _PATTERN.match(pattern):
        raise ValidationError(f"command pattern {pattern!r}: a command tag or glob like vm.* "
                              "(letters, digits, '_.-*?[]')")
    return pattern


def require_limits(limits: Mapping[str, object]) -> dict[str, int]:
    """Known limit names with whole numbers from 0 to 10^12; -1 or None removes a limit."""
    out: dict[str, int] = {}
    for name, value in limits.items():
        if name not in LIMIT_NAMES:
            raise ValidationError(f"unknown limit {name!r}; limits are {', '.join(LIMIT_NAMES)}")
        if value is None or value == -1:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
            raise ValidationError(f"limit {name} must be a whole number from 0 to {MAX_LIMIT} "
                                  f"(or -1 for none), got {value!r}")
        out[name] = value
    return out
