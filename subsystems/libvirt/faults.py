"""libvirt errors, classified: what counts as "not there", "not supported", and retryable.

Every libvirt call of the plugins goes through `wrap()` when it fails, so a plugin raises only
StepFailedError. A definition libvirt rejects (bad XML, bad argument) is not retryable: the same
arguments fail again. Everything else (a dropped connection, a busy host) is retried by the
kernel up to its policy's limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import libvirt

from aggregates.errors import StepFailedError

__all__ = [
    "NOT_FOUND",
    "UNSUPPORTED",
    "code_of",
    "found",
    "is_not_found",
    "is_unsupported",
    "quiet",
    "translated",
    "wrap",
]

NOT_FOUND = frozenset({libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL,
                       libvirt.VIR_ERR_NO_STORAGE_VOL})
UNSUPPORTED = frozenset({libvirt.VIR_ERR_NO_SUPPORT})
T = TypeVar("T")
_PERMANENT = frozenset({
    libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
})


def code_of(e: libvirt.libvirtError) -> int:
    """libvirt's error number of an exception (0 when it carries none)."""
    return int(e.get_error_code() or 0)


def is_not_found(e: libvirt.libvirtError) -> bool:
    """The domain, pool or volume does not exist."""
    return code_of(e) in NOT_FOUND


def found(lookup: Callable[[], T], what: str) -> T | None:
    """What `lookup()` finds; None when the domain, pool or volume does not exist. Another
    failure is a step failure about `what` (`wrap`)."""
    try:
        return lookup()
    except libvirt.libvirtError as e:
        if is_not_found(e):
            return None
        raise wrap(e, what) from e


def is_unsupported(e: libvirt.libvirtError) -> bool:
    """The driver does not implement the call (VIR_ERR_NO_SUPPORT): take the fallback."""
    return code_of(e) in UNSUPPORTED


def wrap(e: libvirt.libvirtError, what: str) -> StepFailedError:
    """A StepFailedError for a failed libvirt call, retryable unless the input is at fault."""
    code = code_of(e)
    message = f"{what}: {e.get_error_message() or e} (libvirt error {code})"
    if code in NOT_FOUND:
        return StepFailedError(message, retryable=False, code="not_found")
    if code in _PERMANENT:
        return StepFailedError(message, retryable=False, code="libvirt_rejected")
    return StepFailedError(message, retryable=True, code="libvirt_error")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run libvirt calls; a libvirtError leaves as the StepFailedError `wrap` makes."""
    try:
        yield
    except libvirt.libvirtError as e:
        raise wrap(e, what) from e


def quiet() -> None:
    """Stop libvirt printing every error to stderr: the plugins report them as step failures."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
