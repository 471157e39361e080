"""The End User API's errors: one JSON shape, `{"error": {"code", "message", "field"}}`.

Handlers raise `ApiError`; the middleware turns it (and the ACL's and the platform's
refusals) into a 4xx/5xx answer. A well-formed request the platform refuses (`invalid`: a
rule, a referenced resource missing or in the wrong state) is 409; every 503 (the service
disabled, the platform's store or the ACL not answering) says when to retry in
`Retry-After`. Messages are clipped, so that a huge value is never echoed back whole.
Unexpected faults become a 500 with a reference, logged, never shown.
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError, clipped
from services.acl.client import AclUnavailableError

log = logging.getLogger(__name__)

# The intake's refusal codes (gateways.stream.intake) as HTTP statuses.
COMMAND_STATUS = {"malformed": 400, "invalid": 409, "unknown_command": 400,
                  "unauthenticated": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
                  "idempotency_key_reused": 409, "internal": 502, "unavailable": 503}
RETRY_AFTER_SECONDS = 5  # when a 503 does not say otherwise
_FIELD_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]{1,100})`")
_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its HTTP status, stable code, message and the field at fault."""

    def __init__(self, status: int, code: str, message: str, *,
                 field: str | None = None, headers: dict[str, str] | None = None) -> None:
        message = clipped(message)
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}
        if status == 503:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))

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


def body_field(e: msgspec.ValidationError | msgspec.DecodeError) -> str | None:
    """The path of the body field msgspec's error names (`network_ids[1]`), if any."""
    text = str(e)
    at = _FIELD_AT.search(text)
    path = at.group(1) if at else ""
    named = _NAMED.search(text)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def invalid_body(e: msgspec.ValidationError | msgspec.DecodeError, what: str) -> ApiError:
    """A 400 naming the body field at fault."""
    return ApiError(400, "invalid", f"{what}: {e}", field=body_field(e))


def from_acl(e: Exception, *, login: bool = False) -> ApiError:
    """The answer for an ACL refusal (or the ACL not answering); `login`: at login, where a
    user name of the wrong form is bad credentials (401) like any other."""
    if isinstance(e, UnauthenticatedError) or (login and isinstance(e, ValidationError)):
        return ApiError(401, "unauthenticated", str(e),
                        field="username" if isinstance(e, ValidationError) else None,
                        headers={"WWW-Authenticate": 'Bearer realm="cloudkernel"'})
    if isinstance(e, ForbiddenError):
        return ApiError(403, "forbidden", str(e))
    if isinstance(e, ValidationError):
        return ApiError(400, "invalid", str(e))
    if isinstance(e, AclUnavailableError):
        return ApiError(503, "acl_unavailable", str(e))
    return ApiError(502, "internal", f"the ACL service failed: {e}")


def _allow(e: web.HTTPException) -> dict[str, str]:
    allowed = sorted(getattr(e, "allowed_methods", ()) or ())
    return {"Allow": ", ".join(allowed)}


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
        return ApiError(e.status, code, f"{request.method} {request.path}: {e.reason}",
                        headers=_allow(e) if e.status == 405 else None).response()
    except Exception as e:  # a fault: logged with a reference, its text never shown
        ref = uuid.uuid4()
        log.error("enduser: %s %s failed (reference %s)", request.method, request.path[:200],
                  ref, exc_info=e)
        return ApiError(500, "internal", f"internal error (reference {ref})").response()


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, where a request its parser refused (a header holding NUL or
    another control character) is one WARNING line, not an ERROR with a traceback: the
    client sent it, the server is fine. aiohttp answers it 400."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        """Log a fault; a malformed request in one line."""
        if isinstance(exc_info, HttpProcessingError):
            remote = args[0] if args else "-"
            reason = " ".join(str(exc_info.message).split())
            self.logger.warning("enduser: refused a malformed HTTP request from %s (%d): %s",
                                remote, exc_info.code, clipped(reason, 200))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_LOG = ServerLog(logging.getLogger("aiohttp.server"), {})
