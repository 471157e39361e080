"""Argument checks shared by the aggregates; each raises ValidationError naming entity and field."""

import math
import re
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

from aggregates.errors import ValidationError

_LABEL = re.compile(r"^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def require_name(entity: str, name: str) -> str:
    """A non-empty name without surrounding blanks."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValidationError(f"{entity} name must be non-empty text without surrounding "
                              f"blanks, got {name!r}")
    return name


def require_hostname(entity: str, name: str) -> str:
    """A name usable as a guest hostname (RFC 1123 label starting with a letter)."""
    if not isinstance(name, str) or not _LABEL.match(name):
        raise ValidationError(f"{entity} name {name!r} must be 1-63 letters, digits or "
                              "hyphens, start with a letter and not end with a hyphen")
    return name


def require_positive(entity: str, field: str, value: int) -> int:
    """A strictly positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(f"{entity}: {field} must be a positive integer, got {value!r}")
    return value


def require_non_negative(entity: str, field: str, value: int) -> int:
    """An integer that is zero or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{entity}: {field} must be an integer >= 0, got {value!r}")
    return value


def require_factor(entity: str, field: str, value: float) -> float:
    """An over-provisioning factor: finite and at least 1.0."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 1.0:
        raise ValidationError(f"{entity}: {field} must be a finite number >= 1.0, got {value!r}")
    return float(value)


def require_url(entity: str, field: str, value: str) -> str:
    """A URL with a scheme (`scheme://...`)."""
    scheme, sep, rest = value.partition("://") if isinstance(value, str) else ("", "", "")
    if not sep or not scheme or not rest:
        raise ValidationError(f"{entity}: {field} {value!r} is not a URL")
    return value


def normalize_tags(entity: str, tags: tuple[str, ...]) -> tuple[str, ...]:
    """Tags as a sorted tuple of distinct non-empty strings."""
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or tag != tag.strip():
            raise ValidationError(f"{entity}: tag {tag!r} must be non-empty text")
    return tuple(sorted(set(tags)))


def ipv4_network(entity: str, cidr: str) -> IPv4Network:
    """An IPv4 CIDR in canonical form (host bits must be zero)."""
    try:
        return IPv4Network(cidr, strict=True)
    except (AddressValueError, NetmaskValueError, ValueError, TypeError) as e:
        raise ValidationError(f"{entity}: {cidr!r} is not an IPv4 CIDR: {e}") from e


def ipv4_address(entity: str, field: str, value: str) -> IPv4Address:
    """An IPv4 address."""
    try:
        return IPv4Address(value)
    except (AddressValueError, ValueError, TypeError) as e:
        raise ValidationError(f"{entity}: {field} {value!r} is not an IPv4 address") from e
