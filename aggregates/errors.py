"""The one error hierarchy of cloudkernel, rooted at KernelError.

It lives in the innermost layer so that aggregates can raise it; every layer and service imports
it from here.
"""

import re
from typing import Any

SHOWN_CHARS = 80  # of a value echoed in an error message or a log line


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with an ellipsis, so that
    a huge value sent by a client is never echoed back (or logged) whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


_LONG = SHOWN_CHARS + 1
_QUOTED = re.compile(f"'[^'\\n]{{{_LONG},}}'|\"[^\"\\n]{{{_LONG},}}\"")
_RUN = re.compile(rf"\S{{{SHOWN_CHARS + 3},}}")  # a clipped quoted value is SHOWN_CHARS + 2


def clipped(message: str, limit: int = 1000) -> str:
    """A message with every quoted value and every unbroken run of characters longer than
    SHOWN_CHARS cut to that many with an ellipsis, and the whole cut to `limit` characters:
    what a gateway answers and logs of a message that may echo a client's value."""
    text = _QUOTED.sub(lambda m: m.group()[:SHOWN_CHARS] + "…" + m.group()[0], message)
    text = _RUN.sub(lambda m: m.group()[:SHOWN_CHARS] + "…", text)
    return text if len(text) <= limit else text[:limit] + "…"


class KernelError(Exception):
    """Root of every error cloudkernel raises on purpose."""

    code = "kernel_error"
    field: str | None = None  # the input field at fault, when the error concerns one

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        if field is not None:
            self.field = field

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the error, with a stable code (and its field)."""
        described: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.field is not None:
            described["field"] = self.field
        return described


class DomainRuleError(KernelError):
    """A command broke a rule of the domain (HTTP 409)."""

    code = "domain_rule"


class InvalidTransitionError(DomainRuleError):
    """An entity was asked for an action its current state does not allow."""

    code = "invalid_transition"

    def __init__(self, entity: str, entity_id: object, state: object, action: str) -> None:
        self.entity, self.entity_id, self.state, self.action = entity, entity_id, state, action
        shown = getattr(state, "value", state)
        super().__init__(f"{entity} {entity_id} is {shown}: cannot {action}")

    def to_dict(self) -> dict[str, Any]:
        """Name the entity, its state and the refused action."""
        return {
            **super().to_dict(),
            "entity": self.entity,
            "entity_id": str(self.entity_id),
            "state": str(getattr(self.state, "value", self.state)),
            "action": self.action,
        }


class CapacityError(DomainRuleError):
    """A claim would take more capacity than is left."""

    code = "capacity"


class NotFoundError(KernelError):
    """A named entity does not exist (HTTP 404)."""

    code = "not_found"


class ConflictError(KernelError):
    """A concurrent writer changed the entity first (HTTP 409); re-read and retry."""

    code = "conflict"


class IdempotencyKeyReusedError(KernelError):
    """An idempotency key was reused with a different payload (HTTP 422)."""

    code = "idempotency_key_reused"


class ValidationError(KernelError):
    """Input is malformed: a field has the wrong type, range or form (HTTP 400)."""

    code = "validation"


class UnauthenticatedError(KernelError):
    """A request's credentials are missing, unknown, revoked, expired or wrong (HTTP 401)."""

    code = "unauthenticated"


class ForbiddenError(KernelError):
    """An authenticated principal may not run this command (HTTP 403)."""

    code = "forbidden"


class ConfigError(KernelError):
    """A setting is wrong or unknown; raised at start with the setting's name."""

    code = "config"


class StepFailedError(KernelError):
    """A subsystem could not perform a step; `retryable` says whether to try again."""

    code = "step_failed"

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        if code:
            self.code = code  # a plugin's own stable code, e.g. "host_unreachable"
