"""Errors of the admin API: every one a JSON body `{"error": {"code", "message", "field"?}}`.

The codes are the command intake's (`gateways.stream.intake.error_code`), so an integrator
sees the same code over NATS and HTTP; the HTTP status follows from the code. Anything not
raised on purpose is `internal` (500), logged with a reference and never shown.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from aggregates.errors import DomainRuleError, KernelError
from gateways.stream.intake import MalformedError, refusal

log = logging.getLogger(__name__)

STATUS = {
    "malformed": 400, "unauthenticated": 401, "forbidden": 403, "not_found": 404,
    "unknown_command": 404, "method_not_allowed": 405, "conflict": 409,
    "idempotency_key_reused": 409, "unsupported_media_type": 415, "invalid": 422,
    "internal": 500, "unavailable": 503, "wait_timeout": 504,
}
ERROR_HEADER = "Cloudkernel-Error"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What went wrong: a stable code, a message naming the field or rule, and detail."""

    code: str
    message: str
    field: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None


class ErrorDocument(msgspec.Struct, kw_only=True):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """A refusal decided by the API itself (query parameters, content type, waits)."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.field = code, field
        self.status = status or STATUS[code]


_encode = msgspec.json.Encoder().encode


def error_response(status: int, detail: ErrorDetail,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error response."""
    return web.Response(status=status, body=_encode(ErrorDocument(error=detail)),
                        content_type="application/json",
                        headers={ERROR_HEADER: detail.code, **(headers or {})})


def response_for(e: BaseException, request: web.Request) -> web.Response:
    """The error response for an exception raised while serving `request`."""
    if isinstance(e, ApiError):
        return error_response(e.status, ErrorDetail(code=e.code, message=str(e),
                                                    field=e.field))
    body = refusal(e, where=f"api: {request.method} {request.path}",
                   key_id=request.headers.get("Cloudkernel-Key-Id", "-"))
    status = STATUS.get(body.code, 500)
    if isinstance(e, DomainRuleError):
        status = 409  # a domain rule, not a malformed value: the request may succeed later
    field = getattr(e, "field", None) if isinstance(e, MalformedError | KernelError) else None
    return error_response(status, ErrorDetail(code=body.code, message=body.message,
                                              field=field, reason=body.reason,
                                              detail=body.detail))


def _http_error(e: web.HTTPException, request: web.Request) -> web.Response:
    if e.status == 404:
        code, message = "not_found", f"no route {request.method} {request.path[:200]}"
    elif e.status == 405:
        allowed = sorted(getattr(e, "allowed_methods", ()) or ())
        code, message = "method_not_allowed", (f"{request.method} is not allowed on "
                                               f"{request.path[:200]}; allowed: "
                                               f"{', '.join(allowed)}")
        return error_response(405, ErrorDetail(code=code, message=message),
                              {"Allow": ", ".join(allowed)})
    elif e.status == 413:
        code, message = "malformed", "request body too large"
    elif e.status >= 500:
        code, message = "internal", "internal error"
    else:
        code, message = "malformed", e.reason
    return error_response(e.status, ErrorDetail(code=code, message=message))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error body with a stable code."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_error(e, request)
    except Exception as e:
        return response_for(e, request)
