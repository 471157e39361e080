"""The End User API's errors: one JSON shape, `{"error": {"code", "message", "field"}}`.

Handlers raise `ApiError`; the middleware turns it (and the ACL's and the platform's
refusals) into a 4xx/5xx answer. Unexpected faults become a 500 with a reference, logged,
never shown.
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError
from gateways.acl.client import AclUnavailableError

log = logging.getLogger(__name__)

# The intake's refusal codes (gateways.stream.intake) as HTTP statuses.
COMMAND_STATUS = {"malformed": 400, "invalid": 400, "unknown_command": 400,
                  "unauthenticated": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
                  "idempotency_key_reused": 409, "internal": 502, "unavailable": 503}
_FIELD_AT = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)|unknown field `([^`]{1,100})`|"
                       r"missing required field `([^`]{1,100})`")
_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its HTTP status, stable code, message and the field at fault."""

    def __init__(self, status: int, code: str, message: str, *,
                 field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The JSON answer."""
        return json_response({"error": {"code": self.code, "message": self.message,
                                        "field": self.field}}, status=self.status,
                             headers=self.headers)


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (msgspec-encoded: UUIDs and datetimes as strings)."""
    return web.Response(body=_encode(data), status=status, headers=headers,
                        content_type="application/json")


def not_found(kind: str, entity_id: object) -> ApiError:
    """The answer for a resource that is missing or another account's (ids do not leak)."""
    return ApiError(404, "not_found", f"no {kind} {entity_id} in your account")


def invalid_body(e: msgspec.ValidationError | msgspec.DecodeError, what: str) -> ApiError:
    """A 400 naming the body field at fault."""
    at = _FIELD_AT.search(str(e))
    field = next((g for g in at.groups() if g), None) if at else None
    return ApiError(400, "invalid", f"{what}: {e}", field=field)


def from_acl(e: Exception) -> ApiError:
    """The answer for an ACL refusal (or the ACL not answering)."""
    if isinstance(e, UnauthenticatedError):
        return ApiError(401, "unauthenticated", str(e),
                        headers={"WWW-Authenticate": 'Bearer realm="cloudkernel"'})
    if isinstance(e, ForbiddenError):
        return ApiError(403, "forbidden", str(e))
    if isinstance(e, ValidationError):
        return ApiError(400, "invalid", str(e))
    if isinstance(e, AclUnavailableError):
        return ApiError(503, "acl_unavailable", str(e))
    return ApiError(502, "internal", f"the ACL service failed: {e}")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as the one JSON error shape."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "invalid")
        return ApiError(e.status, code, f"{request.method} {request.path}: {e.reason}").response()
    except Exception as e:  # a fault: logged with a reference, its text never shown
        ref = uuid.uuid4()
        log.error("enduser: %s %s failed (reference %s)", request.method, request.path[:200],
                  ref, exc_info=e)
        return ApiError(500, "internal", f"internal error (reference {ref})").response()
